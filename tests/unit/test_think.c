/* Unit tests of cm_think: inline thinking separation and residue stripping. */
#include "cm_think.h"
#include "unit.h"

#include <stdlib.h>

/* Feeds pieces and returns content and thinking concatenated. */
static void run(const char *const *pieces, size_t n, char *content, char *thinking)
{
    struct cm_think_splitter s;
    struct cm_think_out out = {0};
    cm_think_init(&s);
    content[0] = thinking[0] = '\0';
    for (size_t i = 0; i <= n; i++) {
        if (i < n)
            cm_think_feed(&s, pieces[i], strlen(pieces[i]), &out);
        else
            cm_think_finish(&s, &out);
        strcat(content, out.content);
        strcat(thinking, out.thinking);
    }
    cm_think_out_deinit(&out);
}

static void whole_block_moved(void)
{
    const char *p[] = {"<think>\nreasoning here\n</think>\n\nThe answer."};
    char c[256], t[256];
    run(p, 1, c, t);
    CHECK_STR(c, "The answer.");
    CHECK_STR(t, "\nreasoning here\n");
}

static void tags_split_across_pieces(void)
{
    const char *p[] = {"  <th", "ink>a", "b</thi", "nk>", "\n\n", "Ans", "wer"};
    char c[256], t[256];
    run(p, 7, c, t);
    CHECK_STR(c, "Answer");
    CHECK_STR(t, "ab");
}

static void no_block_passes_through(void)
{
    const char *p[] = {"Hello", " <think>not at start</think>"};
    char c[256], t[256];
    run(p, 2, c, t);
    CHECK_STR(c, "Hello <think>not at start</think>");
    CHECK_STR(t, "");
}

static void leading_whitespace_without_block_is_kept(void)
{
    const char *p[] = {"  ", "<b>bold</b>"};
    char c[256], t[256];
    run(p, 2, c, t);
    CHECK_STR(c, "  <b>bold</b>");
    CHECK_STR(t, "");
}

static void partial_open_tag_at_end(void)
{
    const char *p[] = {"<thi"};
    char c[256], t[256];
    run(p, 1, c, t);
    CHECK_STR(c, "<thi");
    CHECK_STR(t, "");
}

static void unterminated_block_is_thinking(void)
{
    const char *p[] = {"<think>still thinking</th"};
    char c[256], t[256];
    run(p, 1, c, t);
    CHECK_STR(c, "");
    CHECK_STR(t, "still thinking</th");
}

static void byte_by_byte(void)
{
    const char *text = "<think>x<y</think>z";
    const char *p[32];
    char bytes[32][2];
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i++) {
        bytes[i][0] = text[i];
        bytes[i][1] = '\0';
        p[i] = bytes[i];
    }
    char c[256], t[256];
    run(p, n, c, t);
    CHECK_STR(c, "z");
    CHECK_STR(t, "x<y");
}

static void residue_stripping(void)
{
    char *s = cm_think_strip_residue("<think>a</think>\n\nSummary one.");
    CHECK_STR(s, "Summary one.");
    free(s);
    s = cm_think_strip_residue("leftover reasoning</think>\nSummary two.");
    CHECK_STR(s, "Summary two.");
    free(s);
    s = cm_think_strip_residue("Intro <think>x</think> middle <think>y</think> end");
    CHECK_STR(s, "Intro  middle  end");
    free(s);
    s = cm_think_strip_residue("<think>never closed");
    CHECK_STR(s, "");
    free(s);
    s = cm_think_strip_residue("plain text");
    CHECK_STR(s, "plain text");
    free(s);
}

UNIT_MAIN(T(whole_block_moved), T(tags_split_across_pieces), T(no_block_passes_through),
          T(leading_whitespace_without_block_is_kept), T(partial_open_tag_at_end),
          T(unterminated_block_is_thinking), T(byte_by_byte), T(residue_stripping))

/* cm_think: inline thinking separation and residue stripping (see cm_think.h). */
#include "cm_think.h"

#include "cm_alloc.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char OPEN_TAG[] = "<think>";
static const char CLOSE_TAG[] = "</think>";

void cm_think_init(struct cm_think_splitter *s)
{
    memset(s, 0, sizeof *s);
    s->state = CM_THINK_DETECT;
}

static void append(char **buf, size_t *len, const char *data, size_t n)
{
    if (n == 0 && *buf)
        return;
    *buf = cm_xrealloc(*buf, *len + n + 1);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static void out_reset(struct cm_think_out *out)
{
    out->content_len = 0;
    out->thinking_len = 0;
    append(&out->content, &out->content_len, "", 0);
    append(&out->thinking, &out->thinking_len, "", 0);
    out->content[0] = '\0';
    out->thinking[0] = '\0';
}

void cm_think_out_deinit(struct cm_think_out *out)
{
    free(out->content);
    free(out->thinking);
    memset(out, 0, sizeof *out);
}

/* Length of the longest suffix of data[0..n) that is a proper prefix of tag. */
static size_t partial_suffix(const char *data, size_t n, const char *tag)
{
    size_t tl = strlen(tag);
    for (size_t k = tl - 1; k > 0; k--) {
        if (k <= n && memcmp(data + n - k, tag, k) == 0)
            return k;
    }
    return 0;
}

static void feed_bytes(struct cm_think_splitter *s, const char *p, size_t n,
                       struct cm_think_out *out)
{
    while (n > 0) {
        switch (s->state) {
        case CM_THINK_DETECT: {
            /* hold = leading whitespace, then a prefix of "<think>". */
            char c = *p;
            if (s->tag_len == 0 && isspace((unsigned char)c) && s->hold_len < 8) {
                s->hold[s->hold_len++] = c;
                p++, n--;
                continue;
            }
            if (c == OPEN_TAG[s->tag_len]) {
                s->hold[s->hold_len++] = c;
                s->tag_len++;
                p++, n--;
                if (s->tag_len == sizeof OPEN_TAG - 1) {
                    s->hold_len = 0; /* whitespace before the tag is dropped */
                    s->state = CM_THINK_INSIDE;
                }
                continue;
            }
            /* Not a think block: release what was held and pass through. */
            append(&out->content, &out->content_len, s->hold, s->hold_len);
            s->hold_len = 0;
            s->state = CM_THINK_PASS;
            break;
        }
        case CM_THINK_INSIDE: {
            /* Join held partial tag bytes with the new data. */
            char *joined = NULL;
            size_t jl = 0;
            append(&joined, &jl, s->hold, s->hold_len);
            append(&joined, &jl, p, n);
            s->hold_len = 0;
            p += n, n = 0;
            char *end = memmem(joined, jl, CLOSE_TAG, sizeof CLOSE_TAG - 1);
            if (end) {
                append(&out->thinking, &out->thinking_len, joined, (size_t)(end - joined));
                size_t rest_off = (size_t)(end - joined) + sizeof CLOSE_TAG - 1;
                s->state = CM_THINK_AFTER;
                feed_bytes(s, joined + rest_off, jl - rest_off, out);
            } else {
                size_t keep = partial_suffix(joined, jl, CLOSE_TAG);
                append(&out->thinking, &out->thinking_len, joined, jl - keep);
                memcpy(s->hold, joined + jl - keep, keep);
                s->hold_len = keep;
            }
            free(joined);
            break;
        }
        case CM_THINK_AFTER:
            while (n > 0 && isspace((unsigned char)*p))
                p++, n--;
            if (n > 0)
                s->state = CM_THINK_PASS;
            break;
        case CM_THINK_PASS:
            append(&out->content, &out->content_len, p, n);
            n = 0;
            break;
        }
    }
}

void cm_think_feed(struct cm_think_splitter *s, const char *piece, size_t len,
                   struct cm_think_out *out)
{
    out_reset(out);
    feed_bytes(s, piece, len, out);
}

void cm_think_finish(struct cm_think_splitter *s, struct cm_think_out *out)
{
    out_reset(out);
    if (s->state == CM_THINK_DETECT)
        append(&out->content, &out->content_len, s->hold, s->hold_len);
    else if (s->state == CM_THINK_INSIDE) /* unterminated block: all of it was thinking */
        append(&out->thinking, &out->thinking_len, s->hold, s->hold_len);
    s->hold_len = 0;
    s->state = CM_THINK_PASS;
}

static void trim_into(const char *b, const char *e, char **out)
{
    while (b < e && isspace((unsigned char)*b))
        b++;
    while (e > b && isspace((unsigned char)e[-1]))
        e--;
    *out = cm_xstrndup(b, (size_t)(e - b));
}

char *cm_think_strip_residue(const char *text)
{
    char *buf = NULL;
    size_t len = 0;
    append(&buf, &len, "", 0);
    const char *p = text;
    /* An orphan closing tag (its opening was in the prompt template): drop
     * everything up to and including the last one that has no opener. */
    const char *open = strstr(p, OPEN_TAG);
    const char *close = strstr(p, CLOSE_TAG);
    if (close && (!open || close < open))
        p = close + sizeof CLOSE_TAG - 1;
    for (;;) {
        open = strstr(p, OPEN_TAG);
        if (!open) {
            append(&buf, &len, p, strlen(p));
            break;
        }
        append(&buf, &len, p, (size_t)(open - p));
        close = strstr(open, CLOSE_TAG);
        if (!close)
            break; /* unterminated block: the rest is thinking */
        p = close + sizeof CLOSE_TAG - 1;
    }
    /* A stray closing tag later on is residue too. */
    char *stray;
    while ((stray = strstr(buf, CLOSE_TAG)) != NULL)
        memmove(stray, stray + sizeof CLOSE_TAG - 1, strlen(stray + sizeof CLOSE_TAG - 1) + 1);
    char *out;
    trim_into(buf, buf + strlen(buf), &out);
    free(buf);
    return out;
}

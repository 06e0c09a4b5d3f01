/*
 * cm_think: separating model "thinking" from answer text.
 *
 * Older Ollama releases (and some qwen3 builds even with think:false) put the
 * reasoning inline at the start of content: "<think>...</think>\n\nanswer".
 * struct cm_think_splitter moves such a leading block out of the content,
 * incrementally, so it works on a stream of pieces as well as on one whole
 * string. It holds back at most a few bytes (a possible partial tag).
 *
 * cm_think_strip_residue() is the batch cleaner for stored text: it removes
 * every paired <think>...</think> block and anything before an orphan
 * </think>, then trims whitespace.
 *
 * Ownership: output strings are appended to caller-owned buffers (struct
 * cm_think_out); free them with cm_think_out_deinit().
 */
#ifndef CM_THINK_H
#define CM_THINK_H

#include <stddef.h>

struct cm_think_out {
    char *content; /* answer text produced by this call (NUL-terminated) */
    size_t content_len;
    char *thinking; /* reasoning text produced by this call */
    size_t thinking_len;
};

enum cm_think_state { CM_THINK_DETECT, CM_THINK_INSIDE, CM_THINK_AFTER, CM_THINK_PASS };

struct cm_think_splitter {
    enum cm_think_state state;
    char hold[16]; /* bytes held back: a possible partial tag */
    size_t hold_len;
    size_t tag_len; /* DETECT: how much of "<think>" matched */
};

void cm_think_init(struct cm_think_splitter *s);
/* Feeds a piece of content; out is reset then filled. */
void cm_think_feed(struct cm_think_splitter *s, const char *piece, size_t len,
                   struct cm_think_out *out);
/* End of content: releases anything held back into out. */
void cm_think_finish(struct cm_think_splitter *s, struct cm_think_out *out);
void cm_think_out_deinit(struct cm_think_out *out);

/* Returns a new string without thinking residue; caller frees. */
char *cm_think_strip_residue(const char *text);

#endif

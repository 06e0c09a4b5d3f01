/*
 * upstream_call: one buffered JSON exchange with Ollama on behalf of a
 * client request: send, wait, map failures to OpenAI errors, hand the
 * parsed reply to a callback. A client that goes away cancels the transfer.
 *
 * Ownership: ctx is handed over; ctx_free (may be NULL) runs exactly once,
 * after on_ok or after the failure reply or the abort. The json_t given to
 * on_ok is borrowed.
 */
#ifndef UPSTREAM_CALL_H
#define UPSTREAM_CALL_H

#include "proxy.h"

#include <jansson.h>

typedef void (*upstream_ok_cb)(struct cm_req *r, const json_t *reply, void *ctx);

struct upstream_call_opts {
    const char *method;    /* "GET" or "POST" */
    const char *path;      /* "/api/embed" */
    const json_t *body;    /* borrowed; NULL for GET */
    const char *body_text; /* used instead of body when set: borrowed, copied by the call */
    char *body_take;       /* used instead of both when set: malloc'd text (body_len
                              bytes, NUL-terminated), owned by the call from here */
    size_t body_len;
    double timeout_s;  /* whole exchange */
    const char *model; /* for 404 messages; borrowed during the call only */
    int json_scoped;   /* on_ok keeps no JSON: the reply is parsed and released in
                          a JSON scope (cm_mem_budget.h, per-request arena) */
};

void upstream_call_json(struct proxy *px, struct cm_req *r, const struct upstream_call_opts *o,
                        upstream_ok_cb on_ok, void *ctx, void (*ctx_free)(void *));

#endif

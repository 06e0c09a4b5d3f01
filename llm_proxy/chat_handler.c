/*
 * chat_handler: POST /v1/chat/completions -> POST /api/chat.
 *
 * Non-stream requests are one buffered exchange (upstream_call). Streams
 * relay each native NDJSON line as one SSE chunk as soon as it arrives:
 *
 *   waiting --upstream 200 headers / keepalive tick--> streaming
 *   streaming --final line--> "data: [DONE]" --> finished
 *   any --upstream failure--> JSON error (waiting) or error event (streaming)
 *   any --client gone--> upstream cancelled
 *
 * The streaming relay itself is chat_upstream.c, written out by api_relay.c
 * (the SSE sink shared with /v1/responses and /v1/messages). Backpressure:
 * while more than CHAT_UPSTREAM_HIGH_WATER bytes wait for a slow client, the
 * upstream transfer is paused.
 */
#include "api_relay.h"
#include "chat_translate.h"
#include "proxy.h"
#include "upstream_call.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <time.h>

/* ------------------------------------------------------------ non-stream */

struct chat_ctx {
    struct proxy *px;
    struct chat_request req;
};

static void chat_ctx_free(void *arg)
{
    struct chat_ctx *c = arg;
    chat_request_deinit(&c->req);
    free(c);
}

static void chat_ok(struct cm_req *r, const json_t *reply, void *arg)
{
    struct chat_ctx *c = arg;
    char id[48];
    chat_new_id(id, sizeof id);
    struct chat_usage usage = {0, 0};
    struct proxy_error err;
    json_t *out =
        chat_response_translate(reply, c->req.model, id, (long long)time(NULL), &usage, &err);
    if (!out) {
        proxy_reply_error(r, &err);
        return;
    }
    chat_count_tokens(c->px->m_tokens, &usage);
    cm_req_reply_json(r, 200, out);
}

/* ------------------------------------------------------------ SSE stream */

/* The chunks are already chat.completion.chunk objects: written as they are
 * ("data: <chunk>"), then "data: [DONE]"; a failure after the stream began
 * is one OpenAI error event. */

static void conv_start(void *conv, json_t *events)
{
    (void)conv;
    (void)events;
}

static void conv_chunk(void *conv, const json_t *chunk, json_t *events)
{
    (void)conv;
    json_array_append(events, (json_t *)chunk);
}

static void conv_done(void *conv, const char *finish, const struct chat_usage *u, json_t *events)
{
    (void)conv;
    (void)finish;
    (void)u;
    (void)events;
}

static void conv_fail(void *conv, const struct proxy_error *e, json_t *events)
{
    (void)conv;
    json_array_append_new(events, cm_oai_error(e->message, cm_oai_error_type(e->status),
                                               e->param[0] ? e->param : NULL, e->code));
}

static json_t *conv_result(void *conv)
{
    (void)conv;
    return NULL; /* non-stream chat goes through upstream_call */
}

static void conv_free(void *conv)
{
    (void)conv;
}

static const struct api_relay_ops chat_sse_ops = {.start = conv_start,
                                                  .chunk = conv_chunk,
                                                  .done = conv_done,
                                                  .fail = conv_fail,
                                                  .result = conv_result,
                                                  .reply_error = proxy_reply_error,
                                                  .free = conv_free,
                                                  .ping = NULL,
                                                  .named_events = 0,
                                                  .json_per_line = 1,
                                                  .end_marker = "data: [DONE]\n\n"};

/* ------------------------------------------------------------ entry */

/* The request's JSON lives in one scope (cm_mem_budget.h, per-request
 * arena): it is translated, written out as the native body and released
 * before this returns; what outlives it (the model name, the body text) is
 * copied out. */
static void chat_handle_scoped(struct cm_req *r, struct proxy *px)
{
    struct evbuffer *body = cm_req_body(r);
    size_t len = evbuffer_get_length(body);
    struct chat_request req;
    struct proxy_error err;
    int rc = chat_request_translate_text((const char *)evbuffer_pullup(body, -1), len, &req, &err);
    /* The text is done with; its reservation in the memory budget stays
     * until the request ends and stands for the native text (same size). */
    evbuffer_drain(body, len);
    if (rc != 0) {
        proxy_reply_error(r, &err);
        return;
    }
    if (req.stream) {
        api_relay_start(px, r, &req, &chat_sse_ops, NULL);
        return;
    }
    struct chat_ctx *c = cm_xcalloc(1, sizeof *c);
    c->px = px;
    c->req = req;
    size_t native_len;
    char *native = chat_request_body(&c->req, &native_len);
    chat_request_drop_native(&c->req);
    struct upstream_call_opts o = {.method = "POST",
                                   .path = "/api/chat",
                                   .body_take = native,
                                   .body_len = native_len,
                                   .timeout_s = px->cfg.chat_timeout,
                                   .model = c->req.model,
                                   .json_scoped = 1};
    upstream_call_json(px, r, &o, chat_ok, c, chat_ctx_free);
}

void chat_handle(struct cm_req *r, void *arg)
{
    cm_json_scope_begin();
    chat_handle_scoped(r, arg);
    cm_json_scope_end();
}

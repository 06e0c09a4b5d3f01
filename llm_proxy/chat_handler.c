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
 * The streaming relay itself is chat_upstream.c; this file is its SSE sink.
 * Backpressure: while more than CHAT_UPSTREAM_HIGH_WATER bytes wait for a
 * slow client, the upstream transfer is paused.
 */
#include "chat_translate.h"
#include "chat_upstream.h"
#include "proxy.h"
#include "upstream_call.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
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

/* ------------------------------------------------------------ SSE sink */

struct sse_call {
    struct proxy *px;
    struct cm_req *r;
    struct upstream_chat *uc;
    struct evbuffer *out; /* SSE bytes being assembled */
    struct event *keepalive;
    int wrote_since_tick;
};

static void sse_free(struct sse_call *s)
{
    if (s->keepalive)
        event_free(s->keepalive);
    evbuffer_free(s->out);
    free(s);
}

static void sse_start(struct sse_call *s)
{
    if (cm_req_streaming(s->r))
        return;
    cm_req_add_header(s->r, "Cache-Control", "no-cache");
    cm_req_add_header(s->r, "X-Accel-Buffering", "no");
    cm_req_stream_start(s->r, 200, "text/event-stream; charset=utf-8");
}

static void sse_flush(struct sse_call *s)
{
    size_t len = evbuffer_get_length(s->out);
    if (!len)
        return;
    cm_req_stream_write(s->r, (const char *)evbuffer_pullup(s->out, -1), len);
    evbuffer_drain(s->out, len);
    s->wrote_since_tick = 1;
}

static void sse_event_json(struct sse_call *s, const json_t *v)
{
    evbuffer_add(s->out, "data: ", 6);
    cm_json_to_evbuffer(v, s->out);
    evbuffer_add(s->out, "\n\n", 2);
}

static void sink_headers_ok(void *arg)
{
    sse_start(arg);
}

static void sink_chunk(void *arg, const json_t *chunk)
{
    struct sse_call *s = arg;
    sse_start(s);
    sse_event_json(s, chunk);
    sse_flush(s);
}

static void sink_done(void *arg, const char *finish_reason, const struct chat_usage *usage)
{
    struct sse_call *s = arg;
    (void)finish_reason;
    (void)usage;
    sse_start(s);
    evbuffer_add(s->out, "data: [DONE]\n\n", 14);
    sse_flush(s);
    cm_req_stream_end(s->r);
    sse_free(s);
}

/* JSON error before the stream began, one error event after. */
static void sink_fail(void *arg, const struct proxy_error *e)
{
    struct sse_call *s = arg;
    if (!cm_req_streaming(s->r)) {
        proxy_reply_error(s->r, e);
    } else {
        CM_WARN(cm_req_id(s->r), "stream_failed", "status=%d message=%s", e->status, e->message);
        json_t *ev = cm_oai_error(e->message, cm_oai_error_type(e->status),
                                  e->param[0] ? e->param : NULL, e->code);
        sse_event_json(s, ev);
        json_decref(ev);
        sse_flush(s);
        cm_req_stream_end(s->r);
    }
    sse_free(s);
}

static void sse_drained(struct cm_req *r, void *arg)
{
    struct sse_call *s = arg;
    (void)r;
    upstream_chat_resume(s->uc);
}

static size_t sink_backlog(void *arg)
{
    struct sse_call *s = arg;
    size_t b = cm_req_stream_backlog(s->r);
    if (b > CHAT_UPSTREAM_HIGH_WATER)
        cm_req_stream_on_drain(s->r, sse_drained, s);
    return b;
}

static const struct chat_sink_ops sse_ops = {.headers_ok = sink_headers_ok,
                                             .chunk = sink_chunk,
                                             .done = sink_done,
                                             .fail = sink_fail,
                                             .backlog = sink_backlog};

static void sse_keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sse_call *s = arg;
    (void)fd;
    (void)what;
    sse_start(s);
    if (!s->wrote_since_tick) {
        evbuffer_add(s->out, ": keepalive\n\n", 13);
        sse_flush(s);
    }
    s->wrote_since_tick = 0;
}

static void sse_abort(struct cm_req *r, void *arg)
{
    struct sse_call *s = arg;
    CM_INFO(cm_req_id(r), "client_gone", "route=%s streaming=%d", cm_req_route(r),
            cm_req_streaming(r));
    upstream_chat_cancel(s->uc);
    sse_free(s);
}

static void stream_begin(struct proxy *px, struct cm_req *r, struct chat_request *req)
{
    struct sse_call *s = cm_xcalloc(1, sizeof *s);
    s->px = px;
    s->r = r;
    s->out = evbuffer_new();
    struct proxy_error err;
    s->uc = upstream_chat_start(px, cm_req_id(r), cm_req_route(r), req, &sse_ops, s, &err);
    if (!s->uc) {
        sse_free(s);
        proxy_reply_error(r, &err);
        return;
    }
    s->keepalive = event_new(px->base, -1, EV_PERSIST, sse_keepalive_cb, s);
    double ka = px->cfg.sse_keepalive;
    struct timeval tv = {(time_t)ka, (suseconds_t)((ka - (double)(time_t)ka) * 1e6)};
    event_add(s->keepalive, &tv);
    cm_req_on_abort(r, sse_abort, s);
}

/* ------------------------------------------------------------ entry */

void chat_handle(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
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
        stream_begin(px, r, &req);
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
                                   .body_text = native,
                                   .body_len = native_len,
                                   .timeout_s = px->cfg.chat_timeout,
                                   .model = c->req.model};
    upstream_call_json(px, r, &o, chat_ok, c, chat_ctx_free);
    free(native);
}

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
 * Backpressure: while more than STREAM_HIGH_WATER bytes wait for a slow
 * client, the upstream transfer is paused (curl redelivers the same bytes).
 */
#include "chat_translate.h"
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

#define STREAM_HIGH_WATER (1024 * 1024)
#define STREAM_MAX_LINE (8 * 1024 * 1024)

static void count_tokens(struct proxy *px, const struct chat_usage *u)
{
    const char *prompt[] = {"prompt"}, *completion[] = {"completion"};
    cm_metric_add(px->m_tokens, prompt, (double)u->prompt_tokens);
    cm_metric_add(px->m_tokens, completion, (double)u->completion_tokens);
}

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
    count_tokens(c->px, &usage);
    cm_req_reply_json(r, 200, out);
}

/* ------------------------------------------------------------ stream */

struct stream_call {
    struct proxy *px;
    struct cm_req *r;
    struct cm_hc_req *up;
    struct chat_request req;
    struct chat_stream st;
    struct evbuffer *pending; /* upstream bytes not yet split into lines */
    struct evbuffer *out;     /* SSE bytes being assembled */
    struct event *keepalive;
    struct event *resume;
    int wrote_since_tick;
    int first_line_seen;
};

static void stream_free(struct stream_call *s)
{
    if (s->keepalive)
        event_free(s->keepalive);
    if (s->resume)
        event_free(s->resume);
    evbuffer_free(s->pending);
    evbuffer_free(s->out);
    chat_request_deinit(&s->req);
    chat_stream_deinit(&s->st);
    free(s);
}

static void sse_start(struct stream_call *s)
{
    if (cm_req_streaming(s->r))
        return;
    cm_req_add_header(s->r, "Cache-Control", "no-cache");
    cm_req_add_header(s->r, "X-Accel-Buffering", "no");
    cm_req_stream_start(s->r, 200, "text/event-stream; charset=utf-8");
}

static void sse_flush(struct stream_call *s)
{
    size_t len = evbuffer_get_length(s->out);
    if (!len)
        return;
    cm_req_stream_write(s->r, (const char *)evbuffer_pullup(s->out, -1), len);
    evbuffer_drain(s->out, len);
    s->wrote_since_tick = 1;
}

static void sse_event_json(struct stream_call *s, const json_t *v)
{
    evbuffer_add(s->out, "data: ", 6);
    cm_json_to_evbuffer(v, s->out);
    evbuffer_add(s->out, "\n\n", 2);
}

/* Ends the exchange with an error: JSON reply before the stream began, one
 * error event after. Frees s. */
static void stream_fail(struct stream_call *s, const struct proxy_error *e)
{
    cm_hc_cancel(s->up);
    s->up = NULL;
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
    stream_free(s);
}

static void stream_succeed(struct stream_call *s)
{
    cm_hc_cancel(s->up);
    s->up = NULL;
    evbuffer_add(s->out, "data: [DONE]\n\n", 14);
    sse_flush(s);
    count_tokens(s->px, &s->st.usage);
    cm_req_stream_end(s->r);
    stream_free(s);
}

/* Handles one NDJSON line. Returns 1 when s was freed (stream over). */
static int stream_line(struct stream_call *s, const char *line, size_t len)
{
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (len == 0)
        return 0;
    struct proxy_error err;
    json_t *j = cm_json_parse(line, len, NULL, 0);
    if (!json_is_object(j)) {
        json_decref(j);
        proxy_error_set(&err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server sent an invalid stream line.");
        stream_fail(s, &err);
        return 1;
    }
    if (!s->first_line_seen) {
        s->first_line_seen = 1;
        const char *labels[] = {cm_req_route(s->r)};
        cm_metric_observe(s->px->m_ttft, labels, cm_req_elapsed(s->r));
    }
    json_t *chunks = json_array();
    int rc = chat_stream_line(&s->st, j, chunks, &err);
    json_decref(j);
    if (rc == CHAT_STREAM_ERROR) {
        json_decref(chunks);
        sse_start(s);
        stream_fail(s, &err);
        return 1;
    }
    sse_start(s);
    size_t i;
    json_t *c;
    json_array_foreach(chunks, i, c) sse_event_json(s, c);
    json_decref(chunks);
    sse_flush(s);
    if (rc == CHAT_STREAM_DONE) {
        stream_succeed(s);
        return 1;
    }
    return 0;
}

/* Splits pending bytes into lines. Returns 1 when s was freed. */
static int stream_drain_lines(struct stream_call *s, int at_eof)
{
    for (;;) {
        struct evbuffer_ptr eol = evbuffer_search_eol(s->pending, NULL, NULL, EVBUFFER_EOL_LF);
        size_t line_len;
        if (eol.pos < 0) {
            line_len = evbuffer_get_length(s->pending);
            if (!at_eof || line_len == 0)
                return 0;
        } else {
            line_len = (size_t)eol.pos;
        }
        char *line = cm_xmalloc(line_len + 1);
        evbuffer_remove(s->pending, line, line_len);
        evbuffer_drain(s->pending, eol.pos < 0 ? 0 : 1);
        int freed = stream_line(s, line, line_len);
        free(line);
        if (freed)
            return 1;
    }
}

static void stream_headers(struct cm_hc_req *up, long status, void *arg)
{
    struct stream_call *s = arg;
    (void)up;
    if (status == 200)
        sse_start(s);
}

static void stream_drained(struct cm_req *r, void *arg)
{
    struct stream_call *s = arg;
    (void)r;
    /* Resume from a fresh loop iteration, not from inside evhttp's writer. */
    struct timeval zero = {0, 0};
    event_add(s->resume, &zero);
}

static void stream_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct stream_call *s = arg;
    (void)fd;
    (void)what;
    cm_hc_resume(s->up); /* may run stream_data (and free s) before returning */
}

static int stream_data(struct cm_hc_req *up, const char *data, size_t len, void *arg)
{
    struct stream_call *s = arg;
    (void)up;
    if (cm_req_stream_backlog(s->r) > STREAM_HIGH_WATER) {
        cm_req_stream_on_drain(s->r, stream_drained, s);
        return CM_HC_PAUSE;
    }
    evbuffer_add(s->pending, data, len);
    if (evbuffer_get_length(s->pending) > STREAM_MAX_LINE) {
        struct proxy_error err;
        proxy_error_set(&err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server sent a stream line over %d bytes.",
                        STREAM_MAX_LINE);
        stream_fail(s, &err);
        return CM_HC_CONSUMED;
    }
    stream_drain_lines(s, 0);
    return CM_HC_CONSUMED;
}

static void stream_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                        struct evbuffer *body, const char *errmsg, void *arg)
{
    struct stream_call *s = arg;
    (void)up;
    s->up = NULL; /* freed by the client after this callback */
    struct proxy_error err;
    if (result == CM_HC_OK && status == 200) {
        if (stream_drain_lines(s, 1))
            return; /* the last line had no newline but completed the stream */
        proxy_error_set(&err, 502, NULL, "upstream_incomplete",
                        "The upstream model server ended the stream before its final message.");
        const char *labels[] = {cm_req_route(s->r), "incomplete_stream"};
        cm_metric_add(s->px->m_upstream_errors, labels, 1);
    } else {
        proxy_upstream_error(s->px, cm_req_route(s->r), result, status, body, errmsg, s->req.model,
                             &err);
    }
    stream_fail(s, &err);
}

static void stream_keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
    struct stream_call *s = arg;
    (void)fd;
    (void)what;
    sse_start(s);
    if (!s->wrote_since_tick) {
        evbuffer_add(s->out, ": keepalive\n\n", 13);
        sse_flush(s);
    }
    s->wrote_since_tick = 0;
}

static void stream_abort(struct cm_req *r, void *arg)
{
    struct stream_call *s = arg;
    (void)r;
    CM_INFO(cm_req_id(r), "client_gone", "route=%s streaming=%d", cm_req_route(r),
            cm_req_streaming(r));
    cm_hc_cancel(s->up);
    stream_free(s);
}

static void stream_begin(struct proxy *px, struct cm_req *r, struct chat_request *req)
{
    struct stream_call *s = cm_xcalloc(1, sizeof *s);
    s->px = px;
    s->r = r;
    s->req = *req;
    memset(req, 0, sizeof *req);
    s->pending = evbuffer_new();
    s->out = evbuffer_new();
    char id[48];
    chat_new_id(id, sizeof id);
    chat_stream_init(&s->st, s->req.model, id, (long long)time(NULL), s->req.include_usage);
    s->resume = evtimer_new(px->base, stream_resume_cb, s);
    s->keepalive = event_new(px->base, -1, EV_PERSIST, stream_keepalive_cb, s);
    double ka = px->cfg.sse_keepalive;
    struct timeval tv = {(time_t)ka, (suseconds_t)((ka - (double)(time_t)ka) * 1e6)};
    event_add(s->keepalive, &tv);

    char *body = cm_json_dumps(s->req.native);
    char *url = proxy_upstream_url(px, "/api/chat");
    struct cm_hc_opts o = {.method = "POST",
                           .url = url,
                           .body = body,
                           .body_len = strlen(body),
                           .request_id = cm_req_id(r),
                           .connect_timeout_s = px->cfg.connect_timeout,
                           .first_byte_timeout_s = px->cfg.chat_timeout,
                           .idle_timeout_s = px->cfg.chat_timeout,
                           .stream = 1};
    struct cm_hc_callbacks cbs = {
        .on_headers = stream_headers, .on_data = stream_data, .on_done = stream_done};
    s->up = cm_hc_start(px->hc, &o, &cbs, s);
    free(url);
    free(body);
    if (!s->up) {
        struct proxy_error err;
        proxy_error_set(&err, 500, NULL, NULL, "Could not start the upstream request.");
        stream_fail(s, &err);
        return;
    }
    cm_req_on_abort(r, stream_abort, s);
}

/* ------------------------------------------------------------ entry */

void chat_handle(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    json_t *body = cm_req_parse_json_object(r);
    if (!body)
        return;
    struct chat_request req;
    struct proxy_error err;
    int rc = chat_request_translate(body, &req, &err);
    json_decref(body);
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
    struct upstream_call_opts o = {.method = "POST",
                                   .path = "/api/chat",
                                   .body = c->req.native,
                                   .timeout_s = px->cfg.chat_timeout,
                                   .model = c->req.model};
    upstream_call_json(px, r, &o, chat_ok, c, chat_ctx_free);
}

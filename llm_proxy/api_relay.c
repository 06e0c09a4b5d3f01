/* api_relay: SSE / buffered sink of chat_upstream (see api_relay.h). */
#include "api_relay.h"

#include "chat_upstream.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

struct api_relay {
    struct proxy *px;
    struct cm_req *r;
    struct upstream_chat *uc;
    const struct api_relay_ops *ops;
    void *conv;
    int stream;
    int started; /* start events written */
    struct evbuffer *out;
    struct event *keepalive;
    int wrote_since_tick;
};

static void relay_free(struct api_relay *a)
{
    if (a->keepalive)
        event_free(a->keepalive);
    evbuffer_free(a->out);
    a->ops->free(a->conv);
    free(a);
}

static void relay_flush(struct api_relay *a)
{
    size_t len = evbuffer_get_length(a->out);
    if (!len)
        return;
    cm_req_stream_write(a->r, (const char *)evbuffer_pullup(a->out, -1), len);
    evbuffer_drain(a->out, len);
    a->wrote_since_tick = 1;
}

static void relay_write_events(struct api_relay *a, json_t *events)
{
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        const char *type = cm_json_str(ev, "type");
        if (a->ops->named_events)
            evbuffer_add_printf(a->out, "event: %s\n", type ? type : "message");
        evbuffer_add(a->out, "data: ", 6);
        cm_json_to_evbuffer(ev, a->out);
        evbuffer_add(a->out, "\n\n", 2);
    }
}

/* Opens the SSE reply and writes the start events, once. */
static void relay_begin(struct api_relay *a)
{
    if (a->started)
        return;
    a->started = 1;
    cm_req_add_header(a->r, "Cache-Control", "no-cache");
    cm_req_add_header(a->r, "X-Accel-Buffering", "no");
    cm_req_stream_start(a->r, 200, "text/event-stream; charset=utf-8");
    json_t *events = json_array();
    a->ops->start(a->conv, events);
    relay_write_events(a, events);
    json_decref(events);
    relay_flush(a);
}

static void sink_headers_ok(void *arg)
{
    struct api_relay *a = arg;
    if (a->stream)
        relay_begin(a);
}

static void sink_chunk(void *arg, const json_t *chunk)
{
    struct api_relay *a = arg;
    json_t *events = json_array();
    a->ops->chunk(a->conv, chunk, events);
    if (a->stream) {
        relay_begin(a);
        relay_write_events(a, events);
        relay_flush(a);
    }
    json_decref(events);
}

static void sink_done(void *arg, const char *finish_reason, const struct chat_usage *usage)
{
    struct api_relay *a = arg;
    json_t *events = json_array();
    a->ops->done(a->conv, finish_reason, usage, events);
    if (a->stream) {
        relay_begin(a);
        relay_write_events(a, events);
        if (a->ops->end_marker)
            evbuffer_add(a->out, a->ops->end_marker, strlen(a->ops->end_marker));
        relay_flush(a);
        cm_req_stream_end(a->r);
    } else {
        cm_req_reply_json(a->r, 200, a->ops->result(a->conv));
    }
    json_decref(events);
    relay_free(a);
}

static void sink_fail(void *arg, const struct proxy_error *e)
{
    struct api_relay *a = arg;
    if (!a->started) {
        a->ops->reply_error(a->r, e);
    } else {
        CM_WARN(cm_req_id(a->r), "stream_failed", "status=%d message=%s", e->status, e->message);
        json_t *events = json_array();
        a->ops->fail(a->conv, e, events);
        relay_write_events(a, events);
        json_decref(events);
        relay_flush(a);
        cm_req_stream_end(a->r);
    }
    relay_free(a);
}

static void relay_drained(struct cm_req *r, void *arg)
{
    struct api_relay *a = arg;
    (void)r;
    upstream_chat_resume(a->uc);
}

static size_t sink_backlog(void *arg)
{
    struct api_relay *a = arg;
    if (!a->started)
        return 0;
    size_t b = cm_req_stream_backlog(a->r);
    if (b > CHAT_UPSTREAM_HIGH_WATER)
        cm_req_stream_on_drain(a->r, relay_drained, a);
    return b;
}

static const struct chat_sink_ops relay_sink = {.headers_ok = sink_headers_ok,
                                                .chunk = sink_chunk,
                                                .done = sink_done,
                                                .fail = sink_fail,
                                                .backlog = sink_backlog};

static void relay_keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
    struct api_relay *a = arg;
    (void)fd;
    (void)what;
    relay_begin(a);
    if (!a->wrote_since_tick) {
        json_t *ping = a->ops->ping ? a->ops->ping(a->conv) : NULL;
        if (ping) {
            json_t *events = json_pack("[o]", ping);
            relay_write_events(a, events);
            json_decref(events);
        } else {
            evbuffer_add(a->out, ": keepalive\n\n", 13);
        }
        relay_flush(a);
    }
    a->wrote_since_tick = 0;
}

static void relay_abort(struct cm_req *r, void *arg)
{
    struct api_relay *a = arg;
    CM_INFO(cm_req_id(r), "client_gone", "route=%s streaming=%d", cm_req_route(r),
            cm_req_streaming(r));
    upstream_chat_cancel(a->uc);
    relay_free(a);
}

void api_relay_start(struct proxy *px, struct cm_req *r, struct chat_request *req,
                     const struct api_relay_ops *ops, void *conv)
{
    struct api_relay *a = cm_xcalloc(1, sizeof *a);
    a->px = px;
    a->r = r;
    a->ops = ops;
    a->conv = conv;
    a->stream = req->stream;
    a->out = evbuffer_new();
    struct proxy_error err;
    a->uc = upstream_chat_start(px, cm_req_id(r), cm_req_route(r), req, &relay_sink, a, &err);
    if (!a->uc) {
        ops->reply_error(r, &err);
        relay_free(a);
        return;
    }
    upstream_chat_json_per_line(a->uc, ops->json_per_line);
    if (a->stream) {
        a->keepalive = event_new(px->base, -1, EV_PERSIST, relay_keepalive_cb, a);
        double ka = px->cfg.sse_keepalive;
        struct timeval tv = {(time_t)ka, (suseconds_t)((ka - (double)(time_t)ka) * 1e6)};
        event_add(a->keepalive, &tv);
    }
    cm_req_on_abort(r, relay_abort, a);
}

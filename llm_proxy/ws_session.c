/*
 * ws_session: the WebSocket chat endpoint GET /ws/chat (RFC 6455) on the
 * HTTP listener. The handshake goes through evhttp (cm_req_upgrade); the
 * frames are wslay's; each chat request is a chat_upstream transfer whose
 * chunks become messages on the connection.
 *
 * Protocol (text frames, JSON):
 *   client {"type":"chat","id":"<id>", ...any OpenAI chat field...}  (streams)
 *   client {"type":"cancel","id":"<id>"}
 *   server {"type":"chunk","id":…,"chunk":<chat.completion.chunk as on SSE>}
 *   server {"type":"done","id":…,"finish_reason":…,"usage":{…}}
 *   server {"type":"error","id":…|null,"error":{message,type,param,code}}
 *
 * Session lifecycle:
 *   open --close frame exchanged / peer gone / ping unanswered--> destroy
 * Destruction is always deferred to its own event (never inside wslay,
 * curl or evhttp callbacks); it cancels every upstream transfer.
 *
 * Backpressure: a sink's backlog is the socket output plus wslay's queue;
 * over the limit the upstream transfers pause and resume once the output
 * has drained.
 *
 * Memory: a wslay 1.1.1 context is ~8.8 KB (two 4 KB buffers), most of an
 * idle connection's cost. A session therefore frees its context whenever it
 * is at a message boundary with nothing in flight (no request, nothing
 * queued or buffered, no partial frame inside wslay: every byte handed to
 * wslay belongs to a completed frame) and creates a fresh one on the next
 * byte or message. wslay keeps no state across messages that this loses.
 */
#include "chat_translate.h"
#include "chat_upstream.h"
#include "proxy.h"
#include "ws_message.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_CLOSE_WAIT_S 2

struct ws_stream;

struct ws_session {
    struct proxy *px;
    struct cm_upgraded *up;
    struct bufferevent *bev;
    wslay_event_context_ptr ctx;
    char req_id[72];
    struct ws_stream *streams;
    unsigned nstreams;
    struct event *ping;
    struct event *reaper; /* deferred destruction */
    struct event *close_timer;
    int got_traffic; /* a frame arrived since the last ping tick */
    int awaiting_pong;
    int dead;
    int draining;
    int close_queued;
    int paused;         /* some stream waits for the output to drain */
    int partial;        /* inside a fragmented message */
    uint64_t fed;       /* bytes handed to wslay since the context was made */
    uint64_t framed;    /* bytes of frames wslay has completed */
    uint64_t frame_len; /* header + payload of the frame being received */
    struct ws_session *prev, *next;
};

struct ws_stream {
    struct ws_session *s;
    struct upstream_chat *uc;
    char id[WS_MAX_ID + 1];
    struct ws_stream *prev, *next;
};

static void ws_progress(struct ws_session *s);
static int ensure_ctx(struct ws_session *s);

/* ------------------------------------------------------------ lifecycle */

static void stream_unlink(struct ws_stream *st)
{
    struct ws_session *s = st->s;
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    s->nstreams--;
    free(st);
}

static void session_destroy(struct ws_session *s)
{
    while (s->streams) {
        struct ws_stream *st = s->streams;
        upstream_chat_cancel(st->uc);
        stream_unlink(st);
    }
    event_free(s->ping);
    event_free(s->reaper);
    event_free(s->close_timer);
    if (s->ctx)
        wslay_event_context_free(s->ctx);
    struct proxy *px = s->px;
    if (s->prev)
        s->prev->next = s->next;
    else
        px->ws_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    px->ws_count--;
    cm_metric_set(px->m_ws_connections, NULL, px->ws_count);
    CM_INFO(s->req_id, "ws_closed", "streams_cancelled=%u", s->nstreams);
    cm_upgraded_close(s->up);
    free(s);
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_destroy(arg);
}

/* Schedules destruction on a fresh loop iteration. */
static void session_kill(struct ws_session *s)
{
    if (s->dead)
        return;
    s->dead = 1;
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    struct timeval zero = {0, 0};
    event_add(s->reaper, &zero);
}

static void close_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_kill(arg); /* the peer never answered our close frame */
}

static void session_close(struct ws_session *s, uint16_t code, const char *reason)
{
    if (s->close_queued || s->dead)
        return;
    if (ensure_ctx(s) != 0) {
        session_kill(s);
        return;
    }
    s->close_queued = 1;
    wslay_event_queue_close(s->ctx, code, (const uint8_t *)reason, strlen(reason));
    struct timeval tv = {WS_CLOSE_WAIT_S, 0};
    event_add(s->close_timer, &tv);
    ws_progress(s);
}

static const struct wslay_event_callbacks *ws_callbacks(void);

/* The wslay context, created on demand (see "Memory" above). */
static int ensure_ctx(struct ws_session *s)
{
    if (s->ctx)
        return 0;
    if (wslay_event_context_server_init(&s->ctx, ws_callbacks(), s) != 0) {
        s->ctx = NULL;
        return -1;
    }
    wslay_event_config_set_max_recv_msg_length(s->ctx, (uint64_t)s->px->cfg.ws_max_message_bytes);
    s->fed = s->framed = 0;
    return 0;
}

static void maybe_hibernate(struct ws_session *s)
{
    if (!s->ctx || s->dead || s->partial || s->fed != s->framed || s->nstreams || s->close_queued ||
        !wslay_event_want_read(s->ctx) || wslay_event_want_write(s->ctx) ||
        wslay_event_get_queued_msg_count(s->ctx) ||
        evbuffer_get_length(bufferevent_get_input(s->bev)) ||
        evbuffer_get_length(bufferevent_get_output(s->bev)))
        return;
    wslay_event_context_free(s->ctx);
    s->ctx = NULL;
}

/* ------------------------------------------------------------ sending */

static void send_json(struct ws_session *s, json_t *msg)
{
    if (s->dead || ensure_ctx(s) != 0) {
        json_decref(msg);
        return;
    }
    char *text = cm_json_dumps(msg);
    json_decref(msg);
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, strlen(text)};
    wslay_event_queue_msg(s->ctx, &m); /* copies */
    free(text);
    ws_progress(s);
}

static void send_error(struct ws_session *s, const char *id, const struct proxy_error *e)
{
    json_t *err = cm_oai_error(e->message, cm_oai_error_type(e->status),
                               e->param[0] ? e->param : NULL, e->code);
    json_t *msg =
        json_pack("{s:s, s:o}", "type", "error", "id", id ? json_string(id) : json_null());
    json_object_set(msg, "error", json_object_get(err, "error"));
    json_decref(err);
    send_json(s, msg);
}

static json_t *usage_json(const struct chat_usage *u)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)(u->prompt_tokens + u->completion_tokens));
}

static void maybe_finish_drain(struct ws_session *s)
{
    if (s->draining && s->nstreams == 0)
        session_close(s, WSLAY_CODE_GOING_AWAY, "server shutting down");
}

/* ------------------------------------------------------------ chat sink */

static void sink_chunk(void *arg, const json_t *chunk)
{
    struct ws_stream *st = arg;
    send_json(st->s, json_pack("{s:s, s:s, s:O}", "type", "chunk", "id", st->id, "chunk", chunk));
}

static void sink_done(void *arg, const char *finish_reason, const struct chat_usage *usage)
{
    struct ws_stream *st = arg;
    struct ws_session *s = st->s;
    send_json(s, json_pack("{s:s, s:s, s:s, s:o}", "type", "done", "id", st->id, "finish_reason",
                           finish_reason ? finish_reason : "stop", "usage", usage_json(usage)));
    stream_unlink(st);
    maybe_finish_drain(s);
}

static void sink_fail(void *arg, const struct proxy_error *e)
{
    struct ws_stream *st = arg;
    struct ws_session *s = st->s;
    send_error(s, st->id, e);
    stream_unlink(st);
    maybe_finish_drain(s);
}

static size_t sink_backlog(void *arg)
{
    struct ws_stream *st = arg;
    struct ws_session *s = st->s;
    size_t b = evbuffer_get_length(bufferevent_get_output(s->bev)) +
               (s->ctx ? wslay_event_get_queued_msg_length(s->ctx) : 0);
    if (b > CHAT_UPSTREAM_HIGH_WATER)
        s->paused = 1;
    return b;
}

static const struct chat_sink_ops ws_ops = {
    .chunk = sink_chunk, .done = sink_done, .fail = sink_fail, .backlog = sink_backlog};

/* ------------------------------------------------------------ messages */

static struct ws_stream *find_stream(struct ws_session *s, const char *id)
{
    for (struct ws_stream *st = s->streams; st; st = st->next)
        if (strcmp(st->id, id) == 0)
            return st;
    return NULL;
}

static void start_chat(struct ws_session *s, const struct ws_client_msg *m)
{
    const char *id = m->id;
    struct proxy_error err;
    if (s->draining) {
        proxy_error_set(&err, 503, NULL, "shutting_down",
                        "The server is shutting down; reconnect to another instance.");
        send_error(s, id, &err);
        return;
    }
    if (find_stream(s, id)) {
        proxy_error_set(&err, 400, "id", "duplicate_id", "A request with id '%s' is in flight.",
                        id);
        send_error(s, id, &err);
        return;
    }
    if (s->nstreams >= (unsigned)s->px->cfg.ws_max_inflight) {
        proxy_error_set(&err, 429, NULL, "too_many_requests",
                        "At most %lld requests may be in flight per connection.",
                        s->px->cfg.ws_max_inflight);
        send_error(s, id, &err);
        return;
    }
    json_t *oai = ws_message_chat_request(m);
    struct chat_request req;
    int rc = chat_request_translate(oai, &req, &err);
    json_decref(oai);
    if (rc != 0) {
        send_error(s, id, &err);
        return;
    }
    struct ws_stream *st = cm_xcalloc(1, sizeof *st);
    st->s = s;
    snprintf(st->id, sizeof st->id, "%s", id);
    char rid[sizeof s->req_id + WS_MAX_ID + 2];
    snprintf(rid, sizeof rid, "%s-%s", s->req_id, id);
    /* Link first: the sink may be called before start returns. */
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->nstreams++;
    st->uc = upstream_chat_start(s->px, rid, "ws_chat", &req, &ws_ops, st, &err);
    if (!st->uc) {
        send_error(s, id, &err);
        stream_unlink(st);
    }
}

static void cancel_chat(struct ws_session *s, const char *id)
{
    struct ws_stream *st = find_stream(s, id);
    if (!st) {
        struct proxy_error err;
        proxy_error_set(&err, 404, "id", "unknown_id", "No request with id '%s' is in flight.", id);
        send_error(s, id, &err);
        return;
    }
    struct chat_usage u = upstream_chat_usage(st->uc);
    upstream_chat_cancel(st->uc);
    send_json(s, json_pack("{s:s, s:s, s:s, s:o}", "type", "done", "id", id, "finish_reason",
                           "cancelled", "usage", usage_json(&u)));
    stream_unlink(st);
    maybe_finish_drain(s);
}

static void handle_text(struct ws_session *s, const uint8_t *data, size_t len)
{
    struct proxy_error err;
    struct ws_client_msg m;
    char bad_id[WS_MAX_ID + 1];
    if (ws_message_parse((const char *)data, len, &m, &err, bad_id, sizeof bad_id) != 0) {
        send_error(s, bad_id[0] ? bad_id : NULL, &err);
        return;
    }
    if (m.type == WS_MSG_CHAT)
        start_chat(s, &m);
    else
        cancel_chat(s, m.id);
    json_decref(m.msg);
}

/* ------------------------------------------------------------ wslay glue */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *arg)
{
    struct ws_session *s = arg;
    (void)flags;
    int n = evbuffer_remove(bufferevent_get_input(s->bev), buf, len);
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    s->fed += (uint64_t)n;
    return n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *arg)
{
    struct ws_session *s = arg;
    (void)flags;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(out) >= CHAT_UPSTREAM_HIGH_WATER) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (evbuffer_add(out, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void frame_start_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *f, void *arg)
{
    struct ws_session *s = arg;
    (void)ctx;
    /* Client frames are masked: 2 + extended length + 4 bytes of header. */
    uint64_t ext = f->payload_length <= 125 ? 0 : f->payload_length <= 65535 ? 2 : 8;
    s->frame_len = 2 + ext + 4 + f->payload_length;
    if (f->opcode == WSLAY_TEXT_FRAME || f->opcode == WSLAY_BINARY_FRAME)
        s->partial = !f->fin;
}

static void frame_end_cb(wslay_event_context_ptr ctx, void *arg)
{
    struct ws_session *s = arg;
    (void)ctx;
    s->framed += s->frame_len;
    s->frame_len = 0;
}

static void on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                      void *arg)
{
    struct ws_session *s = arg;
    (void)ctx;
    s->got_traffic = 1;
    switch (m->opcode) {
    case WSLAY_TEXT_FRAME:
        handle_text(s, m->msg, m->msg_length);
        break;
    case WSLAY_BINARY_FRAME:
        session_close(s, WSLAY_CODE_UNSUPPORTED_DATA, "binary frames are not supported");
        break;
    case WSLAY_PONG:
        s->awaiting_pong = 0;
        break;
    case WSLAY_CONNECTION_CLOSE:
        CM_DEBUG(s->req_id, "ws_close_received", "code=%u", m->status_code);
        break;
    default: /* pings are answered by wslay */
        break;
    }
}

static void ws_progress(struct ws_session *s)
{
    if (s->dead)
        return;
    struct evbuffer *in = bufferevent_get_input(s->bev);
    if (!s->ctx && evbuffer_get_length(in) == 0)
        return; /* hibernating and nothing to do */
    if (ensure_ctx(s) != 0) {
        session_kill(s);
        return;
    }
    if (wslay_event_want_read(s->ctx) && evbuffer_get_length(in) > 0) {
        if (wslay_event_recv(s->ctx) != 0) {
            session_kill(s);
            return;
        }
    }
    if (wslay_event_want_write(s->ctx) && wslay_event_send(s->ctx) != 0) {
        session_kill(s);
        return;
    }
    if (!wslay_event_want_read(s->ctx) && !wslay_event_want_write(s->ctx) &&
        evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
        session_kill(s); /* close handshake done and flushed */
        return;
    }
    maybe_hibernate(s);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    ws_progress(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct ws_session *s = arg;
    (void)bev;
    ws_progress(s);
    if (s->paused && !s->dead &&
        evbuffer_get_length(bufferevent_get_output(s->bev)) +
                wslay_event_get_queued_msg_length(s->ctx) <
            CHAT_UPSTREAM_HIGH_WATER / 2) {
        s->paused = 0;
        for (struct ws_stream *st = s->streams; st; st = st->next)
            upstream_chat_resume(st->uc);
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what; /* EOF or error: the peer is gone */
    session_kill(arg);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ws_session *s = arg;
    (void)fd;
    (void)what;
    if (s->awaiting_pong) {
        CM_INFO(s->req_id, "ws_ping_timeout", "no pong; closing");
        session_kill(s);
        return;
    }
    if (!s->got_traffic) {
        if (ensure_ctx(s) != 0) {
            session_kill(s);
            return;
        }
        struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
        wslay_event_queue_msg(s->ctx, &m);
        s->awaiting_pong = 1;
        ws_progress(s);
    }
    s->got_traffic = 0;
}

static const struct wslay_event_callbacks *ws_callbacks(void)
{
    static const struct wslay_event_callbacks cbs = {.recv_callback = recv_cb,
                                                     .send_callback = send_cb,
                                                     .on_frame_recv_start_callback = frame_start_cb,
                                                     .on_frame_recv_end_callback = frame_end_cb,
                                                     .on_msg_recv_callback = on_msg_cb};
    return &cbs;
}

static void on_server_free(struct cm_upgraded *up, void *arg)
{
    struct ws_session *s = arg;
    (void)up;
    session_destroy(s); /* closes up */
}

/* ------------------------------------------------------------ handshake */

static int header_has_token(const char *value, const char *token)
{
    if (!value)
        return 0;
    size_t tl = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p + strcspn(p, ",");
        const char *e = end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - p) == tl && strncasecmp(p, token, tl) == 0)
            return 1;
        p = end;
    }
    return 0;
}

static int valid_key(const char *key)
{
    if (!key || strlen(key) != 24)
        return 0;
    unsigned char raw[24];
    int n = EVP_DecodeBlock(raw, (const unsigned char *)key, 24);
    return n == 18 && key[22] == '=' && key[23] == '='; /* 16 bytes + padding */
}

void ws_handle_upgrade(struct cm_req *r, void *arg)
{
    /* The route (main.c) has the API key and the Origin checked, and the
     * server refuses new requests while draining, before this runs. */
    struct proxy *px = arg;
    const char *upgrade = cm_req_header(r, "Upgrade");
    const char *connection = cm_req_header(r, "Connection");
    const char *key = cm_req_header(r, "Sec-WebSocket-Key");
    const char *version = cm_req_header(r, "Sec-WebSocket-Version");
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0 ||
        !header_has_token(connection, "upgrade")) {
        cm_req_reply_error(r, 400, "invalid_request_error",
                           "This endpoint speaks WebSocket: send Upgrade: websocket and "
                           "Connection: Upgrade.",
                           NULL, "websocket_required");
        return;
    }
    if (!version || strcmp(version, "13") != 0) {
        cm_req_add_header(r, "Sec-WebSocket-Version", "13");
        cm_req_reply_error(r, 426, "invalid_request_error",
                           "Unsupported Sec-WebSocket-Version; use 13.", NULL,
                           "unsupported_version");
        return;
    }
    if (!valid_key(key)) {
        cm_req_reply_error(r, 400, "invalid_request_error", "Invalid Sec-WebSocket-Key.", NULL,
                           "invalid_websocket_key");
        return;
    }
    unsigned char sha[SHA_DIGEST_LENGTH];
    char joined[64];
    snprintf(joined, sizeof joined, "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)joined, strlen(joined), sha);
    char accept[32];
    EVP_EncodeBlock((unsigned char *)accept, sha, SHA_DIGEST_LENGTH);

    /* Everything that can fail before the point of no return. */
    struct ws_session *s = cm_xcalloc(1, sizeof *s);
    s->px = px;
    snprintf(s->req_id, sizeof s->req_id, "%s", cm_req_id(r));
    const char *headers[] = {
        "Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Accept", accept, NULL};
    s->up = cm_req_upgrade(r, headers, on_server_free, s, &s->bev);
    if (!s->up) {
        free(s);
        return;
    }
    s->ping = event_new(px->base, -1, EV_PERSIST, ping_cb, s);
    s->reaper = evtimer_new(px->base, reaper_cb, s);
    s->close_timer = evtimer_new(px->base, close_timeout_cb, s);
    double pi = px->cfg.ws_ping_interval;
    struct timeval tv = {(time_t)pi, (suseconds_t)((pi - (double)(time_t)pi) * 1e6)};
    event_add(s->ping, &tv);
    s->next = px->ws_sessions;
    if (px->ws_sessions)
        px->ws_sessions->prev = s;
    px->ws_sessions = s;
    px->ws_count++;
    cm_metric_set(px->m_ws_connections, NULL, px->ws_count);
    CM_INFO(s->req_id, "ws_open", "sessions=%u", px->ws_count);
    bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
    bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    /* Frames the client sent right behind the handshake are already here. */
    ws_progress(s);
}

void ws_drain_all(struct proxy *px)
{
    for (struct ws_session *s = px->ws_sessions; s; s = s->next) {
        s->draining = 1;
        maybe_finish_drain(s);
    }
}

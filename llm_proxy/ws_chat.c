/* ws_chat: the /ws/chat protocol on a ws_conn (see ws_chat.h). */
#include "ws_chat.h"

#include "chat_translate.h"
#include "chat_upstream.h"
#include "ws_conn.h"
#include "ws_message.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

/* Reading from the client stops above this many outgoing bytes: twice the
 * level at which upstream transfers pause, so a stream alone never stops
 * the reading of a cancel, while pongs and errors stay bounded. */
#define WS_CHAT_MAX_BACKLOG (2 * CHAT_UPSTREAM_HIGH_WATER)

enum ws_chat_state {
    WS_CHAT_ACTIVE,   /* chat and cancel accepted */
    WS_CHAT_DRAINING, /* shutting down: new chats refused; 1001 after the last */
};

struct ws_stream;

struct ws_session {
    struct proxy *px;
    struct ws_conn *conn;
    enum ws_chat_state state;
    struct ws_stream *streams;
    unsigned nstreams;
    int paused; /* some stream waits for the output to drain */
    struct ws_session *prev, *next;
};

struct ws_stream {
    struct ws_session *s;
    struct upstream_chat *uc;
    char id[WS_MAX_ID + 1];
    struct ws_stream *prev, *next;
};

/* ------------------------------------------------------------ streams */

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

static struct ws_stream *find_stream(struct ws_session *s, const char *id)
{
    for (struct ws_stream *st = s->streams; st; st = st->next)
        if (strcmp(st->id, id) == 0)
            return st;
    return NULL;
}

/* ------------------------------------------------------------ sending */

static void send_json(struct ws_session *s, json_t *msg)
{
    char *text = cm_json_dumps(msg);
    json_decref(msg);
    ws_conn_send_text(s->conn, text, strlen(text)); /* dropped once closing */
    free(text);
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
    if (s->state == WS_CHAT_DRAINING && s->nstreams == 0)
        ws_conn_close(s->conn, WSLAY_CODE_GOING_AWAY, "server shutting down");
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
    size_t b = ws_conn_backlog(st->s->conn);
    if (b > CHAT_UPSTREAM_HIGH_WATER)
        st->s->paused = 1;
    return b;
}

static const struct chat_sink_ops ws_ops = {
    .chunk = sink_chunk, .done = sink_done, .fail = sink_fail, .backlog = sink_backlog};

/* ------------------------------------------------------------ messages */

static void start_chat(struct ws_session *s, const struct ws_client_msg *m)
{
    const char *id = m->id;
    struct proxy_error err;
    if (s->state == WS_CHAT_DRAINING) {
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
    /* The id was checked (ws_message_id_ok): printable ASCII, no CR/LF. */
    char *rid = cm_xasprintf("%s-%s", ws_conn_id(s->conn), id);
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->nstreams++;
    st->uc = upstream_chat_start(s->px, rid, "ws_chat", &req, &ws_ops, st, &err);
    free(rid);
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

/* ------------------------------------------------------------ transport callbacks */

static void on_text(void *arg, const char *data, size_t len)
{
    struct ws_session *s = arg;
    struct proxy_error err;
    struct ws_client_msg m;
    char bad_id[WS_MAX_ID + 1];
    if (ws_message_parse(data, len, &m, &err, bad_id, sizeof bad_id) != 0) {
        send_error(s, bad_id[0] ? bad_id : NULL, &err);
        return;
    }
    if (m.type == WS_MSG_CHAT)
        start_chat(s, &m);
    else
        cancel_chat(s, m.id);
    json_decref(m.msg);
}

static void on_drained(void *arg)
{
    struct ws_session *s = arg;
    if (!s->paused)
        return;
    s->paused = 0;
    for (struct ws_stream *st = s->streams; st; st = st->next)
        upstream_chat_resume(st->uc);
}

static int busy(void *arg)
{
    struct ws_session *s = arg;
    return s->nstreams > 0;
}

static void on_closed(void *arg)
{
    struct ws_session *s = arg;
    unsigned cancelled = s->nstreams;
    while (s->streams) {
        struct ws_stream *st = s->streams;
        upstream_chat_cancel(st->uc);
        stream_unlink(st);
    }
    struct proxy *px = s->px;
    if (s->prev)
        s->prev->next = s->next;
    else
        px->ws_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    px->ws_count--; /* the gauge sums every worker's count at /metrics */
    CM_INFO(ws_conn_id(s->conn), "ws_closed", "streams_cancelled=%u", cancelled);
    free(s);
}

static const struct ws_conn_handler handler = {
    .on_text = on_text, .on_drained = on_drained, .busy = busy, .on_closed = on_closed};

/* ------------------------------------------------------------ sessions */

static struct ws_conn_config conn_config(const struct proxy *px)
{
    struct ws_conn_config cfg = {.max_message = (size_t)px->cfg.ws_max_message_bytes,
                                 .max_backlog = WS_CHAT_MAX_BACKLOG,
                                 .ping_interval = px->cfg.ws_ping_interval,
                                 .send_timeout = px->cfg.ws_send_timeout};
    return cfg;
}

static struct ws_session *session_new(struct proxy *px)
{
    struct ws_session *s = cm_xcalloc(1, sizeof *s);
    s->px = px;
    s->state = WS_CHAT_ACTIVE;
    return s;
}

static void session_link(struct ws_session *s)
{
    struct proxy *px = s->px;
    s->next = px->ws_sessions;
    if (px->ws_sessions)
        px->ws_sessions->prev = s;
    px->ws_sessions = s;
    unsigned n = ++px->ws_count; /* this worker's; the gauge sums them at /metrics */
    CM_INFO(ws_conn_id(s->conn), "ws_open", "sessions=%u", n);
}

void ws_handle_upgrade(struct cm_req *r, void *arg)
{
    /* The route (main.c) has the API key and the Origin checked, and the
     * server refuses new requests while draining, before this runs. */
    struct proxy *px = arg;
    struct ws_session *s = session_new(px);
    struct ws_conn_config cfg = conn_config(px);
    s->conn = ws_conn_accept(r, px->base, &cfg, &handler, s);
    if (!s->conn) {
        free(s); /* answered with an error */
        return;
    }
    session_link(s);
}

void ws_chat_attach(struct proxy *px, struct bufferevent *bev, void (*release)(void *),
                    void *release_arg)
{
    struct ws_session *s = session_new(px);
    struct ws_conn_config cfg = conn_config(px);
    s->conn = ws_conn_new(px->base, bev, "fuzz", &cfg, &handler, s, release, release_arg);
    session_link(s);
}

void ws_chat_abort_all(struct proxy *px)
{
    while (px->ws_sessions)
        ws_conn_abort(px->ws_sessions->conn);
}

void ws_drain_all(struct proxy *px)
{
    for (struct ws_session *s = px->ws_sessions; s;) {
        struct ws_session *next = s->next;
        s->state = WS_CHAT_DRAINING;
        maybe_finish_drain(s);
        s = next;
    }
}

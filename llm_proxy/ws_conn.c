/* ws_conn: WebSocket transport on a taken-over evhttp connection (see
 * ws_conn.h for the lifecycle and the rules). */
#include "ws_conn.h"

#include "cm_alloc.h"
#include "cm_http_server.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

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
/* What a queued wslay message costs beyond its payload (struct + malloc),
 * so that empty pongs count toward the backlog too. */
#define WS_MSG_OVERHEAD 64

/* Every transition is in this file: see the diagram in ws_conn.h. */
enum ws_conn_state {
    WS_IDLE,       /* open, no wslay context (hibernating) */
    WS_OPEN,       /* open, wslay context live */
    WS_CLOSING,    /* a close frame is queued; nothing more is read */
    WS_CLOSE_SENT, /* our close frame is written; waiting for the peer's */
    WS_CLOSED,     /* teardown scheduled (reaper); no I/O, no handler calls */
};

struct ws_conn {
    enum ws_conn_state state;
    struct event_base *base;
    struct bufferevent *bev;
    wslay_event_context_ptr ctx; /* NULL in WS_IDLE (and after teardown) */
    struct ws_conn_config cfg;
    const struct ws_conn_handler *h;
    void *arg;
    void (*release)(void *);
    void *release_arg;
    struct event *ping;
    struct event *reaper; /* deferred destruction */
    /* One deadline: OPEN/IDLE, armed while stalled (1008 when it fires);
     * CLOSING/CLOSE_SENT, the end of the wait for the peer (teardown). */
    struct event *deadline;
    struct evbuffer_cb_entry *out_entry; /* output_cb on the bev's output */
    char req_id[72];
    /* Reassembly of the current data message (never wslay's chunk list). */
    char *msg;
    size_t msg_len, msg_cap;
    int in_message;   /* between the first and the final frame of a message */
    int data_frame;   /* the frame being received is a data frame */
    int in_progress;  /* inside progress(): never enter wslay again */
    int again;        /* progress() was asked for while running */
    int reading;      /* EV_READ enabled on bev (off while the backlog is high) */
    int stalled;      /* backlog over the limit (reading off) */
    int clean_output; /* no frame half written to the socket (recv_failed) */
    int got_traffic;  /* a frame arrived since the last ping tick */
    int awaiting_pong;
    uint64_t fed;       /* bytes handed to wslay since the context was made */
    uint64_t framed;    /* bytes of frames wslay has completed */
    uint64_t frame_len; /* header + payload of the frame being received */
};

static const struct wslay_event_callbacks *callbacks(void);
static void progress(struct ws_conn *c);
static void output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

/* ------------------------------------------------------------ lifecycle */

/* The message being received is held in the request memory budget
 * (LLM_PROXY_MAX_BODY_MEMORY) for its whole allocation. */
static void msg_free(struct ws_conn *c)
{
    cm_mem_budget_release(c->msg_cap);
    free(c->msg);
    c->msg = NULL;
    c->msg_len = c->msg_cap = 0;
    c->in_message = 0;
}

static void destroy(struct ws_conn *c)
{
    if (c->h->on_closed)
        c->h->on_closed(c->arg);
    event_free(c->ping);
    event_free(c->reaper);
    event_free(c->deadline);
    if (c->ctx)
        wslay_event_context_free(c->ctx);
    msg_free(c);
    evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_entry);
    c->release(c->release_arg);
    free(c);
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    destroy(arg);
}

/* -> CLOSED: destruction on a fresh loop iteration. */
static void conn_kill(struct ws_conn *c)
{
    if (c->state == WS_CLOSED)
        return;
    c->state = WS_CLOSED;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    struct timeval zero = {0, 0};
    event_add(c->reaper, &zero);
}

static struct timeval tv_of(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

/* OPEN/IDLE -> CLOSING. The deadline covers a peer that never reads our
 * close frame (send_timeout) and then never answers it (close wait). */
static void enter_closing(struct ws_conn *c)
{
    if (c->state >= WS_CLOSING)
        return;
    c->state = WS_CLOSING;
    struct timeval tv = tv_of(c->cfg.send_timeout + WS_CLOSE_WAIT_S);
    event_add(c->deadline, &tv);
}

static int ensure_ctx(struct ws_conn *c)
{
    if (c->ctx)
        return 0;
    if (wslay_event_context_server_init(&c->ctx, callbacks(), c) != 0) {
        c->ctx = NULL;
        return -1;
    }
    /* Reassembly is ours (one buffer per message, see ws_conn.h), so the
     * message cap is ours too: wslay's applies per frame here. */
    wslay_event_config_set_no_buffering(c->ctx, 1);
    wslay_event_config_set_max_recv_msg_length(c->ctx, (uint64_t)c->cfg.max_message);
    c->fed = c->framed = 0;
    if (c->state == WS_IDLE)
        c->state = WS_OPEN;
    return 0;
}

/* OPEN -> IDLE when at a message boundary with nothing in flight: no
 * request, nothing queued or buffered, no partial frame or message. wslay
 * keeps no state across messages that this loses. */
static void maybe_hibernate(struct ws_conn *c)
{
    if (c->state != WS_OPEN || c->in_message || c->fed != c->framed || c->msg ||
        !wslay_event_want_read(c->ctx) || wslay_event_want_write(c->ctx) ||
        wslay_event_get_queued_msg_count(c->ctx) ||
        evbuffer_get_length(bufferevent_get_input(c->bev)) ||
        evbuffer_get_length(bufferevent_get_output(c->bev)) || (c->h->busy && c->h->busy(c->arg)))
        return;
    wslay_event_context_free(c->ctx);
    c->ctx = NULL;
    c->state = WS_IDLE;
}

/* ------------------------------------------------------------ backpressure */

size_t ws_conn_backlog(const struct ws_conn *c)
{
    size_t b = evbuffer_get_length(bufferevent_get_output(c->bev));
    if (c->ctx)
        b += wslay_event_get_queued_msg_length(c->ctx) +
             wslay_event_get_queued_msg_count(c->ctx) * WS_MSG_OVERHEAD;
    return b;
}

/* Reading follows the backlog: off above max_backlog (the peer's writes
 * then block in TCP, and the deadline runs), on again under it; off for
 * good once wslay reads no more (bytes after a close are dropped). */
static void update_reading(struct ws_conn *c)
{
    if (c->state == WS_CLOSED)
        return;
    int over = ws_conn_backlog(c) >= c->cfg.max_backlog;
    if (over && !c->stalled) {
        c->stalled = 1;
        if (c->state < WS_CLOSING) {
            struct timeval tv = tv_of(c->cfg.send_timeout);
            event_add(c->deadline, &tv);
        }
    } else if (!over && c->stalled) {
        c->stalled = 0;
        if (c->state < WS_CLOSING)
            event_del(c->deadline);
    }
    int want = !over && (!c->ctx || wslay_event_want_read(c->ctx));
    if (want == c->reading)
        return;
    c->reading = want;
    if (want)
        bufferevent_enable(c->bev, EV_READ);
    else
        bufferevent_disable(c->bev, EV_READ);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ws_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state >= WS_CLOSING) {
        conn_kill(c); /* the peer never took or never answered our close frame */
        return;
    }
    if (ws_conn_backlog(c) < c->cfg.max_backlog) {
        progress(c); /* drained meanwhile: reading resumes */
        return;
    }
    CM_INFO(c->req_id, "ws_send_timeout", "backlog=%zu over %zu, nothing read for %.1fs; closing",
            ws_conn_backlog(c), c->cfg.max_backlog, c->cfg.send_timeout);
    ws_conn_close(c, WSLAY_CODE_POLICY_VIOLATION, "not reading");
}

/* ------------------------------------------------------------ wslay glue */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *arg)
{
    struct ws_conn *c = arg;
    (void)flags;
    /* Over the backlog limit, leave the bytes where they are: a burst of
     * pings or bad messages cannot queue more than one buffer's worth. */
    if (ws_conn_backlog(c) >= c->cfg.max_backlog) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    int n = evbuffer_remove(bufferevent_get_input(c->bev), buf, len);
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    c->fed += (uint64_t)n;
    return n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *arg)
{
    struct ws_conn *c = arg;
    (void)flags;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) >= c->cfg.max_backlog / 2) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (evbuffer_add(out, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

/* Called inside wslay: only queue (wslay_event_queue_close is allowed). */
static void fail_in_wslay(struct ws_conn *c, uint16_t code, const char *reason)
{
    wslay_event_queue_close(c->ctx, code, (const uint8_t *)reason, strlen(reason));
    wslay_event_shutdown_read(c->ctx);
    msg_free(c);
}

static void frame_start_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *f, void *arg)
{
    struct ws_conn *c = arg;
    (void)ctx;
    c->got_traffic = 1;
    /* Client frames are masked: 2 + extended length + 4 bytes of header. */
    uint64_t ext = f->payload_length <= 125 ? 0 : f->payload_length <= 65535 ? 2 : 8;
    c->frame_len = 2 + ext + 4 + f->payload_length;
    c->data_frame = f->opcode < 0x8;
    if (!c->data_frame || c->state >= WS_CLOSING)
        return;
    if (f->opcode == WSLAY_BINARY_FRAME) {
        fail_in_wslay(c, WSLAY_CODE_UNSUPPORTED_DATA, "binary frames are not supported");
        return;
    }
    if (f->opcode == WSLAY_TEXT_FRAME)
        c->in_message = 1;
    if (f->payload_length > c->cfg.max_message - c->msg_len) {
        fail_in_wslay(c, WSLAY_CODE_MESSAGE_TOO_BIG, "message too big");
        return;
    }
}

static void frame_chunk_cb(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_chunk_arg *a, void *arg)
{
    struct ws_conn *c = arg;
    (void)ctx;
    if (!c->data_frame || !c->in_message || c->state >= WS_CLOSING || a->data_length == 0 ||
        a->data_length > c->cfg.max_message - c->msg_len)
        return;
    /* Grow with the bytes received (geometrically, capped), not with what
     * a frame header announces: memory in proportion to the payload,
     * whatever the fragmentation. */
    size_t need = c->msg_len + a->data_length;
    if (need > c->msg_cap) {
        size_t cap = c->msg_cap ? c->msg_cap : 256;
        while (cap < need)
            cap *= 2;
        if (cap > c->cfg.max_message)
            cap = c->cfg.max_message;
        if (cm_mem_budget_reserve(cap - c->msg_cap) != 0) {
            fail_in_wslay(c, 1013, "server overloaded; retry later"); /* RFC 6455 7.4.1 */
            return;
        }
        c->msg = cm_xrealloc(c->msg, cap);
        c->msg_cap = cap;
    }
    memcpy(c->msg + c->msg_len, a->data, a->data_length);
    c->msg_len += a->data_length;
}

static void frame_end_cb(wslay_event_context_ptr ctx, void *arg)
{
    struct ws_conn *c = arg;
    (void)ctx;
    c->framed += c->frame_len;
    c->frame_len = 0;
}

static void on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                      void *arg)
{
    struct ws_conn *c = arg;
    switch (m->opcode) {
    case WSLAY_TEXT_FRAME: {
        char *msg = c->msg;
        size_t len = c->msg_len, cap = c->msg_cap;
        c->msg = NULL;
        c->msg_len = c->msg_cap = 0;
        c->in_message = 0;
        /* Not after a close was queued (by us, or just now by
         * fail_in_wslay): only the close handshake remains. */
        if (c->state < WS_CLOSING && wslay_event_want_read(ctx))
            c->h->on_text(c->arg, msg ? msg : "", len);
        free(msg);
        cm_mem_budget_release(cap);
        break;
    }
    case WSLAY_PONG:
        c->awaiting_pong = 0;
        break;
    case WSLAY_CONNECTION_CLOSE:
        CM_DEBUG(c->req_id, "ws_close_received", "code=%u", m->status_code);
        break;
    default: /* pings are answered by wslay; binary was refused at its start */
        break;
    }
}

static const struct wslay_event_callbacks *callbacks(void)
{
    static const struct wslay_event_callbacks cbs = {.recv_callback = recv_cb,
                                                     .send_callback = send_cb,
                                                     .on_frame_recv_start_callback = frame_start_cb,
                                                     .on_frame_recv_chunk_callback = frame_chunk_cb,
                                                     .on_frame_recv_end_callback = frame_end_cb,
                                                     .on_msg_recv_callback = on_msg_cb};
    return &cbs;
}

/* wslay_event_recv failed. Our recv callback only ever says WOULDBLOCK, so
 * this is a frame-level protocol error (a control frame over 125 bytes, a
 * non-minimal or 64-bit-top-bit length...): wslay has queued a close frame
 * without a status and stopped reading. Answer 1002 instead, from a fresh
 * context: nothing is lost, since wslay would send its close ahead of any
 * queued reply and then nothing more, unless a frame is half written to the
 * socket (clean_output is 0), in which case the empty close goes out. */
static void recv_failed(struct ws_conn *c)
{
    CM_INFO(c->req_id, "ws_protocol_error", "invalid frame; closing");
    msg_free(c);
    if (c->clean_output && !wslay_event_get_close_sent(c->ctx)) {
        wslay_event_context_free(c->ctx);
        c->ctx = NULL;
        if (ensure_ctx(c) != 0) {
            conn_kill(c);
            return;
        }
        const char *reason = "protocol error";
        wslay_event_queue_close(c->ctx, WSLAY_CODE_PROTOCOL_ERROR, (const uint8_t *)reason,
                                strlen(reason));
        wslay_event_shutdown_read(c->ctx);
    }
    if (!wslay_event_want_write(c->ctx)) {
        conn_kill(c);
        return;
    }
    enter_closing(c);
}

/* One round of reading and writing; the only place wslay is entered. */
static void step(struct ws_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (c->state == WS_IDLE && evbuffer_get_length(in) == 0)
        return; /* hibernating and nothing to do */
    if (ensure_ctx(c) != 0) {
        conn_kill(c);
        return;
    }
    /* Write what waits first: wslay then holds no half-written frame
     * unless the output is full (see recv_failed). */
    if (wslay_event_want_write(c->ctx) && wslay_event_send(c->ctx) != 0) {
        conn_kill(c);
        return;
    }
    c->clean_output = !wslay_event_want_write(c->ctx) ||
                      evbuffer_get_length(bufferevent_get_output(c->bev)) < c->cfg.max_backlog / 2;
    if (wslay_event_want_read(c->ctx) && evbuffer_get_length(in) > 0 &&
        ws_conn_backlog(c) < c->cfg.max_backlog) {
        if (wslay_event_recv(c->ctx) != 0) {
            recv_failed(c);
            if (c->state == WS_CLOSED)
                return;
        }
    }
    /* wslay stops reading once it has queued a close: its answer to the
     * peer's close, or 1007/1009/1002/1003 for a bad message. */
    if (!wslay_event_want_read(c->ctx)) {
        enter_closing(c);
        evbuffer_drain(in, evbuffer_get_length(in));
    }
    if (wslay_event_want_write(c->ctx) && wslay_event_send(c->ctx) != 0) {
        conn_kill(c);
        return;
    }
    if (c->state == WS_CLOSING && wslay_event_get_close_sent(c->ctx)) {
        c->state = WS_CLOSE_SENT;
        struct timeval tv = {WS_CLOSE_WAIT_S, 0};
        event_add(c->deadline, &tv);
    }
    if (!wslay_event_want_read(c->ctx) && !wslay_event_want_write(c->ctx) &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_kill(c); /* close handshake done and flushed */
        return;
    }
    update_reading(c);
}

static void progress(struct ws_conn *c)
{
    if (c->in_progress) {
        c->again = 1; /* called from inside wslay: the running loop picks it up */
        return;
    }
    c->in_progress = 1;
    do {
        c->again = 0;
        if (c->state != WS_CLOSED)
            step(c);
    } while (c->again && c->state != WS_CLOSED);
    c->in_progress = 0;
    if (c->state == WS_OPEN)
        maybe_hibernate(c);
}

/* ------------------------------------------------------------ events */

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    progress(arg);
}

/* Bytes left the output for the socket: the peer is reading, however
 * slowly, so the deadlines that watch for a peer that does not read start
 * again (a slow reader of one large message is not a stalled one). */
static void output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct ws_conn *c = arg;
    (void)buf;
    if (info->n_deleted == 0)
        return;
    if (c->stalled && c->state < WS_CLOSING) {
        struct timeval tv = tv_of(c->cfg.send_timeout);
        event_add(c->deadline, &tv);
    } else if (c->state == WS_CLOSING) {
        struct timeval tv = tv_of(c->cfg.send_timeout + WS_CLOSE_WAIT_S);
        event_add(c->deadline, &tv);
    }
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct ws_conn *c = arg;
    (void)bev;
    progress(c); /* reads what waited (a cancel, say) before producers resume */
    if (c->state < WS_CLOSING && c->h->on_drained && ws_conn_backlog(c) < c->cfg.max_backlog / 2)
        c->h->on_drained(c->arg);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what; /* EOF or error: the peer is gone */
    conn_kill(arg);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ws_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state >= WS_CLOSING)
        return; /* the deadline decides */
    if (c->awaiting_pong) {
        CM_INFO(c->req_id, "ws_ping_timeout", "no pong; closing");
        conn_kill(c);
        return;
    }
    if (!c->got_traffic) {
        if (ensure_ctx(c) != 0) {
            conn_kill(c);
            return;
        }
        struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
        wslay_event_queue_msg(c->ctx, &m);
        c->awaiting_pong = 1;
        progress(c);
    }
    c->got_traffic = 0;
}

/* ------------------------------------------------------------ public */

int ws_conn_send_text(struct ws_conn *c, const char *data, size_t len)
{
    if (c->state >= WS_CLOSING || ensure_ctx(c) != 0)
        return -1;
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)data, len};
    if (wslay_event_queue_msg(c->ctx, &m) != 0) /* copies */
        return -1;
    progress(c);
    return 0;
}

void ws_conn_close(struct ws_conn *c, uint16_t code, const char *reason)
{
    if (c->state >= WS_CLOSING)
        return;
    if (ensure_ctx(c) != 0) {
        conn_kill(c);
        return;
    }
    /* Reading goes on: the peer's answering close ends the handshake (its
     * messages meanwhile are dropped). */
    wslay_event_queue_close(c->ctx, code, (const uint8_t *)reason, strlen(reason));
    enter_closing(c);
    progress(c);
}

void ws_conn_abort(struct ws_conn *c)
{
    if (c->state == WS_CLOSED)
        event_del(c->reaper);
    destroy(c);
}

int ws_conn_closing(const struct ws_conn *c)
{
    return c->state >= WS_CLOSING;
}

const char *ws_conn_id(const struct ws_conn *c)
{
    return c->req_id;
}

/* Everything but the bufferevent (the upgrade needs c before it has one). */
static struct ws_conn *conn_alloc(struct event_base *base, const char *req_id,
                                  const struct ws_conn_config *cfg, const struct ws_conn_handler *h,
                                  void *arg)
{
    struct ws_conn *c = cm_xcalloc(1, sizeof *c);
    c->state = WS_IDLE;
    c->base = base;
    c->cfg = *cfg;
    c->h = h;
    c->arg = arg;
    c->reading = 1;
    snprintf(c->req_id, sizeof c->req_id, "%s", req_id);
    c->ping = event_new(base, -1, EV_PERSIST, ping_cb, c);
    c->reaper = evtimer_new(base, reaper_cb, c);
    c->deadline = evtimer_new(base, deadline_cb, c);
    return c;
}

static void conn_start(struct ws_conn *c, struct bufferevent *bev, void (*release)(void *),
                       void *release_arg)
{
    c->bev = bev;
    c->release = release;
    c->release_arg = release_arg;
    struct timeval tv = tv_of(c->cfg.ping_interval);
    event_add(c->ping, &tv);
    c->out_entry = evbuffer_add_cb(bufferevent_get_output(bev), output_cb, c);
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    /* Frames sent right behind the handshake are already in the input and no
     * read event will come for them: a deferred read callback processes them
     * once the caller holds c. */
    bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

struct ws_conn *ws_conn_new(struct event_base *base, struct bufferevent *bev, const char *req_id,
                            const struct ws_conn_config *cfg, const struct ws_conn_handler *h,
                            void *arg, void (*release)(void *), void *release_arg)
{
    struct ws_conn *c = conn_alloc(base, req_id, cfg, h, arg);
    conn_start(c, bev, release, release_arg);
    return c;
}

/* ------------------------------------------------------------ handshake */

static void release_upgraded(void *arg)
{
    cm_upgraded_close(arg);
}

static void on_server_free(struct cm_upgraded *up, void *arg)
{
    (void)up;
    ws_conn_abort(arg); /* closes up */
}

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

struct ws_conn *ws_conn_accept(struct cm_req *r, struct event_base *base,
                               const struct ws_conn_config *cfg, const struct ws_conn_handler *h,
                               void *arg)
{
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
        return NULL;
    }
    if (!version || strcmp(version, "13") != 0) {
        cm_req_add_header(r, "Sec-WebSocket-Version", "13");
        cm_req_reply_error(r, 426, "invalid_request_error",
                           "Unsupported Sec-WebSocket-Version; use 13.", NULL,
                           "unsupported_version");
        return NULL;
    }
    if (!valid_key(key)) {
        cm_req_reply_error(r, 400, "invalid_request_error", "Invalid Sec-WebSocket-Key.", NULL,
                           "invalid_websocket_key");
        return NULL;
    }
    unsigned char sha[SHA_DIGEST_LENGTH];
    char joined[64];
    snprintf(joined, sizeof joined, "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)joined, strlen(joined), sha);
    char accept[32];
    EVP_EncodeBlock((unsigned char *)accept, sha, SHA_DIGEST_LENGTH);

    const char *headers[] = {
        "Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Accept", accept, NULL};
    /* Everything that can fail before the point of no return. */
    struct ws_conn *c = conn_alloc(base, cm_req_id(r), cfg, h, arg);
    struct bufferevent *bev = NULL;
    struct cm_upgraded *up = cm_req_upgrade(r, headers, on_server_free, c, &bev);
    if (!up) {
        event_free(c->ping);
        event_free(c->reaper);
        event_free(c->deadline);
        free(c);
        return NULL;
    }
    conn_start(c, bev, release_upgraded, up);
    return c;
}

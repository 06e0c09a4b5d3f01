/*
 * ws_conn: the WebSocket transport (RFC 6455) under /ws/chat: the opening
 * handshake, the wslay glue, ping/pong liveness, the close handshake,
 * backpressure and hibernation. It knows nothing of the chat protocol, which
 * sits on top (ws_chat.c) behind struct ws_conn_handler, the way h2o keeps
 * lib/websocket.c apart from its users.
 *
 * Lifecycle (enum ws_conn_state in ws_conn.c, every transition there):
 *
 *   IDLE <-> OPEN --close queued (ours, or wslay's answer to the peer's close
 *    |        |     or to a protocol error)--> CLOSING --our close frame
 *    |        |                                   |      written--> CLOSE_SENT
 *    +--------+--peer gone / ping unanswered / close handshake done /
 *                timers--------------------------------------------> CLOSED
 *
 *   IDLE     open, wslay context freed (an idle connection costs ~4 KB)
 *   OPEN     open, wslay context live
 *   CLOSING  our close frame is queued; nothing more is read
 *   CLOSE_SENT  waiting up to WS_CLOSE_WAIT_S for the peer's close frame
 *   CLOSED   teardown scheduled on a fresh loop iteration (never inside a
 *            wslay, curl or evhttp callback); on_closed runs there
 *
 * wslay is only ever entered from ws_conn's own progress function, which
 * never nests: a message sent from inside a handler callback (itself called
 * from inside wslay_event_recv) is queued and written once
 * wslay_event_recv has returned. wslay 1.1.1 is not re-entrant.
 *
 * Memory per connection is bounded whatever the peer does: reading stops
 * while the outgoing backlog (socket output + wslay's queue, frames, pongs
 * and errors alike) is over max_backlog, and a peer that keeps it there
 * without reading a byte for send_timeout is closed with 1008 (a slow
 * reader is not a stalled one). Messages are reassembled by ws_conn in
 * one buffer that grows with the payload (wslay's per-frame chunks are not
 * used), capped at max_message (1009 above).
 *
 * Ownership: a ws_conn owns itself and its bufferevent; it is freed right
 * after the handler's on_closed returns, so the handler's pointer to it is
 * valid until then. The handler struct and arg are borrowed for its life.
 * All functions run on the loop thread.
 */
#ifndef WS_CONN_H
#define WS_CONN_H

#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct cm_req;
struct event_base;
struct ws_conn;

struct ws_conn_config {
    size_t max_message;   /* largest message (bytes); 1009 above */
    size_t max_backlog;   /* outgoing bytes over which reading stops */
    double ping_interval; /* seconds; no pong by the next ping closes */
    double send_timeout;  /* seconds over max_backlog with nothing read; then 1008 */
};

struct ws_conn_handler {
    /* One complete text message (valid UTF-8). data is borrowed for the
     * call. May call ws_conn_send_text/ws_conn_close (queued). */
    void (*on_text)(void *arg, const char *data, size_t len);
    /* The backlog fell under half of max_backlog: producers may resume. */
    void (*on_drained)(void *arg);
    /* 1 while the protocol holds state that needs the connection awake
     * (requests in flight); the transport hibernates only when it is 0. */
    int (*busy)(void *arg);
    /* Last call: the connection is being destroyed (peer gone, close done,
     * server shutting down). Nothing may be called on it afterwards. */
    void (*on_closed)(void *arg);
};

/* Validates the opening handshake of r; on success answers 101 and returns
 * the connection (frames pipelined behind the handshake are processed at
 * once), else replies 400/426 itself and returns NULL. The route has
 * already checked the API key and the Origin (main.c). The request id
 * (cm_req_id, copied) labels the connection's logs. */
struct ws_conn *ws_conn_accept(struct cm_req *r, struct event_base *base,
                               const struct ws_conn_config *cfg, const struct ws_conn_handler *h,
                               void *arg);

/* Runs the transport over an already open bufferevent (tests and the fuzz
 * target use a socketpair). release(release_arg) is called once, at
 * destruction, to free bev. */
struct ws_conn *ws_conn_new(struct event_base *base, struct bufferevent *bev, const char *req_id,
                            const struct ws_conn_config *cfg, const struct ws_conn_handler *h,
                            void *arg, void (*release)(void *), void *release_arg);

/* Queues one text message (copied). Returns -1 once the connection is
 * closing. Never enters wslay when called from inside a handler callback. */
int ws_conn_send_text(struct ws_conn *c, const char *data, size_t len);
/* Queues a close frame (code, reason up to 123 bytes) if none was queued;
 * nothing more is read. */
void ws_conn_close(struct ws_conn *c, uint16_t code, const char *reason);
/* Destroys at once: on_closed runs before this returns. Not from inside a
 * ws_conn handler callback (use ws_conn_close). */
void ws_conn_abort(struct ws_conn *c);
/* Outgoing bytes not yet written to the socket (plus per-message overhead). */
size_t ws_conn_backlog(const struct ws_conn *c);
/* 1 once a close is queued or the connection is gone. */
int ws_conn_closing(const struct ws_conn *c);
/* The request id of the upgrade (borrowed, lives as long as c). */
const char *ws_conn_id(const struct ws_conn *c);

#endif

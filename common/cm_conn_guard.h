/*
 * cm_conn_guard: per-connection bookkeeping that evhttp 2.1 lacks:
 *   - a cap on open connections (LLM_PROXY_MAX_CONNECTIONS): at the cap the
 *     listener stops accepting (clients wait in the kernel's backlog) and
 *     resumes when connections close;
 *   - a deadline for reading each request (slowloris): a connection whose
 *     request started arriving more than request_read_timeout ago and has
 *     not been dispatched is shut down.
 *
 *   - framing: each connection's input is followed by a cm_http_track
 *     (cm_http_track.h), which rewrites what evhttp 2.1 cannot parse (chunk
 *     extensions) and makes evhttp refuse what it must not accept, before
 *     evhttp reads it;
 *   - the memory budget (cm_mem_budget.h) for bodies not yet dispatched:
 *     body bytes are charged as they arrive (reading pauses while the
 *     budget is over); a Content-Length body that cannot fit next to what
 *     is in memory now is refused (503) as soon as its head arrives.
 *
 * evhttp creates each connection's bufferevent through evhttp_set_bevcb();
 * the guard takes a reference on it, watches its input buffer for arriving
 * bytes, and learns that evhttp freed the connection when the bufferevent's
 * callbacks are cleared (bufferevent_free() does that first); a sweep timer
 * then drops the reference, which closes the socket. libevent 2.2 has
 * evhttp_set_max_connections() and separate read timeouts for this.
 *
 * The cap is one count shared by every guard set (one set per server, one
 * server per worker thread): cm_conn_cap. Each set adds its connections to
 * the shared atomic count; the set whose connection reaches the cap pauses
 * its listener and wakes the other sets (event_active on their loops) to
 * pause theirs; the set whose close leaves the cap does the same to resume.
 * Two workers accepting in the same instant, the second before it heard
 * that the first reached the cap, can take the count over it (by at most
 * workers - 1): such a connection is held, not read (its bufferevent
 * rate-limited to one byte per hour, no request is served on it), until
 * the count is within the cap again; so the connections served never
 * exceed the cap and no client is refused.
 *
 * Ownership: the guard set is owned by its cm_http_server; guards are
 * internal; the cap is owned by its creator and outlives the guard sets.
 * A guard set is used on its loop thread only; the cap from any thread.
 */
#ifndef CM_CONN_GUARD_H
#define CM_CONN_GUARD_H

struct bufferevent;
struct event_base;
struct evbuffer;
struct evbuffer_cb_info;
struct evconnlistener;
struct cm_conn_guards;
struct cm_http_refusal;
struct cm_conn_cap;

/* max_connections: 0 = no cap. */
struct cm_conn_cap *cm_conn_cap_new(unsigned max_connections);
void cm_conn_cap_free(struct cm_conn_cap *c);
/* Connections open now, across every guard set. */
unsigned cm_conn_cap_open(const struct cm_conn_cap *c);

/* cap: borrowed, may be NULL (no cap). Registers the set with the cap.
 * max_body_bytes: bodies over this are refused by evhttp itself (0 = no
 * limit). */
struct cm_conn_guards *cm_conn_guards_new(struct event_base *base, struct cm_conn_cap *cap,
                                          double request_read_timeout_s, long long max_body_bytes);
void cm_conn_guards_free(struct cm_conn_guards *g);
/* The listener to pause at the cap (set once bound). */
void cm_conn_guards_set_listener(struct cm_conn_guards *g, struct evconnlistener *l);
/* Every write to a connection's output (an evbuffer callback), with the
 * reason its tracker refused the request being read (NULL: none): evhttp's
 * own error page for such a request is the refusal's to explain. Set before
 * the first connection. */
typedef void (*cm_conn_output_cb)(struct evbuffer *out, const struct evbuffer_cb_info *info,
                                  const struct cm_http_refusal *refused, void *arg);
void cm_conn_guards_on_output(struct cm_conn_guards *g, cm_conn_output_cb cb, void *arg);
/* A new connection's bufferevent (from the bevcb). */
void cm_conn_guards_add(struct cm_conn_guards *g, struct bufferevent *bev);
/* A request on bev was dispatched (busy) / finished (idle again). */
void cm_conn_guards_busy(struct cm_conn_guards *g, struct bufferevent *bev, int busy);
/* The connection no longer carries HTTP requests (WebSocket). */
void cm_conn_guards_taken_over(struct cm_conn_guards *g, struct bufferevent *bev);
/* Open connections. */
unsigned cm_conn_guards_count(const struct cm_conn_guards *g);

#endif

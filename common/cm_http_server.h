/*
 * cm_http_server: evhttp (libevent 2.1) server with a router, request ids,
 * OpenAI-style JSON errors, streaming replies and client-abort detection.
 *
 * Lifecycle of a request (struct cm_req):
 *
 *   accepted -> route callback -> replied (cm_req_reply_*)      -> freed
 *                             \-> deferred -> replied            -> freed
 *                             \-> deferred -> streaming -> end   -> freed
 *                             \-> deferred/streaming -> client gone:
 *                                   abort callback runs, then    -> freed
 *
 * A handler either replies before returning or keeps the cm_req and replies
 * later from the same event loop. While a reply is pending, the server
 * watches the client socket; when the client goes away (EOF or reset) the
 * abort callback set with cm_req_on_abort() runs exactly once and the cm_req
 * is freed right after it returns: the handler must drop its pointer and
 * cancel its work (e.g. the upstream transfer) inside the callback.
 *
 * Ownership: the server owns every struct cm_req. Strings returned by
 * cm_req_* getters are borrowed and valid until the request is freed.
 * Functions ending in _json steal the json_t reference they are given.
 * All functions must be called on the loop thread (one server per loop;
 * cm_http_server_inflight() may be read from any thread).
 */
#ifndef CM_HTTP_SERVER_H
#define CM_HTTP_SERVER_H

#include <jansson.h>
#include <stddef.h>

struct event_base;
struct evbuffer;
struct cm_http_server;
struct cm_req;

enum cm_method {
    CM_GET = 1 << 0,
    CM_POST = 1 << 1,
    CM_HEAD = 1 << 2,
    CM_PUT = 1 << 3,
    CM_DELETE = 1 << 4,
    CM_OPTIONS = 1 << 5,
    CM_PATCH = 1 << 6,
};

/* Route flags. */
enum {
    CM_ROUTE_PREFIX = 1 << 0,        /* path is a prefix ("/v1/models/") */
    CM_ROUTE_AUTH = 1 << 1,          /* needs the API key when one is configured */
    CM_ROUTE_DRAIN_OK = 1 << 2,      /* still served while draining (health, metrics) */
    CM_ROUTE_AUTH_QUERY = 1 << 3,    /* with AUTH: the key may also come as ?api_key=
                                        (browsers cannot set headers on a WebSocket) */
    CM_ROUTE_STRICT_ORIGIN = 1 << 4, /* refuse a disallowed Origin on every method, GET
                                        included (a WebSocket upgrade has no preflight) */
    CM_ROUTE_AUTH_XKEY = 1 << 5,     /* with AUTH: the key may also come as "x-api-key: KEY"
                                        (Anthropic's clients) */
    CM_ROUTE_ANTHROPIC = 1 << 6,     /* errors replied on this route (cm_req_reply_error:
                                        401, 403, 503 ...) in Anthropic's shape */
};

typedef void (*cm_route_cb)(struct cm_req *r, void *arg);
typedef void (*cm_req_abort_cb)(struct cm_req *r, void *arg);
typedef void (*cm_req_drain_cb)(struct cm_req *r, void *arg);
typedef void (*cm_req_done_cb)(const struct cm_req *r, void *arg);
/* A request refused before any handler ran; reason is a static string:
 * "malformed" (unparsable or ambiguous framing), "too_large" (body or
 * headers over the limit), "origin", "auth", "shutting_down", or one the
 * caller passes to cm_http_server_count_reject(). */
typedef void (*cm_reject_cb)(const char *reason, void *arg);

struct cm_origin_policy;
struct cm_conn_cap;

/*
 * Several servers (one per worker thread, each on its own event loop) can
 * serve one port: the first binds it with CM_LISTEN_REUSEPORT_FIRST (the
 * port must be free, as with an exclusive bind; port 0 picks one), the
 * others join with CM_LISTEN_REUSEPORT_JOIN on cm_http_server_port() of the
 * first. The kernel (SO_REUSEPORT) spreads new connections over them.
 */
enum cm_listen_mode {
    CM_LISTEN_EXCLUSIVE = 0, /* one server on the port */
    CM_LISTEN_REUSEPORT_FIRST,
    CM_LISTEN_REUSEPORT_JOIN,
};

/*
 * Browser origins (opts.origins, see cm_origin.h): a request whose Origin
 * the policy refuses gets 403 (code "origin_not_allowed") when its method
 * can change state (anything but GET, HEAD and OPTIONS) or its route is
 * CM_ROUTE_STRICT_ORIGIN. The API key is checked after the origin, by one
 * check for every route: "Authorization: Bearer KEY" (spaces after Bearer
 * ignored), or ?api_key=KEY on CM_ROUTE_AUTH_QUERY routes, or
 * "x-api-key: KEY" on CM_ROUTE_AUTH_XKEY routes.
 *
 * With a policy, the server also speaks CORS (cm_cors.h): a preflight to a
 * known path is answered 204 before the origin-on-route and API-key checks
 * (403 when the Origin is refused), and every response to an allowed Origin
 * carries Access-Control-Allow-Origin, Vary: Origin and
 * Access-Control-Expose-Headers. A refused Origin gets no CORS headers.
 */
struct cm_http_server_opts {
    const char *host;                       /* borrowed during cm_http_server_start() */
    int port;                               /* 0 = any free port */
    long long max_body_bytes;               /* request body limit (413) */
    long long max_header_bytes;             /* request line + headers limit */
    double idle_timeout_s;                  /* read/write timeout of connections */
    const char *api_key;                    /* copied; NULL or "" = no auth */
    unsigned max_connections;               /* 0 = no cap (see cm_conn_guard.h) */
    double request_read_timeout_s;          /* whole request must arrive within; 0 = none */
    const struct cm_origin_policy *origins; /* borrowed, outlives the server; NULL = allow all */
    struct cm_conn_cap *conn_cap;           /* borrowed: one connection cap shared by several
                                               servers (cm_conn_guard.h); NULL = the server's
                                               own cap of max_connections */
    enum cm_listen_mode listen;             /* how the port is bound (above) */
};

struct cm_http_server *cm_http_server_new(struct event_base *base,
                                          const struct cm_http_server_opts *opts);
/* Closes every connection; pending requests get their abort callback. */
void cm_http_server_free(struct cm_http_server *srv);

/* methods: CM_GET|CM_POST...; label names the route in logs and metrics. */
void cm_http_server_route(struct cm_http_server *srv, unsigned methods, const char *path,
                          unsigned flags, const char *label, cm_route_cb cb, void *arg);

/* Called once per finished request (replied or aborted), for metrics. */
void cm_http_server_on_done(struct cm_http_server *srv, cm_req_done_cb cb, void *arg);

/* Called for every refusal (see cm_reject_cb), for metrics. */
void cm_http_server_on_reject(struct cm_http_server *srv, cm_reject_cb cb, void *arg);
/* Handlers report their own refusals (queue full, limits...) the same way. */
void cm_http_server_count_reject(struct cm_http_server *srv, const char *reason);

/* Binds and listens. Returns 0, or -1 with a reason in err. */
int cm_http_server_start(struct cm_http_server *srv, char *err, size_t errlen);
int cm_http_server_port(const struct cm_http_server *srv);
/* Changes opts.port before cm_http_server_start() (a worker joining the
 * port another one was given). */
void cm_http_server_set_port(struct cm_http_server *srv, int port);
/* Writes the bound port to path (atomically: temp file + rename), for
 * callers that asked for port 0. Returns 0 or -1. */
int cm_http_server_write_port_file(const struct cm_http_server *srv, const char *path);

/* Graceful shutdown: new requests to non-DRAIN_OK routes get 503 with
 * Connection: close; requests in flight continue. */
void cm_http_server_drain(struct cm_http_server *srv);
int cm_http_server_draining(const struct cm_http_server *srv);
/* Requests accepted and not finished, or whose reply is still being
 * written (DRAIN_OK routes excluded). */
unsigned cm_http_server_inflight(const struct cm_http_server *srv);

/* --- request accessors --- */
const char *cm_req_id(const struct cm_req *r);
const char *cm_req_route(const struct cm_req *r);
const char *cm_req_method_name(const struct cm_req *r);
const char *cm_req_path(const struct cm_req *r);
/* Remainder after a CM_ROUTE_PREFIX path, URL-decoded ("" when none). */
const char *cm_req_path_tail(const struct cm_req *r);
const char *cm_req_header(const struct cm_req *r, const char *name);
/* 1 when the client connected from a loopback address (127.0.0.0/8, ::1,
 * or ::ffff:127.0.0.0/104). */
int cm_req_peer_is_loopback(const struct cm_req *r);
/* Value of a query parameter (decoded) or NULL. */
const char *cm_req_query(const struct cm_req *r, const char *name);
/* Borrowed request body. */
struct evbuffer *cm_req_body(const struct cm_req *r);
/* Frees the body text and its share of the memory budget (once a handler
 * holds what it needs from it). */
void cm_req_drop_body(struct cm_req *r);
int cm_req_status(const struct cm_req *r);
double cm_req_elapsed(const struct cm_req *r); /* seconds since accepted */
/* Attach a handler-owned pointer (not freed by the server). */
void cm_req_set_data(struct cm_req *r, void *data);
void *cm_req_get_data(const struct cm_req *r);

/*
 * Parses the body as a JSON object and drops the body text. On failure
 * replies 400 (OpenAI envelope), or 503 "overloaded" when the parse would
 * take the process over its memory budget (cm_mem_budget.h), and returns
 * NULL; the request is then finished.
 *
 * Every request body is reserved in the memory budget before its handler
 * runs (503 "overloaded" with Retry-After when it does not fit) and
 * released when the body is dropped or the request finishes.
 */
json_t *cm_req_parse_json_object(struct cm_req *r);

/* --- replies --- */
/* Reports a handler's refusal of r (reason: static string) to the server's
 * reject callback. */
void cm_req_count_reject(struct cm_req *r, const char *reason);
/* 503 "overloaded" with Retry-After: the memory budget is exhausted. */
void cm_req_reply_overloaded(struct cm_req *r);
/* Adds a response header (before the reply starts). Returns 0 or -1 (CR/LF). */
int cm_req_add_header(struct cm_req *r, const char *name, const char *value);
void cm_req_reply_json(struct cm_req *r, int status, json_t *body);
/* Anthropic's error type for an HTTP status (static string). */
const char *cm_anthropic_error_type(int status);
void cm_req_reply_error(struct cm_req *r, int status, const char *type, const char *message,
                        const char *param, const char *code);
void cm_req_reply_text(struct cm_req *r, int status, const char *content_type, const char *data,
                       size_t len);
/* Sends and empties buf (the caller still owns it). */
void cm_req_reply_buffer(struct cm_req *r, int status, const char *content_type,
                         struct evbuffer *buf);

/* Registers the client-gone callback (see the lifecycle above). */
void cm_req_on_abort(struct cm_req *r, cm_req_abort_cb cb, void *arg);

/* Streaming (chunked) reply. */
void cm_req_stream_start(struct cm_req *r, int status, const char *content_type);
int cm_req_streaming(const struct cm_req *r);
/* Queues data (copied). */
void cm_req_stream_write(struct cm_req *r, const char *data, size_t len);
/* Bytes queued towards the client and not yet sent. */
size_t cm_req_stream_backlog(const struct cm_req *r);
/* cb runs once the queued output has been written (for backpressure). */
void cm_req_stream_on_drain(struct cm_req *r, cm_req_drain_cb cb, void *arg);
/* Ends the chunked reply and frees the request. */
void cm_req_stream_end(struct cm_req *r);
/* Drops the connection of a streaming reply without ending it (the client
 * sees a cut-off response); frees the request. For fault injection. */
void cm_req_stream_abort(struct cm_req *r);

/* --- connection takeover (WebSocket) ---
 *
 * libevent 2.1 has no WebSocket support. cm_req_upgrade() answers
 * "101 Switching Protocols" with evhttp_send_reply_start() and hands the
 * connection's bufferevent to the caller, whose callbacks replace evhttp's
 * (the approach of ../shared/c-style.md recipe A: evhttp keeps owning the
 * connection and its never-finished request). Bytes the client sent right
 * after the handshake are already in the bufferevent's input: process them
 * at once. The caller releases the connection only with
 * cm_upgraded_close(), never bufferevent_free(); when the server is freed
 * first, on_server_free runs so the caller can clean up and close.
 */
struct bufferevent;
struct cm_upgraded;
typedef void (*cm_upgraded_cb)(struct cm_upgraded *up, void *arg);

/* headers: NULL-terminated name, value, name, value... (copied). The cm_req
 * is finished (freed) by this call. Returns NULL (after replying 500) if a
 * header is invalid. */
struct cm_upgraded *cm_req_upgrade(struct cm_req *r, const char *const *headers,
                                   cm_upgraded_cb on_server_free, void *arg,
                                   struct bufferevent **bev);
void cm_upgraded_close(struct cm_upgraded *up);
/* Takeovers still open. */
unsigned cm_http_server_upgraded(const struct cm_http_server *srv);

#endif

/* cm_http_server: evhttp server helper (see cm_http_server.h for the lifecycle). */
#include "cm_http_server.h"
#include "cm_http_framing.h"
#include "cm_http_track.h"
#include "cm_origin.h"

#include "cm_alloc.h"
#include "cm_conn_guard.h"
#include "cm_cors.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h> /* ev_write: see write_now() */
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* major/minor: 2.1 has no getter */
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdint.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <time.h>

struct route {
    struct route *next;
    unsigned methods;
    unsigned flags;
    char *path;
    size_t path_len;
    char *label;
    cm_route_cb cb;
    void *arg;
};

enum req_state { REQ_PENDING, REQ_STREAMING, REQ_DONE };

struct cm_req {
    struct cm_http_server *srv;
    struct evhttp_request *req;
    const struct route *route;
    enum req_state state;
    int status;
    int aborted;
    int counted;     /* part of the in-flight count */
    size_t reserved; /* body bytes held in the memory budget */
    char id[72];
    const char *method_name;
    char *path;
    char *tail;
    struct evkeyvalq query;
    int query_parsed;
    struct timespec start;
    cm_req_abort_cb abort_cb;
    void *abort_arg;
    cm_req_drain_cb drain_cb;
    void *drain_arg;
    struct event *watch; /* client-gone watcher while the reply is deferred */
    struct evbuffer *chunk;
    void *data;
    struct cm_req *prev, *next;
};

struct cm_upgraded {
    struct cm_http_server *srv;
    struct evhttp_connection *evcon;
    cm_upgraded_cb on_server_free;
    void *arg;
    struct cm_upgraded *prev, *next;
};

struct cm_http_server {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    struct route *routes, **routes_tail;
    struct cm_http_server_opts opts;
    char *host;
    unsigned char api_key_hash[SHA256_DIGEST_LENGTH];
    int has_api_key;
    int port;
    int draining;
    _Atomic unsigned inflight; /* atomic: other workers read it for /metrics */
    struct cm_req *live;
    struct cm_req *dispatching; /* request whose route callback is running */
    struct cm_upgraded *upgraded;
    unsigned nupgraded;
    _Atomic unsigned flushing; /* replies handed to evhttp and not yet written out */
    struct cm_conn_guards *guards;
    struct cm_conn_cap *own_cap; /* when opts.conn_cap is NULL */
    cm_req_done_cb done_cb;
    void *done_arg;
    cm_reject_cb reject_cb;
    void *reject_arg;
};

static void count_reject(struct cm_http_server *srv, const char *reason)
{
    if (srv->reject_cb)
        srv->reject_cb(reason, srv->reject_arg);
}

static double now_diff(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    }
    return "OTHER";
}

static unsigned method_bit(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return CM_GET;
    case EVHTTP_REQ_POST:
        return CM_POST;
    case EVHTTP_REQ_HEAD:
        return CM_HEAD;
    case EVHTTP_REQ_PUT:
        return CM_PUT;
    case EVHTTP_REQ_DELETE:
        return CM_DELETE;
    case EVHTTP_REQ_OPTIONS:
        return CM_OPTIONS;
    case EVHTTP_REQ_PATCH:
        return CM_PATCH;
    default:
        return 0;
    }
}

static int valid_request_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':'))
            return 0;
        if (n >= 64)
            return 0;
    }
    return n > 0;
}

/* Unique, unguessable-enough ids without a syscall per request: a random
 * per-process key mixed with a counter (splitmix64). */
static void generate_request_id(char *out, size_t outlen)
{
    static _Thread_local uint64_t key, counter; /* per worker thread */
    if (key == 0 && RAND_bytes((unsigned char *)&key, sizeof key) != 1) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        key = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
    }
    uint64_t z = key + 0x9e3779b97f4a7c15ULL * ++counter;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    snprintf(out, outlen, "%016llx", (unsigned long long)z);
}

/* ---------------------------------------------------------------- lifecycle */

static void req_unlink(struct cm_req *r)
{
    struct cm_http_server *srv = r->srv;
    if (r->prev)
        r->prev->next = r->next;
    else if (srv->live == r)
        srv->live = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    if (r->counted && srv->inflight > 0)
        srv->inflight--;
    r->counted = 0;
}

static void stop_watch(struct cm_req *r)
{
    if (r->watch) {
        event_free(r->watch);
        r->watch = NULL;
    }
}

/* Bookkeeping and free; the evhttp request is no longer ours after this. */
static struct bufferevent *req_bev(const struct cm_req *r);

static void req_finish(struct cm_req *r)
{
    if (r->srv->guards && r->state != REQ_DONE)
        cm_conn_guards_busy(r->srv->guards, req_bev(r), 0);
    r->state = REQ_DONE;
    stop_watch(r);
    cm_mem_budget_release(r->reserved);
    r->reserved = 0;
    struct cm_http_server *srv = r->srv;
    double elapsed = cm_req_elapsed(r);
    if (srv->done_cb)
        srv->done_cb(r, srv->done_arg);
    if (CM_LOG_ENABLED(CM_LOG_INFO)) {
        json_t *f = json_object();
        json_object_set_new(f, "method", json_string(r->method_name));
        json_t *path = json_string(r->path);
        json_object_set_new(f, "path", path ? path : json_null());
        json_object_set_new(f, "route", json_string(cm_req_route(r)));
        json_object_set_new(f, "status", json_integer(r->status));
        json_object_set_new(f, "duration_ms", json_real((double)(long long)(elapsed * 1e6) / 1e3));
        if (r->aborted)
            json_object_set_new(f, "client_gone", json_true());
        cm_log_fields(CM_LOG_INFO, r->id, "http_request", f);
    }
    req_unlink(r);
    if (srv->dispatching == r)
        srv->dispatching = NULL;
    if (r->query_parsed)
        evhttp_clear_headers(&r->query);
    if (r->chunk)
        evbuffer_free(r->chunk);
    free(r->path);
    free(r->tail);
    free(r);
}

static void client_gone_deferred(struct cm_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    r->aborted = 1;
    r->status = 499; /* nginx's "client closed request" */
    stop_watch(r);
    if (r->abort_cb)
        r->abort_cb(r, r->abort_arg);
    req_finish(r);
    /* The request is still queued on its connection and never answered:
     * freeing the connection frees it (same path as libevent's own
     * evhttp_free). No callback of this connection is on the stack here. */
    if (evcon) {
        evhttp_connection_set_closecb(evcon, NULL, NULL);
        evhttp_connection_free(evcon);
    }
}

static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_req *r = arg;
    (void)what;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        client_gone_deferred(r);
        return;
    }
    if (n > 0) {
        /* Pipelined bytes: we cannot see EOF behind them; the upstream
         * timeouts bound the wait instead. */
        stop_watch(r);
        return;
    }
    event_add(r->watch, NULL);
}

static void start_watch(struct cm_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (!evcon || r->watch)
        return;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return;
    r->watch = event_new(r->srv->base, fd, EV_READ, watch_cb, r);
    if (r->watch)
        event_add(r->watch, NULL);
}

static void stream_close_cb(struct evhttp_connection *evcon, void *arg)
{
    struct cm_req *r = arg;
    (void)evcon;
    if (evhttp_request_get_connection(r->req) != NULL)
        return; /* evhttp_free() in progress: handled by cm_http_server_free */
    r->aborted = 1;
    if (r->abort_cb)
        r->abort_cb(r, r->abort_arg);
    /* The request was detached from its dead connection: ending it frees it. */
    evhttp_send_reply_end(r->req);
    req_finish(r);
}

/* ---------------------------------------------------------------- replies */

/* A reply handed to evhttp and not written out yet: counted in
 * srv->flushing (a graceful shutdown waits for it) until evhttp reports it
 * written (on_complete) or frees its connection first (the client left: the
 * reply is never completed, and only the close callback tells). Whichever
 * comes first ends it; on_complete removes the close callback. */
struct flush_token {
    struct cm_http_server *srv;
    struct evhttp_connection *evcon;
};

static void flush_end(struct flush_token *t)
{
    if (t->srv->flushing)
        t->srv->flushing--;
    free(t);
}

static void reply_flushed_cb(struct evhttp_request *req, void *arg)
{
    struct flush_token *t = arg;
    (void)req;
    evhttp_connection_set_closecb(t->evcon, NULL, NULL);
    flush_end(t);
}

static void flush_close_cb(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    flush_end(arg);
}

/* Write what evhttp just queued on the client connection in this loop pass.
 * evhttp only enables the bufferevent's write event, so the reply would go
 * out after the next epoll_wait, and the watch costs an epoll_ctl to add
 * EPOLLOUT and another to remove it once written. Activating the write event
 * runs libevent's own write callback (the write, evhttp's "reply sent"
 * callback, the low-watermark logic) as soon as the current callback
 * returns; when the socket takes everything, the write event is deleted in
 * the same pass, and the loop's epoll changelist (EVENT_BASE_FLAG_EPOLL_USE_
 * CHANGELIST, llm_proxy/proxy_workers.c) merges the add and the delete into
 * no epoll_ctl at all. A short write (EAGAIN, or a large body) keeps the
 * write event registered: libevent finishes it as before. */
static void write_now(struct bufferevent *bev)
{
    if (bev && evbuffer_get_length(bufferevent_get_output(bev)) &&
        event_pending(&bev->ev_write, EV_WRITE, NULL))
        event_active(&bev->ev_write, EV_WRITE, 1);
}

static void track_flush(struct cm_req *r)
{
    if (!r->counted)
        return; /* health/metrics replies do not hold a shutdown */
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (!evcon)
        return;
    struct flush_token *t = cm_xmalloc(sizeof *t);
    t->srv = r->srv;
    t->evcon = evcon;
    r->srv->flushing++;
    evhttp_connection_set_closecb(evcon, flush_close_cb, t);
    evhttp_request_set_on_complete_cb(r->req, reply_flushed_cb, t);
}

/* The one status -> reason phrase table (our replies and the rewritten
 * evhttp error pages). */
static const char *reason_phrase(int status)
{
    static const struct {
        int status;
        const char *phrase;
    } table[] = {{100, "Continue"},
                 {101, "Switching Protocols"},
                 {200, "OK"},
                 {204, "No Content"},
                 {400, "Bad Request"},
                 {401, "Unauthorized"},
                 {403, "Forbidden"},
                 {404, "Not Found"},
                 {405, "Method Not Allowed"},
                 {408, "Request Timeout"},
                 {413, "Payload Too Large"},
                 {417, "Expectation Failed"},
                 {429, "Too Many Requests"},
                 {431, "Request Header Fields Too Large"},
                 {500, "Internal Server Error"},
                 {501, "Not Implemented"},
                 {502, "Bad Gateway"},
                 {503, "Service Unavailable"},
                 {504, "Gateway Timeout"},
                 {505, "HTTP Version Not Supported"}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].status == status)
            return table[i].phrase;
    return NULL;
}

int cm_req_add_header(struct cm_req *r, const char *name, const char *value)
{
    return evhttp_add_header(evhttp_request_get_output_headers(r->req), name, value);
}

void cm_req_reply_buffer(struct cm_req *r, int status, const char *content_type,
                         struct evbuffer *buf)
{
    if (r->state != REQ_PENDING)
        return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", content_type);
    r->status = status;
    stop_watch(r);
    track_flush(r);
    struct bufferevent *bev = req_bev(r);
    evhttp_send_reply(r->req, status, reason_phrase(status), buf);
    write_now(bev);
    req_finish(r);
}

void cm_req_reply_text(struct cm_req *r, int status, const char *content_type, const char *data,
                       size_t len)
{
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, data, len);
    cm_req_reply_buffer(r, status, content_type, buf);
    evbuffer_free(buf);
}

void cm_req_reply_json(struct cm_req *r, int status, json_t *body)
{
    struct evbuffer *buf = evbuffer_new();
    cm_json_to_evbuffer(body, buf);
    evbuffer_add(buf, "\n", 1);
    json_decref(body);
    cm_req_reply_buffer(r, status, "application/json", buf);
    evbuffer_free(buf);
}

void cm_req_reply_error(struct cm_req *r, int status, const char *type, const char *message,
                        const char *param, const char *code)
{
    if (!type)
        type = cm_oai_error_type(status);
    if (status >= 500 || status == 429)
        CM_WARN(r->id, "request_error", "status=%d type=%s message=%s", status, type, message);
    if (r->route && (r->route->flags & CM_ROUTE_ANTHROPIC)) {
        cm_req_reply_json(r, status,
                          json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                                    cm_anthropic_error_type(status), "message", message));
        return;
    }
    cm_req_reply_json(r, status, cm_oai_error(message, type, param, code));
}

const char *cm_anthropic_error_type(int status)
{
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    default:
        return status >= 400 && status < 500 ? "invalid_request_error" : "api_error";
    }
}

void cm_req_on_abort(struct cm_req *r, cm_req_abort_cb cb, void *arg)
{
    r->abort_cb = cb;
    r->abort_arg = arg;
}

void cm_req_stream_start(struct cm_req *r, int status, const char *content_type)
{
    if (r->state != REQ_PENDING)
        return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", content_type);
    stop_watch(r);
    r->status = status;
    r->state = REQ_STREAMING;
    r->chunk = evbuffer_new();
    if (r->req->major == 1 && r->req->minor == 0) {
        /* HTTP/1.0 has no chunked encoding: the stream ends with the
         * connection. evhttp would answer a keep-alive client with
         * "Connection: keep-alive" and "Content-Length: 0" and then send the
         * stream as if it were the next response. */
        struct evkeyvalq *in = evhttp_request_get_input_headers(r->req);
        evhttp_remove_header(in, "Connection");
        evhttp_add_header(in, "Connection", "close");
        evhttp_remove_header(h, "Content-Length");
    }
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    evhttp_connection_set_closecb(evcon, stream_close_cb, r);
    evhttp_send_reply_start(r->req, status, reason_phrase(status));
    /* A stream may be legitimately silent on the read side for long; only a
     * write that makes no progress for the idle timeout is fatal. */
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    struct timeval wt = {(time_t)r->srv->opts.idle_timeout_s,
                         (suseconds_t)((r->srv->opts.idle_timeout_s -
                                        (double)(long long)r->srv->opts.idle_timeout_s) *
                                       1e6)};
    bufferevent_set_timeouts(bev, NULL, &wt);
}

int cm_req_streaming(const struct cm_req *r)
{
    return r->state == REQ_STREAMING;
}

static void chunk_flushed_cb(struct evhttp_connection *evcon, void *arg)
{
    struct cm_req *r = arg;
    (void)evcon;
    cm_req_drain_cb cb = r->drain_cb;
    r->drain_cb = NULL;
    if (cb)
        cb(r, r->drain_arg);
}

void cm_req_stream_write(struct cm_req *r, const char *data, size_t len)
{
    if (r->state != REQ_STREAMING || len == 0)
        return;
    evbuffer_add(r->chunk, data, len);
    evhttp_send_reply_chunk_with_cb(r->req, r->chunk, chunk_flushed_cb, r);
    write_now(req_bev(r));
}

size_t cm_req_stream_backlog(const struct cm_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (!evcon)
        return 0;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

void cm_req_stream_on_drain(struct cm_req *r, cm_req_drain_cb cb, void *arg)
{
    r->drain_cb = cb;
    r->drain_arg = arg;
}

void cm_req_stream_end(struct cm_req *r)
{
    if (r->state != REQ_STREAMING)
        return;
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (evcon) {
        evhttp_connection_set_closecb(evcon, NULL, NULL);
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        struct timeval t = {(time_t)r->srv->opts.idle_timeout_s, 0};
        bufferevent_set_timeouts(bev, &t, &t);
        track_flush(r);
    }
    /* Chunked: the last chunk is queued, nothing is freed yet. Otherwise
     * (HTTP/1.0, the stream ends with the connection) evhttp may free the
     * connection right here, and the write goes as before. */
    struct bufferevent *bev = evcon && r->req->chunked ? req_bev(r) : NULL;
    evhttp_send_reply_end(r->req);
    write_now(bev);
    req_finish(r);
}

void cm_req_stream_abort(struct cm_req *r)
{
    if (r->state != REQ_STREAMING)
        return;
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    r->aborted = 1;
    req_finish(r);
    if (evcon) {
        evhttp_connection_set_closecb(evcon, NULL, NULL);
        evhttp_connection_free(evcon); /* frees the unfinished request too */
    }
}

/* ---------------------------------------------------------------- takeover */

struct cm_upgraded *cm_req_upgrade(struct cm_req *r, const char *const *headers,
                                   cm_upgraded_cb on_server_free, void *arg,
                                   struct bufferevent **bev_out)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_remove_header(h, "Content-Type");
    for (const char *const *p = headers; p && p[0]; p += 2) {
        if (evhttp_add_header(h, p[0], p[1]) != 0) {
            cm_req_reply_error(r, 500, "server_error", "Invalid upgrade header.", NULL, NULL);
            return NULL;
        }
    }
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    struct cm_upgraded *up = cm_xcalloc(1, sizeof *up);
    struct cm_http_server *srv = r->srv;
    up->srv = srv;
    up->evcon = evcon;
    up->on_server_free = on_server_free;
    up->arg = arg;
    up->next = srv->upgraded;
    if (srv->upgraded)
        srv->upgraded->prev = up;
    srv->upgraded = up;
    srv->nupgraded++;

    stop_watch(r);
    r->status = 101;
    /* 1xx: evhttp writes no Content-Length or Transfer-Encoding. */
    evhttp_send_reply_start(r->req, 101, "Switching Protocols");
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    /* Liveness is now the caller's business (pings), not evhttp's timeouts. */
    bufferevent_set_timeouts(bev, NULL, NULL);
    *bev_out = bev;
    req_finish(r);
    if (srv->guards) { /* frames are not HTTP requests: no read deadline, no tracking */
        cm_conn_guards_busy(srv->guards, bev, 1);
        cm_conn_guards_taken_over(srv->guards, bev);
    }
    return up;
}

void cm_upgraded_close(struct cm_upgraded *up)
{
    if (!up)
        return;
    struct cm_http_server *srv = up->srv;
    if (up->prev)
        up->prev->next = up->next;
    else
        srv->upgraded = up->next;
    if (up->next)
        up->next->prev = up->prev;
    srv->nupgraded--;
    /* Frees the bufferevent and the never-finished request, closes the fd. */
    evhttp_connection_free(up->evcon);
    free(up);
}

unsigned cm_http_server_upgraded(const struct cm_http_server *srv)
{
    return srv->nupgraded;
}

/* ---------------------------------------------------------------- accessors */

const char *cm_req_id(const struct cm_req *r)
{
    return r->id;
}

const char *cm_req_route(const struct cm_req *r)
{
    return r->route ? r->route->label : "unmatched";
}

const char *cm_req_method_name(const struct cm_req *r)
{
    return r->method_name;
}

const char *cm_req_path(const struct cm_req *r)
{
    return r->path;
}

const char *cm_req_path_tail(const struct cm_req *r)
{
    return r->tail ? r->tail : "";
}

const char *cm_req_header(const struct cm_req *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

const char *cm_req_query(const struct cm_req *r, const char *name)
{
    struct cm_req *m = (struct cm_req *)r;
    if (!m->query_parsed) {
        TAILQ_INIT(&m->query);
        const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(r->req));
        if (q)
            evhttp_parse_query_str(q, &m->query);
        m->query_parsed = 1;
    }
    return evhttp_find_header(&m->query, name);
}

struct evbuffer *cm_req_body(const struct cm_req *r)
{
    return evhttp_request_get_input_buffer(r->req);
}

int cm_req_status(const struct cm_req *r)
{
    return r->status;
}

double cm_req_elapsed(const struct cm_req *r)
{
    return now_diff(&r->start);
}

void cm_req_set_data(struct cm_req *r, void *data)
{
    r->data = data;
}

void *cm_req_get_data(const struct cm_req *r)
{
    return r->data;
}

void cm_req_drop_body(struct cm_req *r)
{
    struct evbuffer *body = cm_req_body(r);
    evbuffer_drain(body, evbuffer_get_length(body));
    cm_mem_budget_release(r->reserved);
    r->reserved = 0;
}

void cm_req_count_reject(struct cm_req *r, const char *reason)
{
    count_reject(r->srv, reason);
}

void cm_req_reply_overloaded(struct cm_req *r)
{
    count_reject(r->srv, "body_budget");
    cm_req_add_header(r, "Retry-After", "1");
    cm_req_reply_error(r, 503, "service_unavailable_error",
                       "The server is at its memory limit for request data "
                       "(LLM_PROXY_MAX_BODY_MEMORY); retry shortly.",
                       NULL, "overloaded");
}

json_t *cm_req_parse_json_object(struct cm_req *r)
{
    struct evbuffer *body = cm_req_body(r);
    size_t len = evbuffer_get_length(body);
    const char *data = (const char *)evbuffer_pullup(body, -1);
    char err[200];
    if (len == 0) {
        cm_req_reply_error(r, 400, "invalid_request_error",
                           "We could not parse the JSON body of your request: the body is empty.",
                           NULL, NULL);
        return NULL;
    }
    /* The parsed form must fit next to everything else before it exists. */
    size_t est = cm_mem_budget_json_estimate(data, len);
    if (cm_mem_budget_reserve(est) != 0) {
        cm_req_reply_overloaded(r);
        return NULL;
    }
    json_t *v = cm_json_parse(data, len, err, sizeof err);
    /* From here the parsed form is counted as it is (jansson's allocator
     * hooks); the text is not needed any more: free it and its share. */
    cm_mem_budget_release(est);
    cm_req_drop_body(r);
    if (!v) {
        char msg[300];
        snprintf(msg, sizeof msg, "We could not parse the JSON body of your request: %s.", err);
        cm_req_reply_error(r, 400, "invalid_request_error", msg, NULL, NULL);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        cm_req_reply_error(r, 400, "invalid_request_error",
                           "The request body must be a JSON object.", NULL, NULL);
        return NULL;
    }
    return v;
}

/* ---------------------------------------------------------------- dispatch */

/* Constant-time check of a key against the configured one (1 = match). */
static int key_ok(const struct cm_http_server *srv, const char *key)
{
    if (!srv->has_api_key)
        return 1;
    if (!key)
        return 0;
    /* Hash first so the comparison time depends on neither key's length. */
    unsigned char h[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)key, strlen(key), h);
    return CRYPTO_memcmp(h, srv->api_key_hash, sizeof h) == 0;
}

/* The one API-key check (see cm_http_server.h for where the key may come
 * from). Returns 0 when the key matches. */
static int check_api_key(struct cm_http_server *srv, struct cm_req *r, unsigned flags,
                         int *sent_key)
{
    const char *auth = cm_req_header(r, "Authorization");
    const char *key = NULL;
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        key = auth + 7;
        while (*key == ' ')
            key++;
    } else if (flags & CM_ROUTE_AUTH_XKEY) {
        key = cm_req_header(r, "x-api-key");
    } else if (flags & CM_ROUTE_AUTH_QUERY) {
        key = cm_req_query(r, "api_key");
    }
    *sent_key = key && *key != '\0';
    return *sent_key && key_ok(srv, key) ? 0 : -1;
}

/* 1 when the request's Origin may reach this route (see cm_http_server.h). */
static int origin_ok(struct cm_http_server *srv, struct cm_req *r, enum evhttp_cmd_type cmd,
                     unsigned flags)
{
    if (!srv->opts.origins)
        return 1;
    int safe = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD || cmd == EVHTTP_REQ_OPTIONS;
    if (safe && !(flags & CM_ROUTE_STRICT_ORIGIN))
        return 1;
    return cm_origin_allowed(srv->opts.origins, cm_req_header(r, "Origin"),
                             cm_req_header(r, "Host"));
}

/* CORS (cm_cors.h), only when an origin policy is configured. Answers a
 * preflight to a known path (204, or 403 for a refused Origin) and returns
 * 1; otherwise adds the response headers for an allowed Origin and returns
 * 0. */
static int cors_request(struct cm_http_server *srv, struct cm_req *r, enum evhttp_cmd_type cmd,
                        const struct route *path_route, const char *allow)
{
    const char *origin = cm_req_header(r, "Origin");
    if (!srv->opts.origins || !origin)
        return 0;
    int ok = cm_origin_allowed(srv->opts.origins, origin, cm_req_header(r, "Host"));
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    if (cmd == EVHTTP_REQ_OPTIONS && path_route &&
        cm_req_header(r, "Access-Control-Request-Method")) {
        r->route = path_route;
        if (!ok) {
            count_reject(srv, "origin");
            cm_req_reply_error(r, 403, "invalid_request_error",
                               "Requests from this Origin are not allowed (see "
                               "LLM_PROXY_ALLOWED_ORIGINS).",
                               NULL, "origin_not_allowed");
            return 1;
        }
        char methods[80];
        snprintf(methods, sizeof methods, "%s, OPTIONS", allow);
        cm_cors_preflight_headers(out, origin, methods,
                                  cm_req_header(r, "Access-Control-Request-Headers"));
        struct evbuffer *empty = evbuffer_new();
        cm_req_reply_buffer(r, 204, "text/plain", empty);
        evbuffer_free(empty);
        return 1;
    }
    if (ok)
        cm_cors_response_headers(out, origin);
    return 0;
}

static void gencb(struct evhttp_request *req, void *arg)
{
    struct cm_http_server *srv = arg;
    struct cm_req *r = cm_xcalloc(1, sizeof *r);
    r->srv = srv;
    r->req = req;
    r->state = REQ_PENDING;
    r->status = 0;
    clock_gettime(CLOCK_MONOTONIC, &r->start);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    r->method_name = method_name(cmd);

    if (srv->guards)
        cm_conn_guards_busy(srv->guards, req_bev(r), 1);
    const char *rid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
    if (rid && valid_request_id(rid))
        snprintf(r->id, sizeof r->id, "%s", rid);
    else
        generate_request_id(r->id, sizeof r->id);
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Request-Id", r->id);

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    r->path = cm_xstrdup(path && *path ? path : "/");

    r->next = srv->live;
    if (srv->live)
        srv->live->prev = r;
    srv->live = r;

    const char *fcode;
    char fmsg[160];
    if (cm_http_framing_check(evhttp_request_get_input_headers(req),
                              cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD,
                              req->major == 1 && req->minor == 0, &fcode, fmsg, sizeof fmsg) != 0) {
        /* Whatever follows on this connection cannot be trusted: close. */
        count_reject(srv, "malformed");
        cm_req_add_header(r, "Connection", "close");
        cm_req_reply_error(r, 400, "invalid_request_error", fmsg, NULL, fcode);
        return;
    }

    unsigned bit = method_bit(cmd);
    const struct route *match = NULL, *path_route = NULL;
    unsigned allowed = 0;
    for (const struct route *rt = srv->routes; rt; rt = rt->next) {
        int ok = (rt->flags & CM_ROUTE_PREFIX)
                     ? strncmp(r->path, rt->path, rt->path_len) == 0 && r->path[rt->path_len]
                     : strcmp(r->path, rt->path) == 0;
        if (!ok)
            continue;
        if (!path_route)
            path_route = rt;
        unsigned methods = rt->methods | ((rt->methods & CM_GET) ? CM_HEAD : 0);
        allowed |= methods;
        if (methods & bit) {
            match = rt;
            break;
        }
    }
    char allow[64] = "";
    size_t used = 0;
    static const char *const names[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"};
    for (unsigned i = 0; i < 7; i++)
        if (allowed & (1u << i))
            used += (size_t)snprintf(allow + used, sizeof allow - used, "%s%s", used ? ", " : "",
                                     names[i]);
    if (cors_request(srv, r, cmd, path_route, allow))
        return;
    if (!match) {
        char msg[400];
        if (path_route) {
            cm_req_add_header(r, "Allow", allow);
            snprintf(msg, sizeof msg, "Method %s is not allowed for %.200s. Allowed: %s.",
                     r->method_name, r->path, allow);
            cm_req_reply_error(r, 405, "invalid_request_error", msg, NULL, "method_not_allowed");
        } else {
            snprintf(msg, sizeof msg, "Unknown request URL: %s %.200s.", r->method_name, r->path);
            cm_req_reply_error(r, 404, "invalid_request_error", msg, NULL, "unknown_url");
        }
        return;
    }
    r->route = match;
    if (match->flags & CM_ROUTE_PREFIX) {
        char *dec = evhttp_uridecode(r->path + match->path_len, 0, NULL);
        r->tail = dec ? cm_xstrdup(dec) : cm_xstrdup("");
        free(dec);
    }
    if (srv->draining && !(match->flags & CM_ROUTE_DRAIN_OK)) {
        count_reject(srv, "shutting_down");
        cm_req_add_header(r, "Connection", "close");
        cm_req_add_header(r, "Retry-After", "1");
        cm_req_reply_error(r, 503, "service_unavailable_error",
                           "The server is shutting down; retry on another instance.", NULL,
                           "shutting_down");
        return;
    }
    if (!origin_ok(srv, r, cmd, match->flags)) {
        count_reject(srv, "origin");
        cm_req_reply_error(r, 403, "invalid_request_error",
                           "Requests from this Origin are not allowed (see "
                           "LLM_PROXY_ALLOWED_ORIGINS).",
                           NULL, "origin_not_allowed");
        return;
    }
    if ((match->flags & CM_ROUTE_AUTH) && srv->has_api_key) {
        int sent_key;
        if (check_api_key(srv, r, match->flags, &sent_key) != 0) {
            count_reject(srv, "auth");
            cm_req_add_header(r, "WWW-Authenticate", "Bearer");
            if (sent_key)
                cm_req_reply_error(r, 401, "invalid_request_error", "Incorrect API key provided.",
                                   NULL, "invalid_api_key");
            else
                cm_req_reply_error(r, 401, "invalid_request_error",
                                   "You didn't provide an API key. You need to provide your API "
                                   "key in an Authorization header using Bearer auth (i.e. "
                                   "Authorization: Bearer YOUR_KEY).",
                                   NULL, NULL);
            return;
        }
    }
    size_t body_len = evbuffer_get_length(evhttp_request_get_input_buffer(req));
    if (body_len) {
        if (cm_mem_budget_reserve(body_len) != 0) {
            cm_req_reply_overloaded(r);
            return;
        }
        r->reserved = body_len;
    }
    if (!(match->flags & CM_ROUTE_DRAIN_OK)) {
        r->counted = 1;
        srv->inflight++;
    }
    srv->dispatching = r;
    match->cb(r, match->arg);
    /* The handler may have replied (and so freed r); if not, watch the
     * client while the reply is deferred. */
    if (srv->dispatching == r && r->state == REQ_PENDING)
        start_watch(r);
    srv->dispatching = NULL;
}

/* ---------------------------------------------------------------- evhttp's own errors */

/*
 * evhttp 2.1 answers some failures itself, before any callback of ours runs:
 * a body over evhttp_set_max_body_size() (413), headers over the header limit
 * (413) and unparsable requests (400), always with evhttp_send_error()'s fixed
 * HTML page and Connection: close. libevent 2.2 added evhttp_set_errorcb()
 * for this; 2.1 has no hook. So each connection's output buffer gets a
 * callback that recognises exactly that page (the only text/html this server
 * ever sends) when it is the whole pending output, and swaps it for the same
 * status with an OpenAI error body.
 */
static const char EVHTTP_PAGE_END[] = "</BODY></HTML>\n";

static void rewrite_error_page(struct cm_http_server *srv, struct evbuffer *out,
                               const struct evbuffer_cb_info *info,
                               const struct cm_http_refusal *refused)
{
    size_t len = evbuffer_get_length(out);
    size_t end_len = sizeof EVHTTP_PAGE_END - 1;
    if (info->n_added < end_len || len < 40 || len > 2048)
        return;
    /* Cheap test first (this runs on every write): does the output end with
     * the page's last line? evbuffer_copyout() refuses a buffer whose start
     * is frozen (a socket bufferevent's output may be): peek instead. */
    struct evbuffer_ptr tail;
    if (evbuffer_ptr_set(out, &tail, len - end_len, EVBUFFER_PTR_SET) != 0)
        return;
    struct evbuffer_iovec tv[2];
    int ntv = evbuffer_peek(out, (ev_ssize_t)end_len, &tail, tv, 2);
    char last[sizeof EVHTTP_PAGE_END];
    size_t have = 0;
    for (int i = 0; i < ntv && i < 2 && have < end_len; i++) {
        size_t n = tv[i].iov_len < end_len - have ? tv[i].iov_len : end_len - have;
        memcpy(last + have, tv[i].iov_base, n);
        have += n;
    }
    if (have != end_len || memcmp(last, EVHTTP_PAGE_END, end_len) != 0)
        return;
    char buf[2049];
    struct evbuffer_iovec vec[8];
    int nvec = evbuffer_peek(out, -1, NULL, vec, 8);
    size_t got = 0;
    for (int i = 0; i < nvec && i < 8; i++) {
        size_t n = vec[i].iov_len < len - got ? vec[i].iov_len : len - got;
        memcpy(buf + got, vec[i].iov_base, n);
        got += n;
    }
    if (got != len)
        return;
    buf[len] = '\0';
    int major, minor, status;
    if (memcmp(buf + len - end_len, EVHTTP_PAGE_END, end_len) != 0 ||
        sscanf(buf, "HTTP/%d.%d %d ", &major, &minor, &status) != 3 ||
        !strstr(buf, "\r\nContent-Type: text/html\r\n"))
        return;
    char msg[300];
    const char *code;
    const char *extra = "";
    if (refused) { /* the tracker made evhttp refuse it: say why */
        status = refused->status;
        code = refused->code;
        snprintf(msg, sizeof msg, "%s", refused->message);
        if (status == 503) {
            count_reject(srv, "body_budget");
            extra = "Retry-After: 1\r\n";
        } else {
            count_reject(srv, "malformed");
        }
    } else if (status == 413) {
        count_reject(srv, "too_large");
        snprintf(msg, sizeof msg,
                 "The request is too large: the body may be at most %lld bytes and the request "
                 "line and headers at most %lld bytes.",
                 srv->opts.max_body_bytes, srv->opts.max_header_bytes);
        code = "request_too_large";
    } else if (status == 417) {
        count_reject(srv, "malformed");
        snprintf(msg, sizeof msg, "The only expectation supported is \"100-continue\".");
        code = "expectation_failed";
    } else if (status == 501) {
        count_reject(srv, "malformed");
        snprintf(msg, sizeof msg, "The request method is not supported.");
        code = "method_not_supported";
    } else {
        count_reject(srv, "malformed");
        snprintf(msg, sizeof msg, "The HTTP request could not be parsed (status %d).", status);
        code = "malformed_request";
    }
    json_t *body = cm_oai_error(msg, cm_oai_error_type(status), NULL, code);
    char *text = cm_json_dumps(body);
    json_decref(body);
    const char *phrase = reason_phrase(status);
    /* Replace the page; unfreeze the start for that if it is frozen. */
    int frozen = evbuffer_drain(out, len) != 0; /* re-enters with n_added == 0 */
    if (frozen) {
        evbuffer_unfreeze(out, 1);
        evbuffer_drain(out, len);
    }
    evbuffer_add_printf(out,
                        "HTTP/%d.%d %d %s\r\nContent-Type: application/json\r\n%s"
                        "Connection: close\r\nContent-Length: %zu\r\n\r\n%s\n",
                        major, minor, status, phrase ? phrase : "Error", extra, strlen(text) + 1,
                        text);
    if (frozen)
        evbuffer_freeze(out, 1);
    free(text);
}

static void rewrite_error_page_cb(struct evbuffer *out, const struct evbuffer_cb_info *info,
                                  void *arg)
{
    rewrite_error_page(arg, out, info, NULL);
}

static void rewrite_refused_page_cb(struct evbuffer *out, const struct evbuffer_cb_info *info,
                                    const struct cm_http_refusal *refused, void *arg)
{
    rewrite_error_page(arg, out, info, refused);
}

static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    struct cm_http_server *srv = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev) {
        if (srv->guards) /* the guard passes on its tracker's refusal */
            cm_conn_guards_add(srv->guards, bev);
        else
            evbuffer_add_cb(bufferevent_get_output(bev), rewrite_error_page_cb, arg);
    }
    return bev;
}

static struct bufferevent *req_bev(const struct cm_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    return evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
}

/* ---------------------------------------------------------------- server */

struct cm_http_server *cm_http_server_new(struct event_base *base,
                                          const struct cm_http_server_opts *opts)
{
    struct cm_http_server *srv = cm_xcalloc(1, sizeof *srv);
    srv->base = base;
    srv->opts = *opts;
    srv->host = cm_xstrdup(opts->host ? opts->host : "127.0.0.1");
    srv->opts.host = srv->host;
    srv->routes_tail = &srv->routes;
    if (opts->api_key && *opts->api_key) {
        SHA256((const unsigned char *)opts->api_key, strlen(opts->api_key), srv->api_key_hash);
        srv->has_api_key = 1;
    }
    srv->opts.api_key = NULL;
    srv->http = evhttp_new(base);
    if (!srv->http) {
        free(srv->host);
        free(srv);
        return NULL;
    }
    evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    if (opts->max_body_bytes > 0)
        evhttp_set_max_body_size(srv->http, opts->max_body_bytes);
    if (opts->max_header_bytes > 0)
        evhttp_set_max_headers_size(srv->http, opts->max_header_bytes);
    if (opts->idle_timeout_s > 0) {
        struct timeval tv = {
            (time_t)opts->idle_timeout_s,
            (suseconds_t)((opts->idle_timeout_s - (double)(long long)opts->idle_timeout_s) * 1e6)};
        evhttp_set_timeout_tv(srv->http, &tv);
    }
    /* No EVHTTP_SERVER_LINGERING_CLOSE: with it, evhttp answers a body over
     * the limit only after reading (and dropping) all of it, and never when
     * the client waits for "100 Continue". Without it the 413 goes out as
     * soon as the head announces too much; the connection guard then
     * lingers (reads and drops input a while) so the client's unsent body
     * does not turn the close into a reset that destroys the 413. */
    evhttp_set_default_content_type(srv->http, "application/json");
    evhttp_set_gencb(srv->http, gencb, srv);
    evhttp_set_bevcb(srv->http, make_bev, srv);
    struct cm_conn_cap *cap = opts->conn_cap;
    if (!cap && opts->max_connections)
        cap = srv->own_cap = cm_conn_cap_new(opts->max_connections);
    if (cap || opts->request_read_timeout_s > 0) {
        srv->guards = cm_conn_guards_new(
            base, cap, opts->request_read_timeout_s > 0 ? opts->request_read_timeout_s : 1e9,
            opts->max_body_bytes);
        cm_conn_guards_on_output(srv->guards, rewrite_refused_page_cb, srv);
    }
    return srv;
}

void cm_http_server_route(struct cm_http_server *srv, unsigned methods, const char *path,
                          unsigned flags, const char *label, cm_route_cb cb, void *arg)
{
    struct route *rt = cm_xcalloc(1, sizeof *rt);
    rt->methods = methods;
    rt->flags = flags;
    rt->path = cm_xstrdup(path);
    rt->path_len = strlen(path);
    rt->label = cm_xstrdup(label);
    rt->cb = cb;
    rt->arg = arg;
    *srv->routes_tail = rt;
    srv->routes_tail = &rt->next;
}

void cm_http_server_on_done(struct cm_http_server *srv, cm_req_done_cb cb, void *arg)
{
    srv->done_cb = cb;
    srv->done_arg = arg;
}

void cm_http_server_on_reject(struct cm_http_server *srv, cm_reject_cb cb, void *arg)
{
    srv->reject_cb = cb;
    srv->reject_arg = arg;
}

void cm_http_server_count_reject(struct cm_http_server *srv, const char *reason)
{
    count_reject(srv, reason);
}

/* A listening socket on host:port with SO_REUSEPORT (several workers, one
 * port: the kernel spreads the connections over their sockets). With
 * exclusive set the port is first bound without SO_REUSEPORT and released,
 * so that a port already used by anyone (another llm_proxy included) is
 * refused as without SO_REUSEPORT, instead of silently shared. Returns the
 * socket or -1 (errno set). */
static evutil_socket_t listen_reuseport(const char *host, int port, int exclusive)
{
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC,
                                    .ai_socktype = SOCK_STREAM,
                                    .ai_protocol = IPPROTO_TCP,
                                    .ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_ADDRCONFIG};
    struct evutil_addrinfo *ai = NULL;
    if (evutil_getaddrinfo(host, service, &hints, &ai) != 0 || !ai) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    int one = 1, e = 0;
    evutil_socket_t fd = -1;
    if (exclusive && port != 0) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) != 0)
                e = errno;
            close(fd);
        }
        if (e) {
            evutil_freeaddrinfo(ai);
            errno = e;
            return -1;
        }
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) != 0 || listen(fd, 511) != 0) {
        e = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
        errno = e;
    }
    evutil_freeaddrinfo(ai);
    return fd;
}

int cm_http_server_start(struct cm_http_server *srv, char *err, size_t errlen)
{
    if (srv->opts.listen == CM_LISTEN_EXCLUSIVE) {
        srv->bound =
            evhttp_bind_socket_with_handle(srv->http, srv->host, (ev_uint16_t)srv->opts.port);
    } else {
        evutil_socket_t lfd = listen_reuseport(srv->host, srv->opts.port,
                                               srv->opts.listen == CM_LISTEN_REUSEPORT_FIRST);
        srv->bound = lfd >= 0 ? evhttp_accept_socket_with_handle(srv->http, lfd) : NULL;
        if (lfd >= 0 && !srv->bound)
            close(lfd);
    }
    if (!srv->bound) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", srv->host, srv->opts.port,
                 strerror(errno));
        return -1;
    }
    if (srv->guards)
        cm_conn_guards_set_listener(srv->guards, evhttp_bound_socket_get_listener(srv->bound));
    evutil_socket_t fd = evhttp_bound_socket_get_fd(srv->bound);
    /* Accepted sockets inherit TCP_NODELAY from the listener on Linux. evhttp
     * never sets it, and with Nagle a response of a few segments waits for
     * the peer's delayed ACK (~40 ms) before its last partial segment. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    srv->port = srv->opts.port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            srv->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return 0;
}

void cm_http_server_set_port(struct cm_http_server *srv, int port)
{
    srv->opts.port = port;
}

int cm_http_server_port(const struct cm_http_server *srv)
{
    return srv->port;
}

int cm_http_server_write_port_file(const struct cm_http_server *srv, const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", srv->port);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

void cm_http_server_drain(struct cm_http_server *srv)
{
    if (srv->draining)
        return;
    /* The listener stays open so /ready can answer 503 and new work gets a
     * clean 503 with Connection: close instead of a refused connection. */
    srv->draining = 1;
}

int cm_http_server_draining(const struct cm_http_server *srv)
{
    return srv->draining;
}

unsigned cm_http_server_inflight(const struct cm_http_server *srv)
{
    /* A reply still being written counts: closing now would cut it. (If its
     * client vanishes mid-write the count stays until SHUTDOWN_GRACE.) */
    return srv->inflight + srv->flushing;
}

void cm_http_server_free(struct cm_http_server *srv)
{
    if (!srv)
        return;
    /* Taken-over connections first: evhttp_free() would free them under
     * their owners. */
    while (srv->upgraded) {
        struct cm_upgraded *up = srv->upgraded;
        if (up->on_server_free)
            up->on_server_free(up, up->arg);
        if (srv->upgraded == up) /* the owner did not close it */
            cm_upgraded_close(up);
    }
    while (srv->live) {
        struct cm_req *r = srv->live;
        struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
        if (evcon)
            evhttp_connection_set_closecb(evcon, NULL, NULL);
        r->aborted = 1;
        if (r->status == 0)
            r->status = 499;
        if (r->abort_cb)
            r->abort_cb(r, r->abort_arg);
        if (srv->live == r) /* the callback did not finish it */
            req_finish(r);
    }
    evhttp_free(srv->http);
    cm_conn_guards_free(srv->guards); /* after evhttp let go of every connection */
    cm_conn_cap_free(srv->own_cap);
    struct route *rt = srv->routes;
    while (rt) {
        struct route *n = rt->next;
        free(rt->path);
        free(rt->label);
        free(rt);
        rt = n;
    }
    free(srv->host);
    free(srv);
}

int cm_req_peer_is_loopback(const struct cm_req *r)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(r->req);
    const struct sockaddr *sa = conn ? evhttp_connection_get_addr(conn) : NULL;
    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

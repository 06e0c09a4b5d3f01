/*
 * cm_http_client: asynchronous HTTP client on libcurl's multi_socket
 * interface, driven by a libevent event_base (curl docs/examples/hiperfifo.c
 * shows the pattern).
 *
 * One struct cm_hc per event loop, kept for the life of the process: its
 * connection cache gives keep-alive reuse to the upstream. Each transfer is a
 * struct cm_hc_req with its own timeouts:
 *   connect    CURLOPT_CONNECTTIMEOUT (unreachable -> CM_HC_ERR_CONNECT)
 *   total      the whole transfer (unary calls)
 *   first byte until the response headers arrive
 *   idle       longest gap between two body pieces (streams); not counted
 *              while the transfer is paused by the consumer
 *
 * Callbacks run on the loop thread. on_done runs exactly once per transfer
 * unless the transfer was cancelled, always from a libevent callback (never
 * from inside curl), and the cm_hc_req is freed right after it returns.
 * cm_hc_cancel() may be called from any of the callbacks, including on_data
 * and on_headers; no callback runs after it.
 *
 * Ownership: opts strings are copied by cm_hc_start() (the body unless
 * opts.body_given hands it over). The body evbuffer
 * passed to on_done is borrowed (valid during the callback).
 */
#ifndef CM_HTTP_CLIENT_H
#define CM_HTTP_CLIENT_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct cm_hc;
struct cm_hc_req;

enum cm_hc_result {
    CM_HC_OK = 0,
    CM_HC_ERR_CONNECT,       /* could not connect / resolve / connect timeout */
    CM_HC_ERR_TIMEOUT,       /* total, first-byte or idle timeout */
    CM_HC_ERR_TOO_LARGE,     /* buffered response over max_response_bytes */
    CM_HC_ERR_IO,            /* connection failed after it was established */
    CM_HC_ERR_QUEUE_TIMEOUT, /* waited longer than the queue timeout for a slot */
};

/* Return values of on_data. */
enum { CM_HC_CONSUMED = 0, CM_HC_PAUSE = 1, CM_HC_ABORT = -1 };

struct cm_hc_opts {
    const char *method;       /* "GET", "POST" */
    const char *url;          /* absolute */
    const char *body;         /* may be NULL */
    size_t body_len;          /* copied, unless body_given */
    int body_given;           /* 1: body was malloc'd by the caller and now belongs to
                                 the client (sent without a copy, freed when the
                                 transfer ends or cm_hc_start fails) */
    const char *request_id;   /* sent as X-Request-Id when non-NULL */
    const char *bearer;       /* sent as Authorization: Bearer when non-NULL */
    double connect_timeout_s; /* 0 = curl default */
    double total_timeout_s;   /* 0 = none */
    double first_byte_timeout_s;
    double idle_timeout_s;
    size_t max_response_bytes; /* buffered bodies (and error bodies); 0 = 64 MiB */
    int stream;                /* 1: 2xx body goes to on_data; else buffered */
};

struct cm_hc_callbacks {
    /* Response headers complete (final status). Optional. */
    void (*on_headers)(struct cm_hc_req *req, long status, void *arg);
    /* Streaming mode, 2xx only: a piece of body. Return CM_HC_CONSUMED,
     * CM_HC_PAUSE (the same bytes are delivered again after cm_hc_resume()),
     * or CM_HC_ABORT. */
    int (*on_data)(struct cm_hc_req *req, const char *data, size_t len, void *arg);
    /* Transfer finished. body: the buffered body (non-stream mode, or any
     * non-2xx response); errmsg: curl's text when result != CM_HC_OK. */
    void (*on_done)(struct cm_hc_req *req, enum cm_hc_result result, long status,
                    struct evbuffer *body, const char *errmsg, void *arg);
};

struct cm_hc *cm_hc_new(struct event_base *base);
/* Cancels every transfer still running (no callbacks) and frees. */
void cm_hc_free(struct cm_hc *hc);

/*
 * Concurrency cap: at most max_running transfers run at once (0 = no cap);
 * up to max_queued more wait in FIFO order for at most queue_timeout_s
 * (then on_done reports CM_HC_ERR_QUEUE_TIMEOUT). Beyond that
 * cm_hc_start() refuses (returns NULL and cm_hc_refused() is true), so
 * memory stays bounded under overload.
 */
void cm_hc_set_limits(struct cm_hc *hc, unsigned max_running, unsigned max_queued,
                      double queue_timeout_s);
int cm_hc_refused(const struct cm_hc *hc);
unsigned cm_hc_queued(const struct cm_hc *hc);

/* Starts (or queues) a transfer; NULL when the queue is full
 * (cm_hc_refused), a header value is unsafe (cm_hc_header_value_ok, logged)
 * or curl refused the handle (logged). Header values are sent whole, never
 * truncated. */
struct cm_hc_req *cm_hc_start(struct cm_hc *hc, const struct cm_hc_opts *opts,
                              const struct cm_hc_callbacks *cbs, void *arg);
void cm_hc_cancel(struct cm_hc_req *req);
/* Like cm_hc_cancel() (no callback runs after it), for a streaming transfer
 * whose caller has everything it needs (a stream's final line) while the
 * response has not quite ended (the chunked terminator): the transfer is
 * left to end on its own, the bytes that follow are dropped, so that its
 * connection stays open for reuse. If the response does not end within 1 s
 * (or the idle timeout if shorter) and 64 KiB, the connection is closed.
 * Transfers that cannot end by themselves (paused, not streaming, no
 * headers yet) are cancelled. */
void cm_hc_release(struct cm_hc_req *req);
/* 1 when v may be sent as a header value: no CR, LF (or NUL: a C string
 * ends there, so a caller holding a length must check it has no NUL). */
int cm_hc_header_value_ok(const char *v);
/* Resumes a paused transfer; on_data may run before this returns. */
void cm_hc_resume(struct cm_hc_req *req);
/* A response header seen on this transfer (Retry-After only), or NULL. */
const char *cm_hc_retry_after(const struct cm_hc_req *req);
/* Transfers currently running. */
unsigned cm_hc_active(const struct cm_hc *hc);

const char *cm_hc_result_name(enum cm_hc_result r);

#endif

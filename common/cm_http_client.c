/* cm_http_client: curl multi_socket on libevent (see cm_http_client.h). */
#include "cm_http_client.h"

#include "cm_alloc.h"
#include "cm_log.h"

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEFAULT_MAX_RESPONSE (64u * 1024 * 1024)
#define ERROR_BODY_MAX (256u * 1024)

#define EASY_POOL_MAX 64

/* A released transfer (cm_hc_release) may take this long and this many more
 * bytes to end; past either its connection is closed instead. */
#define RELEASE_GRACE_S 1.0
#define RELEASE_MAX_BYTES (64u * 1024)

struct cm_hc {
    struct event_base *base;
    CURLM *multi;
    CURL *pool[EASY_POOL_MAX]; /* reset easy handles ready for reuse */
    unsigned npool;
    struct event *timer;
    struct event *kick;     /* curl's zero timeout (see kick_cb) */
    struct timeval kick_at; /* loop time of the last kick... */
    unsigned kicks;         /* ...and how many ran at that time */
    struct cm_hc_req *reqs; /* doubly linked list of running transfers */
    unsigned active;        /* transfers started and not finished (running + queued) */
    unsigned running;       /* transfers added to curl */
    unsigned max_running;   /* 0 = no limit */
    unsigned max_queued;
    double queue_timeout_s;
    struct cm_hc_req *qhead, *qtail; /* FIFO of transfers waiting for a slot */
    unsigned nqueued;
    struct event *pump;      /* starts queued transfers from a clean stack */
    int refused;             /* the last cm_hc_start() found the queue full */
    int running_frozen;      /* being freed: do not start queued transfers */
    int in_curl;             /* inside curl_multi_socket_action: curl is not re-entrant */
    long timer_ms;           /* the curl timeout armed on timer (-1: none) */
    struct timeval timer_at; /* when it was armed (loop's cached time) */
    /* Upstream connection sockets this client opened (CURLOPT_OPENSOCKETFUNCTION),
     * indexed by fd. Their struct event stays registered while curl keeps the
     * connection idle in its cache, so a reused connection costs no
     * epoll_ctl; freed when curl closes the socket (CLOSESOCKETFUNCTION), or
     * when its number is reused if curl closed it without that callback. */
    struct sock_ctx **socks;
    int nsocks;
};

#define RID_HDR_MAX 128 /* "X-Request-Id: " + the id (ids are short) */

struct cm_hc_req {
    struct cm_hc *hc;
    CURL *easy;
    /* Request headers: nodes owned by this struct (no allocation), the
     * strings constant or in rid_hdr; only a Bearer header is malloc'd. */
    struct curl_slist hnodes[4];
    char rid_hdr[RID_HDR_MAX];
    char *rid_heap; /* an X-Request-Id header too long for rid_hdr */
    char *bearer_hdr;
    char *body_given; /* the request body, handed over (opts.body_given) */
    struct cm_hc_callbacks cbs;
    void *arg;
    struct evbuffer *body;
    size_t max_body;
    int stream;
    long status;
    int headers_done;
    int in_callback;
    int cancelled;
    int released; /* cm_hc_release: no callbacks, the rest is read and dropped */
    size_t dropped;
    int paused;
    int too_large;
    int timed_out;
    int connected; /* a connection (new or reused) was ready for the request */
    int queued;    /* waiting in hc's FIFO, not yet added to curl */
    int added;     /* added to curl's multi handle */
    double first_byte_timeout_s;
    struct event *queue_timer;
    struct cm_hc_req *qnext, *qprev;
    double idle_timeout_s;
    struct event *first_byte_timer;
    struct event *idle_timer;
    char *retry_after;
    char errbuf[CURL_ERROR_SIZE];
    struct cm_hc_req *prev, *next;
};

/*
 * Socket watch state (one per socket curl asked to watch):
 *   armed   sc->kind != 0, curl wants it (sc->what != 0): events go to curl
 *   parked  curl released it (CURL_POLL_REMOVE) but the connection stays in
 *           its cache: the read watch is kept (no epoll_ctl); if it fires
 *           (the upstream closed the idle connection) it is dropped
 *   idle    no watch; armed again when curl reuses the connection
 * Only connected sockets in hc->socks (opened by open_socket_cb, and once
 * read from: curl asked for CURL_POLL_IN) are ever parked. Any other socket
 * is disarmed on CURL_POLL_REMOVE: curl may close it without close_socket_cb
 * (a failed connect), and a watch left on a closed descriptor would act on
 * whatever socket reuses the number, possibly another worker's. An entry
 * left behind that way is freed when its slot is reused (open_socket_cb).
 */
struct sock_ctx {
    struct cm_hc *hc;
    struct event *ev;
    curl_socket_t fd;
    int what;      /* CURL_POLL_* curl asked for; 0 = parked or idle */
    short kind;    /* EV_READ|EV_WRITE currently registered; 0 = none */
    int owned;     /* in hc->socks: closed only through close_socket_cb */
    int connected; /* curl has read from it (asked for CURL_POLL_IN) */
};

static void check_multi_info(struct cm_hc *hc);

static struct timeval tv_from_s(double s)
{
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

const char *cm_hc_result_name(enum cm_hc_result r)
{
    switch (r) {
    case CM_HC_OK:
        return "ok";
    case CM_HC_ERR_CONNECT:
        return "connect";
    case CM_HC_ERR_TIMEOUT:
        return "timeout";
    case CM_HC_ERR_TOO_LARGE:
        return "too_large";
    case CM_HC_ERR_IO:
        return "io";
    case CM_HC_ERR_QUEUE_TIMEOUT:
        return "queue_timeout";
    }
    return "unknown";
}

/* ------------------------------------------------------------ curl glue */

static void socket_action(struct cm_hc *hc, curl_socket_t fd, int action)
{
    int running;
    hc->in_curl++;
    curl_multi_socket_action(hc->multi, fd, action, &running);
    hc->in_curl--;
}

static void sock_disarm(struct sock_ctx *sc)
{
    if (sc->kind)
        event_del(sc->ev);
    sc->kind = 0;
}

static void event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sock_ctx *sc = arg;
    struct cm_hc *hc = sc->hc;
    if (!sc->what) {
        /* Parked: the upstream closed (or wrote on) an idle connection.
         * Stop watching; curl finds it dead when it next looks at it. */
        sock_disarm(sc);
        return;
    }
    int action =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    socket_action(hc, fd, action);
    check_multi_info(hc);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_hc *hc = arg;
    (void)fd;
    (void)what;
    hc->timer_ms = -1;
    socket_action(hc, CURL_SOCKET_TIMEOUT, 0);
    check_multi_info(hc);
}

/* curl asked for an action "now": run it later in this same loop iteration
 * (libevent runs events activated while it processes the active queue),
 * with a clean stack and without a zero-timeout epoll_wait. */
static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_hc *hc = arg;
    (void)fd;
    (void)what;
    socket_action(hc, CURL_SOCKET_TIMEOUT, 0);
    check_multi_info(hc);
}

static int multi_timer_cb(CURLM *multi, long timeout_ms, void *arg)
{
    struct cm_hc *hc = arg;
    (void)multi;
    if (timeout_ms == 0) {
        /* A few per loop pass; should curl keep asking for "now", the
         * zero timer below lets epoll run in between (no starvation). */
        struct timeval now;
        event_base_gettimeofday_cached(hc->base, &now);
        if (now.tv_sec != hc->kick_at.tv_sec || now.tv_usec != hc->kick_at.tv_usec) {
            hc->kick_at = now;
            hc->kicks = 0;
        }
        if (hc->kicks++ < 64) {
            event_active(hc->kick, EV_TIMEOUT, 1);
            return 0;
        }
    }
    if (timeout_ms < 0) {
        if (hc->timer_ms >= 0)
            evtimer_del(hc->timer);
        hc->timer_ms = -1;
        return 0;
    }
    /* The same deadline again (curl re-announces it on every action):
     * leave the armed timer alone. */
    struct timeval now;
    event_base_gettimeofday_cached(hc->base, &now);
    if (hc->timer_ms == timeout_ms && hc->timer_at.tv_sec == now.tv_sec &&
        hc->timer_at.tv_usec == now.tv_usec)
        return 0;
    /* Never call curl from here (recursion): arm the timer instead. */
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(hc->timer, &tv);
    hc->timer_ms = timeout_ms;
    hc->timer_at = now;
    return 0;
}

static void sock_free(struct cm_hc *hc, struct sock_ctx *sc)
{
    if (sc->owned && sc->fd >= 0 && sc->fd < hc->nsocks && hc->socks[sc->fd] == sc)
        hc->socks[sc->fd] = NULL;
    event_free(sc->ev);
    free(sc);
}

static struct sock_ctx *sock_new(struct cm_hc *hc, curl_socket_t s)
{
    struct sock_ctx *sc = cm_xcalloc(1, sizeof *sc);
    sc->hc = hc;
    sc->fd = s;
    sc->ev = event_new(hc->base, s, 0, event_cb, sc);
    return sc;
}

static int multi_sock_cb(CURL *easy, curl_socket_t s, int what, void *arg, void *sockp)
{
    struct cm_hc *hc = arg;
    struct sock_ctx *sc = sockp;
    (void)easy;
    if (!sc && s >= 0 && s < hc->nsocks)
        sc = hc->socks[s]; /* a cached connection curl released earlier */
    if (what == CURL_POLL_REMOVE) {
        if (!sc)
            return 0;
        curl_multi_assign(hc->multi, s, NULL);
        if (!sc->owned) {
            sock_free(hc, sc);
            return 0;
        }
        sc->what = 0;
        if (!sc->connected) {
            sock_disarm(sc);
            return 0;
        }
        /* Park: keep only a read watch, so that an upstream close is
         * noticed without any readiness spinning. */
        if (sc->kind & EV_WRITE) {
            sock_disarm(sc);
            event_assign(sc->ev, hc->base, s, EV_PERSIST | EV_READ, event_cb, sc);
            event_add(sc->ev, NULL);
            sc->kind = EV_READ;
        }
        return 0;
    }
    short kind =
        (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0));
    if (!sc) {
        sc = sock_new(hc, s);
    }
    if (!sockp)
        curl_multi_assign(hc->multi, s, sc);
    sc->what = what;
    if (what & CURL_POLL_IN)
        sc->connected = 1;
    if (sc->kind == kind)
        return 0; /* unchanged (or parked with the same watch): no epoll_ctl */
    sock_disarm(sc);
    event_assign(sc->ev, hc->base, s, (short)(EV_PERSIST | kind), event_cb, sc);
    event_add(sc->ev, NULL);
    sc->kind = kind;
    return 0;
}

/* Upstream connection sockets: opened here so that they can be parked. */
static curl_socket_t open_socket_cb(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct cm_hc *hc = arg;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (s < 0)
        return CURL_SOCKET_BAD;
    if (s >= hc->nsocks) {
        int n = hc->nsocks ? hc->nsocks : 64;
        while (n <= s)
            n *= 2;
        hc->socks = cm_xrealloc(hc->socks, (size_t)n * sizeof *hc->socks);
        memset(hc->socks + hc->nsocks, 0, (size_t)(n - hc->nsocks) * sizeof *hc->socks);
        hc->nsocks = n;
    }
    if (hc->socks[s]) {
        /* Curl closed the socket that had this number without telling
         * close_socket_cb: its entry is stale (disarmed when curl removed
         * it). */
        sock_disarm(hc->socks[s]);
        sock_free(hc, hc->socks[s]);
    }
    struct sock_ctx *sc = sock_new(hc, s);
    sc->owned = 1;
    hc->socks[s] = sc;
    return s;
}

static int close_socket_cb(void *arg, curl_socket_t s)
{
    struct cm_hc *hc = arg;
    if (s >= 0 && s < hc->nsocks && hc->socks[s]) {
        struct sock_ctx *sc = hc->socks[s];
        sock_disarm(sc);
        sock_free(hc, sc);
    }
    return close(s);
}

/* ------------------------------------------------------------ lifecycle */

static void queue_remove(struct cm_hc_req *req)
{
    struct cm_hc *hc = req->hc;
    if (!req->queued)
        return;
    if (req->qprev)
        req->qprev->qnext = req->qnext;
    else
        hc->qhead = req->qnext;
    if (req->qnext)
        req->qnext->qprev = req->qprev;
    else
        hc->qtail = req->qprev;
    req->qnext = req->qprev = NULL;
    req->queued = 0;
    hc->nqueued--;
}

static void req_unlink_free(struct cm_hc_req *req)
{
    struct cm_hc *hc = req->hc;
    queue_remove(req);
    if (req->added) {
        req->added = 0;
        hc->running--;
        if (hc->qhead && !hc->running_frozen) {
            struct timeval zero = {0, 0};
            event_add(hc->pump, &zero);
        }
    }
    if (req->queue_timer)
        event_free(req->queue_timer);
    if (req->easy) {
        curl_multi_remove_handle(hc->multi, req->easy);
        if (hc->npool < EASY_POOL_MAX) {
            curl_easy_reset(req->easy);
            hc->pool[hc->npool++] = req->easy;
        } else {
            curl_easy_cleanup(req->easy);
        }
    }
    if (req->prev)
        req->prev->next = req->next;
    else
        hc->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    hc->active--;
    if (req->first_byte_timer)
        event_free(req->first_byte_timer);
    if (req->idle_timer)
        event_free(req->idle_timer);
    free(req->rid_heap);
    free(req->bearer_hdr);
    free(req->body_given);
    evbuffer_free(req->body);
    free(req->retry_after);
    free(req);
}

static void finish(struct cm_hc_req *req, enum cm_hc_result result, const char *errmsg)
{
    /* Detach from curl first so the callback may start new transfers. */
    if (req->added)
        curl_multi_remove_handle(req->hc->multi, req->easy);
    if (!req->cancelled && !req->released && req->cbs.on_done) {
        req->in_callback++;
        req->cbs.on_done(req, result, req->status, req->body, errmsg, req->arg);
        req->in_callback--;
    }
    req_unlink_free(req);
}

static enum cm_hc_result map_curl_result(struct cm_hc_req *req, CURLcode rc)
{
    if (rc == CURLE_OK)
        return CM_HC_OK;
    if (req->too_large)
        return CM_HC_ERR_TOO_LARGE;
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return CM_HC_ERR_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return req->connected ? CM_HC_ERR_TIMEOUT : CM_HC_ERR_CONNECT;
    default:
        return CM_HC_ERR_IO;
    }
}

static void check_multi_info(struct cm_hc *hc)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(hc->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        struct cm_hc_req *req = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&req);
        if (!req)
            continue;
        if (!req->headers_done)
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &req->status);
        enum cm_hc_result result = map_curl_result(req, rc);
        finish(req, result,
               rc == CURLE_OK ? NULL : (req->errbuf[0] ? req->errbuf : curl_easy_strerror(rc)));
    }
}

static void app_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_hc_req *req = arg;
    (void)fd;
    (void)what;
    req->timed_out = 1;
    finish(req, CM_HC_ERR_TIMEOUT,
           req->headers_done ? "upstream idle timeout" : "upstream first-byte timeout");
}

static void arm_idle(struct cm_hc_req *req)
{
    if (req->idle_timer && !req->paused) {
        struct timeval tv = tv_from_s(req->idle_timeout_s);
        evtimer_add(req->idle_timer, &tv);
    }
}

/* ------------------------------------------------------------ curl callbacks */

static int prereq_cb(void *arg, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port)
{
    struct cm_hc_req *req = arg;
    (void)conn_primary_ip, (void)conn_local_ip, (void)conn_primary_port, (void)conn_local_port;
    req->connected = 1;
    return CURL_PREREQFUNC_OK;
}

static size_t header_cb(char *buf, size_t size, size_t n, void *arg)
{
    struct cm_hc_req *req = arg;
    size_t len = size * n;
    if (req->cancelled)
        return 0;
    if (req->released)
        return len; /* trailers */
    if (len >= 12 && strncasecmp(buf, "Retry-After:", 12) == 0) {
        const char *v = buf + 12;
        size_t vl = len - 12;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        free(req->retry_after);
        req->retry_after = cm_xstrndup(v, vl > 64 ? 64 : vl);
    }
    if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && !req->headers_done) {
            req->headers_done = 1;
            req->status = status;
            if (req->first_byte_timer)
                evtimer_del(req->first_byte_timer);
            arm_idle(req);
            if (req->cbs.on_headers) {
                req->in_callback++;
                req->cbs.on_headers(req, status, req->arg);
                req->in_callback--;
                if (req->cancelled)
                    return 0;
            }
        }
    }
    return len;
}

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
    struct cm_hc_req *req = arg;
    size_t len = size * n;
    if (req->cancelled)
        return 0;
    if (req->released) {
        req->dropped += len;
        return req->dropped > RELEASE_MAX_BYTES ? 0 : len;
    }
    if (req->stream && req->status >= 200 && req->status < 300) {
        arm_idle(req);
        req->in_callback++;
        int rc = req->cbs.on_data(req, data, len, req->arg);
        req->in_callback--;
        if (req->cancelled || rc == CM_HC_ABORT)
            return 0;
        if (rc == CM_HC_PAUSE) {
            req->paused = 1;
            if (req->idle_timer)
                evtimer_del(req->idle_timer);
            return CURL_WRITEFUNC_PAUSE;
        }
        return len;
    }
    size_t cap = req->stream ? ERROR_BODY_MAX : req->max_body;
    if (evbuffer_get_length(req->body) + len > cap) {
        req->too_large = 1;
        return 0;
    }
    evbuffer_add(req->body, data, len);
    arm_idle(req);
    return len;
}

/* ------------------------------------------------------------ queue */

static int activate(struct cm_hc_req *req)
{
    struct cm_hc *hc = req->hc;
    queue_remove(req);
    if (req->queue_timer)
        evtimer_del(req->queue_timer);
    if (req->first_byte_timeout_s > 0) {
        req->first_byte_timer = evtimer_new(hc->base, app_timeout_cb, req);
        struct timeval tv = tv_from_s(req->first_byte_timeout_s);
        evtimer_add(req->first_byte_timer, &tv);
    }
    CURLMcode mc = curl_multi_add_handle(hc->multi, req->easy);
    if (mc != CURLM_OK) {
        CM_ERROR(NULL, "upstream_start_failed", "%s", curl_multi_strerror(mc));
        return -1;
    }
    req->added = 1;
    hc->running++;
    return 0;
}

static void pump_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_hc *hc = arg;
    (void)fd;
    (void)what;
    while (hc->qhead && (!hc->max_running || hc->running < hc->max_running)) {
        struct cm_hc_req *req = hc->qhead;
        if (activate(req) != 0)
            finish(req, CM_HC_ERR_IO, "could not start the transfer");
    }
}

static void queue_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_hc_req *req = arg;
    (void)fd;
    (void)what;
    queue_remove(req);
    finish(req, CM_HC_ERR_QUEUE_TIMEOUT, "waited too long for a free upstream slot");
}

void cm_hc_set_limits(struct cm_hc *hc, unsigned max_running, unsigned max_queued,
                      double queue_timeout_s)
{
    hc->max_running = max_running;
    hc->max_queued = max_queued;
    hc->queue_timeout_s = queue_timeout_s;
}

int cm_hc_refused(const struct cm_hc *hc)
{
    return hc->refused;
}

unsigned cm_hc_queued(const struct cm_hc *hc)
{
    return hc->nqueued;
}

/* ------------------------------------------------------------ public */

struct cm_hc *cm_hc_new(struct event_base *base)
{
    struct cm_hc *hc = cm_xcalloc(1, sizeof *hc);
    hc->base = base;
    hc->multi = curl_multi_init();
    hc->timer = evtimer_new(base, timer_cb, hc);
    hc->timer_ms = -1;
    hc->kick = event_new(base, -1, 0, kick_cb, hc);
    hc->pump = evtimer_new(base, pump_cb, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_SOCKETFUNCTION, multi_sock_cb);
    curl_multi_setopt(hc->multi, CURLMOPT_SOCKETDATA, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(hc->multi, CURLMOPT_TIMERDATA, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_MAXCONNECTS, 256L);
    return hc;
}

void cm_hc_free(struct cm_hc *hc)
{
    if (!hc)
        return;
    hc->running_frozen = 1;
    while (hc->reqs) {
        hc->reqs->cancelled = 1;
        req_unlink_free(hc->reqs);
    }
    while (hc->npool)
        curl_easy_cleanup(hc->pool[--hc->npool]);
    curl_multi_cleanup(hc->multi); /* closes cached connections: close_socket_cb */
    for (int i = 0; i < hc->nsocks; i++)
        if (hc->socks[i])
            sock_free(hc, hc->socks[i]); /* opened but never closed by curl */
    free(hc->socks);
    event_free(hc->timer);
    event_free(hc->kick);
    event_free(hc->pump);
    free(hc);
}

unsigned cm_hc_active(const struct cm_hc *hc)
{
    return hc->active;
}

int cm_hc_header_value_ok(const char *v)
{
    /* A C string holds no NUL; CR and LF would end the header (and with a
     * blank line the request): a value carrying them smuggles headers or a
     * whole second request onto the pooled upstream connection. */
    return v && strpbrk(v, "\r\n") == NULL;
}

/* Links the next header node (the list is built front to back). */
static void add_header(struct cm_hc_req *req, unsigned *n, char *line)
{
    req->hnodes[*n].data = line;
    req->hnodes[*n].next = NULL;
    if (*n)
        req->hnodes[*n - 1].next = &req->hnodes[*n];
    (*n)++;
}

/* "name" + "value" whole, never truncated (values were checked by
 * cm_hc_start): in buf when it fits, else malloc'd into *heap. */
static char *header_line(char *buf, size_t cap, char **heap, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    char *h = nl + vl < cap ? buf : (*heap = cm_xmalloc(nl + vl + 1));
    memcpy(h, name, nl);
    memcpy(h + nl, value, vl + 1);
    return h;
}

struct cm_hc_req *cm_hc_start(struct cm_hc *hc, const struct cm_hc_opts *o,
                              const struct cm_hc_callbacks *cbs, void *arg)
{
    hc->refused = 0;
    if ((o->request_id && !cm_hc_header_value_ok(o->request_id)) ||
        (o->bearer && !cm_hc_header_value_ok(o->bearer))) {
        CM_ERROR(NULL, "upstream_bad_header", "a header value contains CR or LF; not sent");
        if (o->body_given)
            free((char *)o->body);
        return NULL;
    }
    if (hc->max_running && hc->running >= hc->max_running && hc->nqueued >= hc->max_queued) {
        hc->refused = 1;
        if (o->body_given)
            free((char *)o->body);
        return NULL;
    }
    struct cm_hc_req *req = cm_xcalloc(1, sizeof *req);
    req->hc = hc;
    req->cbs = *cbs;
    req->arg = arg;
    req->body = evbuffer_new();
    req->stream = o->stream && cbs->on_data;
    req->max_body = o->max_response_bytes ? o->max_response_bytes : DEFAULT_MAX_RESPONSE;
    req->easy = hc->npool ? hc->pool[--hc->npool] : curl_easy_init();
    CURL *e = req->easy;

    curl_easy_setopt(e, CURLOPT_URL, o->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, req);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, prereq_cb);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, req);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket_cb);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, hc);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, hc);
    if (o->connect_timeout_s > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(o->connect_timeout_s * 1000));
    if (o->total_timeout_s > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)ceil(o->total_timeout_s * 1000));

    unsigned nh = 0;
    static char expect_hdr[] = "Expect:", ctype_hdr[] = "Content-Type: application/json";
    add_header(req, &nh, expect_hdr);
    if (o->body) {
        add_header(req, &nh, ctype_hdr);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        if (o->body_given) {
            req->body_given = (char *)o->body; /* lives as long as the transfer */
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body_given);
        } else {
            curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body);
        }
    }
    if (o->method && strcmp(o->method, "GET") != 0 && strcmp(o->method, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
    else if (o->method && strcmp(o->method, "GET") == 0 && !o->body)
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (o->request_id)
        add_header(req, &nh,
                   header_line(req->rid_hdr, sizeof req->rid_hdr, &req->rid_heap,
                               "X-Request-Id: ", o->request_id));
    if (o->bearer)
        add_header(req, &nh,
                   header_line(NULL, 0, &req->bearer_hdr, "Authorization: Bearer ", o->bearer));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->hnodes);

    req->first_byte_timeout_s = o->first_byte_timeout_s;
    if (o->idle_timeout_s > 0) {
        req->idle_timeout_s = o->idle_timeout_s;
        req->idle_timer = evtimer_new(hc->base, app_timeout_cb, req);
    }

    req->next = hc->reqs;
    if (hc->reqs)
        hc->reqs->prev = req;
    hc->reqs = req;
    hc->active++;
    if (hc->max_running && hc->running >= hc->max_running) {
        /* Wait for a slot; the transfer's own timeouts start with it. */
        req->queued = 1;
        req->qprev = hc->qtail;
        if (hc->qtail)
            hc->qtail->qnext = req;
        else
            hc->qhead = req;
        hc->qtail = req;
        hc->nqueued++;
        if (hc->queue_timeout_s > 0) {
            req->queue_timer = evtimer_new(hc->base, queue_timeout_cb, req);
            struct timeval tv = tv_from_s(hc->queue_timeout_s);
            evtimer_add(req->queue_timer, &tv);
        }
        return req;
    }
    if (activate(req) != 0) {
        req->cancelled = 1;
        req_unlink_free(req);
        return NULL;
    }
    return req;
}

void cm_hc_cancel(struct cm_hc_req *req)
{
    if (!req || req->cancelled)
        return;
    req->cancelled = 1;
    if (req->in_callback)
        return; /* the curl callback returns an error; freed on completion */
    req_unlink_free(req);
}

void cm_hc_release(struct cm_hc_req *req)
{
    if (!req || req->cancelled || req->released)
        return;
    if (!req->added || req->paused || !req->stream || !req->headers_done) {
        cm_hc_cancel(req);
        return;
    }
    req->released = 1;
    /* Bounded: the rest must come soon (the idle timer, re-armed once with
     * the shorter grace, closes the connection otherwise). */
    if (!req->idle_timer)
        req->idle_timer = evtimer_new(req->hc->base, app_timeout_cb, req);
    double grace = req->idle_timeout_s > 0 && req->idle_timeout_s < RELEASE_GRACE_S
                       ? req->idle_timeout_s
                       : RELEASE_GRACE_S;
    struct timeval tv = tv_from_s(grace);
    evtimer_add(req->idle_timer, &tv);
}

void cm_hc_resume(struct cm_hc_req *req)
{
    if (!req || !req->paused || req->cancelled)
        return;
    req->paused = 0;
    arm_idle(req);
    curl_easy_pause(req->easy, CURLPAUSE_CONT);
}

const char *cm_hc_retry_after(const struct cm_hc_req *req)
{
    return req->retry_after;
}

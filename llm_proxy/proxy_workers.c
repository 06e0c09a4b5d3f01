/* proxy_workers: llm_proxy's event-loop threads (see proxy_workers.h). */
#include "proxy_workers.h"

#include "api_handlers.h"
#include "proxy.h"

#include "cm_alloc.h"
#include "cm_conn_guard.h"
#include "cm_log.h"

#include <event2/event.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Owned by its thread once started; the main thread touches only the
 * drain and stop events (event_active is thread-safe with evthread). */
struct proxy_worker {
    struct proxy px;
    struct proxy_workers *all;
    pthread_t thread;
    int started;
    struct event *drain_ev, *stop_ev;
    struct event *drain_timer, *grace_timer;
};

struct proxy_workers {
    unsigned n;
    struct proxy_worker *w;
    atomic_uint running;
    atomic_uint to_drain; /* workers that have not started draining yet */
    struct event *main_done;
};

unsigned proxy_workers_default_count(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? (unsigned)n : 1;
}

/* ------------------------------------------------------------ requests */

static void record_done(const struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    char status[16];
    snprintf(status, sizeof status, "%d", cm_req_status(r));
    const char *labels[] = {cm_req_route(r), cm_req_method_name(r), status};
    cm_metric_add(px->m_requests, labels, 1);
    const char *route[] = {cm_req_route(r)};
    cm_metric_observe(px->m_duration, route, cm_req_elapsed(r));
    const char *worker[] = {px->worker_label};
    cm_metric_add(px->m_worker_requests, worker, 1);
}

static void record_reject(const char *reason, void *arg)
{
    struct proxy *px = arg;
    const char *labels[] = {reason};
    cm_metric_add(px->m_rejected, labels, 1);
}

static void setup_routes(struct proxy *px)
{
    struct cm_http_server *s = px->srv;
    cm_http_server_route(s, CM_POST, "/v1/chat/completions", CM_ROUTE_AUTH, "chat_completions",
                         chat_handle, px);
    cm_http_server_route(s, CM_POST, "/v1/responses", CM_ROUTE_AUTH, "responses", responses_handle,
                         px);
    cm_http_server_route(s, CM_POST, "/v1/messages",
                         CM_ROUTE_AUTH | CM_ROUTE_AUTH_XKEY | CM_ROUTE_ANTHROPIC, "messages",
                         messages_handle, px);
    cm_http_server_route(s, CM_POST, "/v1/embeddings", CM_ROUTE_AUTH, "embeddings", embed_handle,
                         px);
    cm_http_server_route(s, CM_GET, "/v1/models", CM_ROUTE_AUTH, "models", models_handle_list, px);
    cm_http_server_route(s, CM_GET, "/v1/models/", CM_ROUTE_AUTH | CM_ROUTE_PREFIX, "model",
                         models_handle_get, px);
    cm_http_server_route(s, CM_GET, "/ws/chat",
                         CM_ROUTE_AUTH | CM_ROUTE_AUTH_QUERY | CM_ROUTE_STRICT_ORIGIN, "ws_chat",
                         ws_handle_upgrade, px);
    cm_http_server_route(s, CM_GET, "/health", CM_ROUTE_DRAIN_OK, "health", health_handle_live, px);
    cm_http_server_route(s, CM_GET, "/ready", CM_ROUTE_DRAIN_OK, "ready", health_handle_ready, px);
    cm_http_server_route(s, CM_GET, "/metrics", CM_ROUTE_DRAIN_OK, "metrics", health_handle_metrics,
                         px);
}

/* ------------------------------------------------------------ shutdown */

static void drain_check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_worker *w = arg;
    (void)fd;
    (void)what;
    if (cm_http_server_inflight(w->px.srv) == 0 && w->px.ws_count == 0) {
        CM_INFO(NULL, "shutdown", "all requests finished");
        event_base_loopexit(w->px.base, NULL);
    }
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_worker *w = arg;
    (void)fd;
    (void)what;
    CM_WARN(NULL, "shutdown", "grace period over; closing %u request(s)",
            cm_http_server_inflight(w->px.srv));
    event_base_loopexit(w->px.base, NULL);
}

/* On the worker's thread, activated by the main thread. */
static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_worker *w = arg;
    struct proxy *px = &w->px;
    (void)fd;
    (void)what;
    if (w->drain_timer)
        return;
    cm_http_server_drain(px->srv);
    health_ready_drain(px);
    ws_drain_all(px);
    struct timeval poll = {0, 20000};
    w->drain_timer = event_new(px->base, -1, EV_PERSIST, drain_check_cb, w);
    event_add(w->drain_timer, &poll);
    double g = px->cfg.shutdown_grace;
    struct timeval gt = {(time_t)g, (suseconds_t)((g - (double)(time_t)g) * 1e6)};
    w->grace_timer = evtimer_new(px->base, grace_cb, w);
    evtimer_add(w->grace_timer, &gt);
    /* The last worker to start says so: from this line on, every worker
     * refuses new work (tests and operators wait for it). */
    if (atomic_fetch_sub(&w->all->to_drain, 1) == 1)
        CM_INFO(NULL, "shutdown", "%u worker(s) draining, grace %.1fs", w->all->n, g);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_worker *w = arg;
    (void)fd;
    (void)what;
    event_base_loopbreak(w->px.base);
}

/* ------------------------------------------------------------ workers */

struct proxy_workers *proxy_workers_new(const struct proxy *tmpl, unsigned n,
                                        struct upstream_hosts *hosts, struct cm_conn_cap *cap,
                                        struct health_ready *ready)
{
    struct proxy_workers *ws = cm_xcalloc(1, sizeof *ws);
    ws->n = n ? n : 1;
    ws->w = cm_xcalloc(ws->n, sizeof *ws->w);
    for (unsigned i = 0; i < ws->n; i++) {
        struct proxy_worker *w = &ws->w[i];
        struct proxy *px = &w->px;
        *px = *tmpl;
        px->workers = ws;
        px->worker = i;
        snprintf(px->worker_label, sizeof px->worker_label, "%u", i);
        w->all = ws;
        /* The changelist merges the many add/del of one loop pass into one
         * epoll_ctl per fd (we never dup() fds handed to the loop). */
        struct event_config *ecfg = event_config_new();
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        px->base = event_base_new_with_config(ecfg);
        event_config_free(ecfg);
        if (!px->base) {
            fprintf(stderr, "llm_proxy: cannot create an event loop\n");
            abort();
        }
        px->pool = upstream_pool_new(px->base, hosts, i == 0);
        const struct proxy_config *c = &px->cfg;
        struct cm_http_server_opts so = {.host = c->host,
                                         .port = (int)c->port,
                                         .max_body_bytes = c->max_body_bytes,
                                         .max_header_bytes = c->max_header_bytes,
                                         .idle_timeout_s = c->idle_timeout,
                                         .api_key = c->api_key,
                                         .max_connections = (unsigned)c->max_connections,
                                         .request_read_timeout_s = c->request_read_timeout,
                                         .origins = c->origins,
                                         .conn_cap = cap,
                                         .listen = ws->n == 1 ? CM_LISTEN_EXCLUSIVE
                                                   : i == 0   ? CM_LISTEN_REUSEPORT_FIRST
                                                              : CM_LISTEN_REUSEPORT_JOIN};
        px->srv = cm_http_server_new(px->base, &so);
        cm_http_server_on_done(px->srv, record_done, px);
        cm_http_server_on_reject(px->srv, record_reject, px);
        setup_routes(px);
        health_ready_attach(px, ready);
        w->drain_ev = event_new(px->base, -1, 0, drain_cb, w);
        w->stop_ev = event_new(px->base, -1, 0, stop_cb, w);
    }
    return ws;
}

int proxy_workers_listen(struct proxy_workers *ws, char *err, size_t errlen)
{
    if (cm_http_server_start(ws->w[0].px.srv, err, errlen) != 0)
        return -1;
    int port = cm_http_server_port(ws->w[0].px.srv);
    for (unsigned i = 1; i < ws->n; i++) {
        /* The same port as worker 0 (the one the kernel chose for 0). */
        ws->w[i].px.cfg.port = port;
        cm_http_server_set_port(ws->w[i].px.srv, port);
        if (cm_http_server_start(ws->w[i].px.srv, err, errlen) != 0)
            return -1;
    }
    return 0;
}

int proxy_workers_port(const struct proxy_workers *ws)
{
    return cm_http_server_port(ws->w[0].px.srv);
}

struct proxy *proxy_workers_first(struct proxy_workers *ws)
{
    return &ws->w[0].px;
}

unsigned proxy_workers_count(const struct proxy_workers *ws)
{
    return ws->n;
}

static void *worker_main(void *arg)
{
    struct proxy_worker *w = arg;
    struct proxy_workers *ws = w->all;
    cm_log_set_worker((int)w->px.worker);
    char name[16];
    snprintf(name, sizeof name, "llm_proxy:w%u", w->px.worker % 1000);
    pthread_setname_np(pthread_self(), name); /* top -H, /proc/PID/task/TID/comm */
    upstream_pool_start(w->px.pool);          /* worker 0 only: the refresh */
    event_base_dispatch(w->px.base);
    health_ready_stop(&w->px); /* a round it runs is abandoned for the others */
    if (atomic_fetch_sub(&ws->running, 1) == 1)
        event_active(ws->main_done, EV_TIMEOUT, 1);
    return NULL;
}

int proxy_workers_start(struct proxy_workers *ws, struct event *main_done)
{
    ws->main_done = main_done;
    atomic_store(&ws->running, ws->n);
    /* Signals go to the main thread: the workers block them. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = 0;
    for (unsigned i = 0; i < ws->n; i++) {
        if (pthread_create(&ws->w[i].thread, NULL, worker_main, &ws->w[i]) != 0) {
            CM_ERROR(NULL, "startup_failed", "cannot start worker %u", i);
            /* The ones not started count as ended; the others are stopped. */
            for (unsigned k = i; k < ws->n; k++)
                atomic_fetch_sub(&ws->running, 1);
            proxy_workers_stop_now(ws);
            rc = -1;
            break;
        }
        ws->w[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void proxy_workers_drain(struct proxy_workers *ws)
{
    atomic_store(&ws->to_drain, ws->n);
    for (unsigned i = 0; i < ws->n; i++)
        event_active(ws->w[i].drain_ev, EV_TIMEOUT, 1);
}

void proxy_workers_stop_now(struct proxy_workers *ws)
{
    for (unsigned i = 0; i < ws->n; i++)
        event_active(ws->w[i].stop_ev, EV_TIMEOUT, 1);
}

void proxy_workers_totals(const struct proxy_workers *ws, struct proxy_totals *t)
{
    memset(t, 0, sizeof *t);
    for (unsigned i = 0; ws && i < ws->n; i++) {
        const struct proxy *px = &ws->w[i].px;
        t->inflight += cm_http_server_inflight(px->srv);
        t->queued += upstream_pool_queued(px->pool);
        t->ws_sessions += px->ws_count;
    }
}

void proxy_workers_free(struct proxy_workers *ws)
{
    if (!ws)
        return;
    for (unsigned i = 0; i < ws->n; i++)
        if (ws->w[i].started)
            pthread_join(ws->w[i].thread, NULL);
    /* Every loop has ended: this thread alone frees, servers first (their
     * pending requests' abort callbacks use the pools). */
    for (unsigned i = 0; i < ws->n; i++)
        cm_http_server_free(ws->w[i].px.srv);
    for (unsigned i = 0; i < ws->n; i++) {
        struct proxy_worker *w = &ws->w[i];
        health_ready_free(&w->px);
        upstream_pool_free(w->px.pool);
        event_free(w->drain_ev);
        event_free(w->stop_ev);
        if (w->drain_timer)
            event_free(w->drain_timer);
        if (w->grace_timer)
            event_free(w->grace_timer);
    }
    for (unsigned i = 0; i < ws->n; i++)
        event_base_free(ws->w[i].px.base);
    free(ws->w);
    free(ws);
}

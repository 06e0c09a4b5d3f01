/* worker_http: health, readiness, metrics and on-demand passes (see worker_http.h). */
#include "worker_http.h"

#include "cm_alloc.h"
#include "cm_http_probe.h"
#include "cm_http_server.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "memory_api.h"
#include "redis_claim.h"
#include "store.h"
#include "worker_metrics.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct readiness {
    int redis_ok, pg_ok, llm_ok, checked;
    char reason[600];
};

struct worker_http {
    struct event_base *base;
    struct cm_http_server *srv;
    struct pipeline *p;
    const struct worker_config *cfg;
    pthread_t monitor;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop;
    struct readiness ready;
    int job_running;
    struct memory_api *api;
};

/* ------------------------------------------------------------ readiness monitor */

static int llm_proxy_healthy(const struct worker_config *cfg)
{
    char *url = cm_xasprintf("%s/health", cfg->llm_proxy_url);
    int ok = cm_http_probe(url, 2000, NULL, 0) == 0;
    free(url);
    return ok;
}

static void *monitor_main(void *arg)
{
    struct worker_http *wh = arg;
    struct rclient *rc = NULL;
    struct store *st = NULL;
    char err[300];
    for (;;) {
        struct readiness r = {0};
        r.checked = 1;
        if (!rc || rclient_ping(rc) != 0) {
            rclient_free(rc);
            rc = rclient_connect(wh->cfg->redis_url, 2, err, sizeof err);
        }
        r.redis_ok = rc != NULL;
        if (!r.redis_ok)
            snprintf(r.reason + strlen(r.reason), sizeof r.reason - strlen(r.reason),
                     "redis unreachable; ");
        if (!st || store_check(st) != 0) {
            store_free(st);
            char *ci = worker_config_pg_conninfo(wh->cfg);
            st = store_connect(ci, err, sizeof err);
            free(ci);
        }
        long long pending = 0, dead = 0;
        r.pg_ok = st && store_counts(st, &pending, &dead) == 0;
        if (!r.pg_ok)
            snprintf(r.reason + strlen(r.reason), sizeof r.reason - strlen(r.reason),
                     "postgres unreachable; ");
        r.llm_ok = llm_proxy_healthy(wh->cfg);
        if (!r.llm_ok)
            snprintf(r.reason + strlen(r.reason), sizeof r.reason - strlen(r.reason),
                     "llm_proxy unreachable; ");
        wm_queue(pending, dead, r.redis_ok ? redis_claim_backlog(rc) : -1);
        pthread_mutex_lock(&wh->mu);
        wh->ready = r;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        if (!wh->stop)
            pthread_cond_timedwait(&wh->cond, &wh->mu, &ts);
        int stop = wh->stop;
        pthread_mutex_unlock(&wh->mu);
        if (stop)
            break;
    }
    rclient_free(rc);
    store_free(st);
    return NULL;
}

/* ------------------------------------------------------------ handlers */

static void handle_health(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static void handle_ready(struct cm_req *r, void *arg)
{
    struct worker_http *wh = arg;
    pthread_mutex_lock(&wh->mu);
    struct readiness rd = wh->ready;
    pthread_mutex_unlock(&wh->mu);
    char cfg_err[512], breaker[300];
    pipeline_config_error(wh->p, cfg_err, sizeof cfg_err);
    int open = pipeline_breaker_open(wh->p, breaker, sizeof breaker);
    int ok = rd.checked && rd.redis_ok && rd.pg_ok && rd.llm_ok && !cfg_err[0] && !open;
    wm_ready(ok);
    json_t *body =
        json_pack("{s:s, s:b, s:b, s:b, s:b}", "status", ok ? "ready" : "not_ready", "redis",
                  rd.redis_ok, "postgres", rd.pg_ok, "llm_proxy", rd.llm_ok, "circuit_open", open);
    if (cfg_err[0])
        json_object_set_new(body, "config_error", json_string(cfg_err));
    if (!rd.checked)
        json_object_set_new(body, "reason", json_string("starting"));
    else if (rd.reason[0])
        json_object_set_new(body, "reason", json_string(rd.reason));
    else if (open)
        json_object_set_new(body, "reason", json_string(breaker));
    cm_req_reply_json(r, ok ? 200 : 503, body);
}

static void handle_metrics(struct cm_req *r, void *arg)
{
    (void)arg;
    struct evbuffer *b = evbuffer_new();
    wm_render(b);
    cm_req_reply_buffer(r, 200, CM_METRICS_CONTENT_TYPE, b);
    evbuffer_free(b);
}

/* A slow job on a helper thread, answered on the loop thread. */
struct job {
    struct worker_http *wh;
    struct cm_req *r; /* NULL once the client has gone */
    struct event *done;
    pthread_t thread;
    int replay;
    char *user;
    int status;
    json_t *result;
};

static void job_finish_cb(evutil_socket_t fd, short what, void *arg)
{
    struct job *j = arg;
    (void)fd;
    (void)what;
    pthread_join(j->thread, NULL);
    if (j->r)
        cm_req_reply_json(j->r, j->status, j->result);
    else
        json_decref(j->result);
    j->wh->job_running--;
    event_free(j->done);
    free(j->user);
    free(j);
}

static void job_abort(struct cm_req *r, void *arg)
{
    struct job *j = arg;
    (void)r;
    j->r = NULL; /* the result is dropped when the job ends */
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    struct pipeline *p = j->wh->p;
    char err[300] = "";
    if (j->replay) {
        char *ci = worker_config_pg_conninfo(j->wh->cfg);
        struct store *st = store_connect(ci, err, sizeof err);
        free(ci);
        long long n = st ? store_replay_dead(st, j->user) : -1;
        store_free(st);
        if (n < 0) {
            j->status = 503;
            j->result = cm_oai_error(err[0] ? err : "PostgreSQL failed", "server_error", NULL,
                                     "store_unavailable");
        } else {
            j->status = 200;
            j->result = json_pack("{s:I}", "replayed", (json_int_t)n);
            CM_INFO(NULL, "replay_dead", "user=%s chunks=%lld", j->user ? j->user : "(all)", n);
            pipeline_wake(p);
        }
    } else {
        struct pass_counts c;
        int rc = pipeline_run_once(p, &c, err, sizeof err);
        j->status = rc == 0 ? 200 : 503;
        j->result = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "messages_claimed",
            (json_int_t)c.messages_claimed, "chunks_created", (json_int_t)c.chunks_created,
            "dead_messages", (json_int_t)c.dead_messages, "chunks_done", (json_int_t)c.chunks_done,
            "chunks_retried", (json_int_t)c.chunks_retried, "chunks_dead",
            (json_int_t)c.chunks_dead, "chunks_released", (json_int_t)c.chunks_released,
            "user_failures", (json_int_t)c.user_failures, "duplicates_skipped",
            (json_int_t)c.duplicates_skipped);
        if (rc != 0)
            json_object_set_new(j->result, "error", json_string(err));
    }
    event_active(j->done, EV_TIMEOUT, 0);
    return NULL;
}

/* Without MEMORY_WORKER_API_KEY the mutating endpoints answer only to
 * loopback clients (with a key, the server checks the Bearer key). */
static int admin_allowed(struct worker_http *wh, struct cm_req *r)
{
    if (wh->cfg->api_key && *wh->cfg->api_key)
        return 1;
    if (cm_req_peer_is_loopback(r))
        return 1;
    CM_WARN(cm_req_id(r), "admin_refused",
            "%s from a non-loopback client without MEMORY_WORKER_API_KEY set", cm_req_path(r));
    cm_req_reply_error(r, 403, "permission_error",
                       "This endpoint answers only loopback clients unless MEMORY_WORKER_API_KEY "
                       "is set.",
                       NULL, "forbidden");
    return 0;
}

static int api_allowed(struct cm_req *r, void *arg)
{
    return admin_allowed(arg, r);
}

static void start_job(struct worker_http *wh, struct cm_req *r, int replay)
{
    if (!admin_allowed(wh, r))
        return;
    if (wh->job_running >= 2) {
        cm_req_add_header(r, "Retry-After", "1");
        cm_req_reply_error(r, 429, "rate_limit_error", "A pass is already running.", NULL, "busy");
        return;
    }
    struct job *j = cm_xcalloc(1, sizeof *j);
    j->wh = wh;
    j->r = r;
    j->replay = replay;
    const char *user = cm_req_query(r, "user");
    j->user = user && *user ? cm_xstrdup(user) : NULL;
    j->done = event_new(wh->base, -1, 0, job_finish_cb, j);
    wh->job_running++;
    cm_req_on_abort(r, job_abort, j);
    if (pthread_create(&j->thread, NULL, job_main, j) != 0) {
        wh->job_running--;
        event_free(j->done);
        free(j->user);
        free(j);
        cm_req_on_abort(r, NULL, NULL);
        cm_req_reply_error(r, 500, "server_error", "Could not start the pass.", NULL, NULL);
    }
}

static void handle_process(struct cm_req *r, void *arg)
{
    start_job(arg, r, 0);
}

static void handle_replay(struct cm_req *r, void *arg)
{
    start_job(arg, r, 1);
}

/* ------------------------------------------------------------ lifecycle */

struct worker_http *worker_http_new(struct event_base *base, struct pipeline *p,
                                    const struct worker_config *cfg, char *err, size_t errlen)
{
    struct worker_http *wh = cm_xcalloc(1, sizeof *wh);
    wh->base = base;
    wh->p = p;
    wh->cfg = cfg;
    pthread_mutex_init(&wh->mu, NULL);
    pthread_cond_init(&wh->cond, NULL);
    struct cm_http_server_opts so = {.host = cfg->host,
                                     .port = (int)cfg->port,
                                     .max_body_bytes = 64 * 1024,
                                     .max_header_bytes = 64 * 1024,
                                     .idle_timeout_s = 60,
                                     .max_connections = 1024,
                                     .request_read_timeout_s = 30,
                                     .api_key = cfg->api_key};
    wh->srv = cm_http_server_new(base, &so);
    cm_http_server_route(wh->srv, CM_GET, "/health", CM_ROUTE_DRAIN_OK, "health", handle_health,
                         wh);
    cm_http_server_route(wh->srv, CM_GET, "/ready", CM_ROUTE_DRAIN_OK, "ready", handle_ready, wh);
    cm_http_server_route(wh->srv, CM_GET, "/metrics", CM_ROUTE_DRAIN_OK, "metrics", handle_metrics,
                         wh);
    cm_http_server_route(wh->srv, CM_POST, "/v1/process", CM_ROUTE_AUTH, "process", handle_process,
                         wh);
    cm_http_server_route(wh->srv, CM_POST, "/v1/replay-dead", CM_ROUTE_AUTH, "replay_dead",
                         handle_replay, wh);
    wh->api = memory_api_new(base, cfg, p, api_allowed, wh);
    memory_api_routes(wh->api, wh->srv);
    if (cm_http_server_start(wh->srv, err, errlen) != 0) {
        cm_http_server_free(wh->srv);
        memory_api_free(wh->api);
        free(wh);
        return NULL;
    }
    pthread_create(&wh->monitor, NULL, monitor_main, wh);
    return wh;
}

int worker_http_port(const struct worker_http *wh)
{
    return cm_http_server_port(wh->srv);
}

int worker_http_write_port_file(const struct worker_http *wh, const char *path)
{
    return cm_http_server_write_port_file(wh->srv, path);
}

void worker_http_free(struct worker_http *wh)
{
    if (!wh)
        return;
    pthread_mutex_lock(&wh->mu);
    wh->stop = 1;
    pthread_cond_broadcast(&wh->cond);
    pthread_mutex_unlock(&wh->mu);
    pthread_join(wh->monitor, NULL);
    /* Jobs still running finish and post their event; run the loop until
     * they are all answered or dropped. */
    while (wh->job_running > 0)
        event_base_loop(wh->base, EVLOOP_ONCE);
    cm_http_server_free(wh->srv);
    memory_api_free(wh->api);
    pthread_mutex_destroy(&wh->mu);
    pthread_cond_destroy(&wh->cond);
    free(wh);
}

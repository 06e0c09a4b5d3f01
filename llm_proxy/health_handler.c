/* health_handler: /health (liveness), /ready (an Ollama host usable), /metrics. */
#include "proxy.h"
#include "proxy_workers.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void health_handle_live(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/*
 * /ready: one cached probe round for the whole process. At most one round
 * is in flight, whatever the number of workers: it sends GET /api/version
 * to every host at once. The result answers every /ready, on every worker,
 * for READY_CACHE_TTL; once it is older, the next /ready (on any worker)
 * starts a round and meanwhile every /ready is answered from the previous
 * result (so it is at most READY_CACHE_TTL plus one probe, CONNECT_TIMEOUT +
 * 1 s, old). Without such a result (the first probe, or the last one is
 * older after a quiet spell) /ready requests wait for the round - until one
 * host answers usable (200), all answer, or READY_WAIT_MAX passes (503
 * "probe in progress"). When a worker drains, its waiters get 503 "shutting
 * down" at once. The probes run on their own HTTP client with no slot cap,
 * so they never take (or wait for) one of the LLM_PROXY_MAX_UPSTREAM slots
 * chat and embeddings use: a flood of unauthenticated /ready costs at most
 * one request per host per TTL for the whole process.
 *
 * Ready: at least one host answered the probe and is HEALTHY in the pool
 * (upstream_pool.h). The body lists each host's state.
 *
 * Workers: the result and the round in flight are one struct health_ready
 * (main creates it before the workers and frees it after them), under its
 * mutex. Each worker has its own struct ready_probe (proxy.ready): its probe
 * client (a cm_hc on its own loop), its waiters, their timer and a wake
 * event. The worker whose /ready found the result expired and no round in
 * flight claims the round (owner) and runs it on its own client; its probes'
 * answers are written to the shared result on its thread, which then wakes
 * every worker (event_active on each wake event, the thread-safe call) when
 * the round can answer (a host usable, or all answered). Each woken worker
 * copies the result out under the lock and answers its own waiters on its
 * own thread. A worker whose loop ends with its round in flight abandons it
 * (health_ready_stop: its client is freed, the round has no owner) and
 * wakes the others, whose waiters then start the next round themselves.
 * Lock order: the mutex, then a loop's lock (event_active); no callback
 * runs under the mutex.
 */

/* One host's last probe result. */
struct ready_result {
    int ok;
    int answered; /* in the current round */
    char version[64];
    char reason[300];
};

struct health_ready {
    pthread_mutex_t mu;
    size_t n;
    struct ready_result *res;     /* n, the last result of each host */
    double checked_at;            /* monotonic seconds the last round ended; 0 = never */
    struct ready_probe *owner;    /* the worker running the round; NULL = none in flight */
    unsigned pending;             /* its probes still in flight */
    unsigned long round;          /* rounds started */
    struct ready_probe **workers; /* attached, to wake */
    size_t nworkers;
    atomic_uint waiting; /* /ready waiting, every worker (for /metrics) */
};

struct ready_waiter {
    struct ready_probe *p;
    struct cm_req *r;
    struct ready_waiter *prev, *next;
};

/* One host's probe, on the worker running the round. */
struct ready_host {
    struct ready_probe *p;
    size_t i;
    struct cm_hc_req *inflight;
};

/* One worker's part; used on its thread only (wake: from any thread). */
struct ready_probe {
    struct proxy *px;
    struct health_ready *sh; /* borrowed */
    struct cm_hc *hc;        /* owned: the probes' own client; NULL once stopped */
    struct ready_host *hosts;
    size_t n;
    unsigned long round;       /* the round it runs, while sh->owner == this */
    struct ready_result *snap; /* n: the shared result, copied out under the lock */
    double snap_checked_at;
    int snap_inflight;
    struct ready_waiter *waiters;
    struct event *wait_timer; /* bounds the waiters' wait (owned) */
    struct event *wake;       /* the shared result changed (owned) */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct health_ready *health_ready_shared_new(size_t n_hosts)
{
    struct health_ready *sh = cm_xcalloc(1, sizeof *sh);
    pthread_mutex_init(&sh->mu, NULL);
    sh->n = n_hosts;
    sh->res = cm_xcalloc(n_hosts ? n_hosts : 1, sizeof *sh->res);
    for (size_t i = 0; i < n_hosts; i++)
        snprintf(sh->res[i].reason, sizeof sh->res[i].reason, "probe in progress");
    return sh;
}

void health_ready_shared_free(struct health_ready *sh)
{
    if (!sh)
        return;
    pthread_mutex_destroy(&sh->mu);
    free(sh->res);
    free(sh->workers);
    free(sh);
}

/* Under sh->mu: every attached worker re-reads the result on its thread. */
static void wake_all_locked(struct health_ready *sh)
{
    for (size_t i = 0; i < sh->nworkers; i++)
        event_active(sh->workers[i]->wake, EV_TIMEOUT, 1);
}

/* Copies the shared result into p->snap. */
static void snapshot(struct ready_probe *p)
{
    struct health_ready *sh = p->sh;
    pthread_mutex_lock(&sh->mu);
    memcpy(p->snap, sh->res, p->n * sizeof *p->snap);
    p->snap_checked_at = sh->checked_at;
    p->snap_inflight = sh->owner != NULL;
    pthread_mutex_unlock(&sh->mu);
}

static struct upstream_host *host_of(const struct ready_probe *p, size_t i)
{
    return upstream_pool_host(p->px->pool, i);
}

/* From the snapshot. */
static void ready_answer(const struct ready_probe *p, struct cm_req *r)
{
    json_t *hosts = json_array();
    const char *version = NULL, *reason = NULL;
    for (size_t i = 0; i < p->n; i++) {
        const struct ready_result *rh = &p->snap[i];
        struct upstream_host *h = host_of(p, i);
        enum upstream_host_state st = upstream_host_state(h);
        int usable = rh->ok && st == UPSTREAM_HEALTHY;
        if (usable && !version)
            version = rh->version;
        if (!rh->ok && !reason)
            reason = rh->reason;
        json_t *o = json_pack("{s:s, s:s, s:b, s:I, s:I, s:I}", "url", upstream_host_label(h),
                              "state", upstream_host_state_name(st), "reachable", rh->ok,
                              "in_flight", (json_int_t)upstream_host_in_flight(h),
                              "models_installed", (json_int_t)upstream_host_installed(h),
                              "models_loaded", (json_int_t)upstream_host_loaded(h));
        if (rh->ok)
            json_object_set_new(o, "ollama_version", json_string(rh->version));
        else
            json_object_set_new(o, "reason", json_string(rh->reason));
        json_array_append_new(hosts, o);
    }
    if (version) {
        cm_req_reply_json(r, 200,
                          json_pack("{s:s, s:s, s:o}", "status", "ready", "ollama_version", version,
                                    "hosts", hosts));
        return;
    }
    cm_req_reply_json(r, 503,
                      json_pack("{s:s, s:s, s:o}", "status", "not_ready", "reason",
                                reason ? reason : "no healthy upstream host", "hosts", hosts));
}

/* A host of the round in flight has answered and is usable (snapshot). */
static int round_usable(const struct ready_probe *p)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->snap[i].answered && p->snap[i].ok &&
            upstream_host_state(host_of(p, i)) == UPSTREAM_HEALTHY)
            return 1;
    return 0;
}

/* The snapshot answers a /ready now: fresh, or the last result while a
 * round runs, no older than the TTL plus one probe (an older one, after a
 * quiet spell, is not served), or a usable host in the round in flight. */
static int can_answer(const struct ready_probe *p)
{
    const struct proxy_config *c = &p->px->cfg;
    double age = p->snap_checked_at > 0 ? mono_now() - p->snap_checked_at : -1;
    return (age >= 0 && age < c->ready_cache_ttl + c->connect_timeout + 1) ||
           (p->snap_inflight && round_usable(p));
}

static void waiter_unlink(struct ready_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        w->p->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

static void waiter_abort(struct cm_req *r, void *arg)
{
    struct ready_waiter *w = arg;
    (void)r;
    atomic_fetch_sub(&w->p->sh->waiting, 1);
    waiter_unlink(w);
    free(w);
}

/* Answers every waiter of this worker: from the snapshot (reason NULL) or
 * 503 with reason. */
static void answer_waiters(struct ready_probe *p, const char *reason)
{
    if (p->wait_timer)
        event_del(p->wait_timer);
    while (p->waiters) {
        struct ready_waiter *w = p->waiters;
        atomic_fetch_sub(&p->sh->waiting, 1);
        waiter_unlink(w);
        struct cm_req *r = w->r;
        free(w);
        cm_req_on_abort(r, NULL, NULL);
        if (reason)
            cm_req_reply_json(r, 503,
                              json_pack("{s:s, s:s}", "status", "not_ready", "reason", reason));
        else
            ready_answer(p, r);
    }
}

static void wait_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    answer_waiters(arg, "upstream probe still in progress");
}

/* On the owner's thread: host i of its round answered (or could not be
 * asked). Wakes every worker once the round can answer. */
static void host_result(struct ready_probe *p, size_t i, int ok, const char *version,
                        const char *reason)
{
    struct health_ready *sh = p->sh;
    int usable = ok && upstream_host_state(host_of(p, i)) == UPSTREAM_HEALTHY;
    pthread_mutex_lock(&sh->mu);
    if (sh->owner != p || sh->round != p->round) {
        pthread_mutex_unlock(&sh->mu); /* not this worker's round (any more) */
        return;
    }
    struct ready_result *rr = &sh->res[i];
    rr->ok = ok;
    if (ok)
        snprintf(rr->version, sizeof rr->version, "%s", version);
    else
        snprintf(rr->reason, sizeof rr->reason, "%s", reason);
    rr->answered = 1;
    int done = --sh->pending == 0;
    if (done) {
        sh->checked_at = mono_now();
        sh->owner = NULL;
    }
    /* One usable host makes the answer "ready": no need to wait for the
     * slow ones. */
    if (done || usable)
        wake_all_locked(sh);
    pthread_mutex_unlock(&sh->mu);
}

static void probe_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct ready_host *rh = arg;
    struct ready_probe *p = rh->p;
    (void)up;
    rh->inflight = NULL;
    if (result == CM_HC_OK && status == 200) {
        json_t *j = cm_json_parse((const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body), NULL, 0);
        const char *v = cm_json_str(j, "version");
        char version[64];
        snprintf(version, sizeof version, "%s", v ? v : "unknown");
        json_decref(j);
        /* The cut may split a UTF-8 sequence (jansson would then refuse the
         * string and /ready's body): drop the partial character. */
        size_t n = strlen(version);
        json_t *valid = NULL;
        while (n && !(valid = json_stringn(version, n)))
            version[--n] = '\0';
        json_decref(valid);
        host_result(p, rh->i, 1, version, NULL);
        return;
    }
    char reason[300];
    if (result != CM_HC_OK)
        snprintf(reason, sizeof reason, "ollama unreachable: %s", errmsg ? errmsg : "error");
    else
        snprintf(reason, sizeof reason, "ollama answered HTTP %ld", status);
    CM_WARN(NULL, "not_ready", "host=%s %s", upstream_host_label(host_of(p, rh->i)), reason);
    host_result(p, rh->i, 0, NULL, reason);
}

/* Starts a round on this worker unless the result is fresh or a round is in
 * flight (on any worker). */
static void round_maybe_start(struct ready_probe *p, const char *request_id)
{
    struct health_ready *sh = p->sh;
    struct proxy *px = p->px;
    if (!p->hc)
        return; /* stopped */
    pthread_mutex_lock(&sh->mu);
    double age = sh->checked_at > 0 ? mono_now() - sh->checked_at : -1;
    int start = !(age >= 0 && age < px->cfg.ready_cache_ttl) && !sh->owner && p->n > 0;
    if (start) {
        sh->owner = p;
        p->round = ++sh->round;
        sh->pending = (unsigned)p->n;
        for (size_t i = 0; i < sh->n; i++)
            sh->res[i].answered = 0;
    }
    pthread_mutex_unlock(&sh->mu);
    if (!start)
        return;
    for (size_t i = 0; i < p->n; i++) {
        struct ready_host *rh = &p->hosts[i];
        char *url = upstream_host_url(host_of(p, i), "/api/version");
        struct cm_hc_opts o = {.method = "GET",
                               .url = url,
                               .request_id = request_id,
                               .connect_timeout_s = px->cfg.connect_timeout,
                               .total_timeout_s = px->cfg.connect_timeout + 1,
                               .max_response_bytes = 64 * 1024};
        static const struct cm_hc_callbacks cbs = {.on_done = probe_done};
        rh->inflight = cm_hc_start(p->hc, &o, &cbs, rh);
        free(url);
        if (!rh->inflight)
            host_result(p, i, 0, NULL, "could not start the probe");
    }
}

/* On this worker's thread: the shared result changed (or a round was
 * abandoned). */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct ready_probe *p = arg;
    (void)fd;
    (void)what;
    if (!p->waiters)
        return;
    snapshot(p);
    if (can_answer(p)) {
        answer_waiters(p, NULL);
        return;
    }
    if (!p->snap_inflight) {
        /* Abandoned by a worker that stopped: this one runs the next. */
        round_maybe_start(p, cm_req_id(p->waiters->r));
    }
}

void health_ready_attach(struct proxy *px, struct health_ready *sh)
{
    struct ready_probe *p = cm_xcalloc(1, sizeof *p);
    p->px = px;
    p->sh = sh;
    p->hc = cm_hc_new(px->base);
    p->n = upstream_pool_size(px->pool);
    if (p->n > sh->n)
        p->n = sh->n;
    p->hosts = cm_xcalloc(p->n ? p->n : 1, sizeof *p->hosts);
    p->snap = cm_xcalloc(p->n ? p->n : 1, sizeof *p->snap);
    for (size_t i = 0; i < p->n; i++) {
        p->hosts[i].p = p;
        p->hosts[i].i = i;
    }
    p->wait_timer = evtimer_new(px->base, wait_timeout_cb, p);
    p->wake = event_new(px->base, -1, 0, wake_cb, p);
    pthread_mutex_lock(&sh->mu);
    sh->workers = cm_xrealloc(sh->workers, (sh->nworkers + 1) * sizeof *sh->workers);
    sh->workers[sh->nworkers++] = p;
    pthread_mutex_unlock(&sh->mu);
    px->ready = p;
}

void health_handle_ready(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    if (cm_http_server_draining(px->srv)) {
        cm_req_reply_json(
            r, 503, json_pack("{s:s, s:s}", "status", "not_ready", "reason", "shutting down"));
        return;
    }
    struct ready_probe *p = px->ready;
    round_maybe_start(p, cm_req_id(r));
    snapshot(p);
    if (can_answer(p)) {
        ready_answer(p, r);
        return;
    }
    struct ready_waiter *w = cm_xcalloc(1, sizeof *w);
    w->p = p;
    w->r = r;
    w->next = p->waiters;
    if (p->waiters)
        p->waiters->prev = w;
    p->waiters = w;
    atomic_fetch_add(&p->sh->waiting, 1);
    cm_req_on_abort(r, waiter_abort, w);
    if (!evtimer_pending(p->wait_timer, NULL)) {
        double m = px->cfg.ready_wait_max;
        struct timeval tv = {(time_t)m, (suseconds_t)((m - (double)(time_t)m) * 1e6)};
        evtimer_add(p->wait_timer, &tv);
    }
}

void health_ready_drain(struct proxy *px)
{
    if (px->ready)
        answer_waiters(px->ready, "shutting down");
}

void health_ready_stop(struct proxy *px)
{
    struct ready_probe *p = px->ready;
    if (!p || !p->hc)
        return;
    struct health_ready *sh = p->sh;
    pthread_mutex_lock(&sh->mu);
    for (size_t i = 0; i < sh->nworkers; i++)
        if (sh->workers[i] == p) {
            sh->workers[i] = sh->workers[--sh->nworkers];
            break;
        }
    if (sh->owner == p) {
        /* Abandoned: the others' waiters start the next round. */
        sh->owner = NULL;
        sh->pending = 0;
        wake_all_locked(sh);
    }
    pthread_mutex_unlock(&sh->mu);
    cm_hc_free(p->hc); /* cancels probes in flight, no callback */
    p->hc = NULL;
}

void health_ready_free(struct proxy *px)
{
    struct ready_probe *p = px->ready;
    if (!p)
        return;
    health_ready_stop(px);
    /* The server (freed first) has already aborted every waiter. */
    event_free(p->wait_timer);
    event_free(p->wake);
    free(p->hosts);
    free(p->snap);
    free(p);
    px->ready = NULL;
}

/* One registry for every worker: counters and histograms add up there;
 * the gauges are summed here over the workers (each worker's figures are
 * atomics) or read from the shared state. */
void health_handle_metrics(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    struct proxy_totals t;
    proxy_workers_totals(px->workers, &t);
    cm_metric_set(px->m_inflight, NULL, (double)t.inflight);
    cm_metric_set(px->m_queue, NULL, (double)t.queued);
    cm_metric_set(px->m_ws_connections, NULL, (double)t.ws_sessions);
    cm_metric_set(px->m_body_memory, NULL, (double)cm_mem_budget_used());
    cm_metric_set(px->m_ready_waiting, NULL, (double)atomic_load(&px->ready->sh->waiting));
    upstream_pool_export_metrics(px->pool);
    struct evbuffer *buf = evbuffer_new();
    cm_metrics_render(px->metrics, buf);
    cm_req_reply_buffer(r, 200, CM_METRICS_CONTENT_TYPE, buf);
    evbuffer_free(buf);
}

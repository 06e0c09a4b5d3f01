/* health_handler: /health (liveness), /ready (an Ollama host usable), /metrics. */
#include "proxy.h"
#include "proxy_workers.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void health_handle_live(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/*
 * /ready: one cached probe round. At most one round is in flight: it sends
 * GET /api/version to every host at once. The result answers every /ready
 * for READY_CACHE_TTL; once it is older, the next /ready starts a round and
 * meanwhile every /ready is answered from the previous result (so it is at
 * most READY_CACHE_TTL plus one probe, CONNECT_TIMEOUT + 1 s, old). Without
 * such a result (the first probe, or the last one is older after a quiet
 * spell) /ready requests wait for the round - until one host answers usable
 * (200), all answer, or READY_WAIT_MAX passes (503 "probe in progress").
 * When the server drains, waiters get 503 "shutting down" at once. The
 * probes run on their own HTTP client with no slot cap, so they never take
 * (or wait for) one of the LLM_PROXY_MAX_UPSTREAM slots chat and embeddings
 * use: a flood of unauthenticated /ready costs at most one request per host
 * per TTL.
 *
 * Ready: at least one host answered the probe and is HEALTHY in the pool
 * (upstream_pool.h). The body lists each host's state.
 *
 * Workers: each worker keeps its own cached round (struct proxy.ready) on
 * its own client, so a flood costs at most one probe per host per TTL per
 * worker; the hosts' states it reports are the shared ones.
 */
#define READY_WAIT_MAX 1.0 /* seconds a /ready waits for a probe round */

struct ready_waiter {
    struct ready_probe *p;
    struct cm_req *r;
    struct ready_waiter *prev, *next;
};

struct ready_host {
    struct ready_probe *p;
    struct upstream_host *h;
    struct cm_hc_req *inflight;
    int ok;
    int answered; /* in the current round */
    char version[64];
    char reason[300];
};

struct ready_probe {
    struct proxy *px;
    struct cm_hc *hc; /* owned: the probes' own client */
    struct ready_host *hosts;
    size_t n;
    unsigned pending;  /* probes of the current round still in flight */
    double checked_at; /* monotonic seconds; 0 = never */
    struct ready_waiter *waiters;
    struct event *wait_timer; /* bounds the waiters' wait (owned) */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ready_answer(const struct ready_probe *p, struct cm_req *r)
{
    json_t *hosts = json_array();
    const char *version = NULL, *reason = NULL;
    for (size_t i = 0; i < p->n; i++) {
        const struct ready_host *rh = &p->hosts[i];
        enum upstream_host_state st = upstream_host_state(rh->h);
        int usable = rh->ok && st == UPSTREAM_HEALTHY;
        if (usable && !version)
            version = rh->version;
        if (!rh->ok && !reason)
            reason = rh->reason;
        json_t *o = json_pack("{s:s, s:s, s:b, s:I, s:I, s:I}", "url", upstream_host_label(rh->h),
                              "state", upstream_host_state_name(st), "reachable", rh->ok,
                              "in_flight", (json_int_t)upstream_host_in_flight(rh->h),
                              "models_installed", (json_int_t)upstream_host_installed(rh->h),
                              "models_loaded", (json_int_t)upstream_host_loaded(rh->h));
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
    waiter_unlink(w);
    free(w);
}

/* Answers every waiter: from the probe result (reason NULL) or 503 with
 * reason. */
static void answer_waiters(struct ready_probe *p, const char *reason)
{
    if (p->wait_timer)
        event_del(p->wait_timer);
    while (p->waiters) {
        struct ready_waiter *w = p->waiters;
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

/* A host of the current round has answered and is usable. */
static int round_usable(const struct ready_probe *p)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->hosts[i].answered && p->hosts[i].ok &&
            upstream_host_state(p->hosts[i].h) == UPSTREAM_HEALTHY)
            return 1;
    return 0;
}

static void probe_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct ready_host *rh = arg;
    struct ready_probe *p = rh->p;
    (void)up;
    rh->inflight = NULL;
    rh->ok = result == CM_HC_OK && status == 200;
    if (rh->ok) {
        json_t *j = cm_json_parse((const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body), NULL, 0);
        const char *v = cm_json_str(j, "version");
        snprintf(rh->version, sizeof rh->version, "%s", v ? v : "unknown");
        json_decref(j);
    } else {
        if (result != CM_HC_OK)
            snprintf(rh->reason, sizeof rh->reason, "ollama unreachable: %s",
                     errmsg ? errmsg : "error");
        else
            snprintf(rh->reason, sizeof rh->reason, "ollama answered HTTP %ld", status);
        CM_WARN(NULL, "not_ready", "host=%s %s", upstream_host_label(rh->h), rh->reason);
    }
    rh->answered = 1;
    if (--p->pending) {
        /* One usable host makes the answer "ready": no need to wait for
         * the slow ones. */
        if (round_usable(p))
            answer_waiters(p, NULL);
        return;
    }
    p->checked_at = mono_now();
    answer_waiters(p, NULL);
}

static struct ready_probe *probe_get(struct proxy *px)
{
    if (!px->ready) {
        struct ready_probe *p = cm_xcalloc(1, sizeof *p);
        p->px = px;
        p->hc = cm_hc_new(px->base);
        p->n = upstream_pool_size(px->pool);
        p->hosts = cm_xcalloc(p->n, sizeof *p->hosts);
        p->wait_timer = evtimer_new(px->base, wait_timeout_cb, p);
        for (size_t i = 0; i < p->n; i++) {
            p->hosts[i].p = p;
            p->hosts[i].h = upstream_pool_host(px->pool, i);
            snprintf(p->hosts[i].reason, sizeof p->hosts[i].reason, "probe in progress");
        }
        px->ready = p;
    }
    return px->ready;
}

/* Starts a probe round; 0 when at least one probe is in flight. */
static int round_start(struct ready_probe *p, const char *request_id)
{
    struct proxy *px = p->px;
    for (size_t i = 0; i < p->n; i++) {
        struct ready_host *rh = &p->hosts[i];
        rh->answered = 0;
        char *url = upstream_host_url(rh->h, "/api/version");
        struct cm_hc_opts o = {.method = "GET",
                               .url = url,
                               .request_id = request_id,
                               .connect_timeout_s = px->cfg.connect_timeout,
                               .total_timeout_s = px->cfg.connect_timeout + 1,
                               .max_response_bytes = 64 * 1024};
        static const struct cm_hc_callbacks cbs = {.on_done = probe_done};
        rh->inflight = cm_hc_start(p->hc, &o, &cbs, rh);
        free(url);
        if (rh->inflight) {
            p->pending++;
        } else {
            rh->ok = 0;
            snprintf(rh->reason, sizeof rh->reason, "could not start the probe");
        }
    }
    return p->pending ? 0 : -1;
}

void health_handle_ready(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    if (cm_http_server_draining(px->srv)) {
        cm_req_reply_json(
            r, 503, json_pack("{s:s, s:s}", "status", "not_ready", "reason", "shutting down"));
        return;
    }
    struct ready_probe *p = probe_get(px);
    double age = p->checked_at > 0 ? mono_now() - p->checked_at : -1;
    if (!(age >= 0 && age < px->cfg.ready_cache_ttl) && !p->pending &&
        round_start(p, cm_req_id(r)) != 0) {
        cm_req_reply_json(r, 503, json_pack("{s:s}", "status", "not_ready"));
        return;
    }
    /* Fresh, or the last result while a round runs: no older than the TTL
     * plus one probe (an older one, after a quiet spell, is not served). */
    if ((age >= 0 && age < px->cfg.ready_cache_ttl + px->cfg.connect_timeout + 1) ||
        (p->pending && round_usable(p))) {
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
    cm_req_on_abort(r, waiter_abort, w);
    if (p->wait_timer && !evtimer_pending(p->wait_timer, NULL)) {
        struct timeval tv = {
            (time_t)READY_WAIT_MAX,
            (suseconds_t)((READY_WAIT_MAX - (double)(long long)READY_WAIT_MAX) * 1e6)};
        evtimer_add(p->wait_timer, &tv);
    }
}

void health_ready_drain(struct proxy *px)
{
    if (px->ready)
        answer_waiters(px->ready, "shutting down");
}

void health_ready_free(struct proxy *px)
{
    struct ready_probe *p = px->ready;
    if (!p)
        return;
    /* The server (freed first) has already aborted every waiter. */
    cm_hc_free(p->hc); /* cancels probes in flight, no callback */
    if (p->wait_timer)
        event_free(p->wait_timer);
    free(p->hosts);
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
    upstream_pool_export_metrics(px->pool);
    struct evbuffer *buf = evbuffer_new();
    cm_metrics_render(px->metrics, buf);
    cm_req_reply_buffer(r, 200, CM_METRICS_CONTENT_TYPE, buf);
    evbuffer_free(buf);
}

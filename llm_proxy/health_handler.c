/* health_handler: /health (liveness), /ready (Ollama reachable), /metrics. */
#include "proxy.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void health_handle_live(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/*
 * /ready: one cached upstream probe. At most one GET /api/version is in
 * flight; every /ready arriving meanwhile waits for its result, and the
 * result answers every /ready for READY_CACHE_TTL. The probe runs on its
 * own HTTP client with no slot cap, so it never takes (or waits for) one of
 * the LLM_PROXY_MAX_UPSTREAM slots chat and embeddings share: a flood of
 * unauthenticated /ready costs at most one upstream request per TTL.
 */
struct ready_waiter {
    struct ready_probe *p;
    struct cm_req *r;
    struct ready_waiter *prev, *next;
};

struct ready_probe {
    struct proxy *px;
    struct cm_hc *hc; /* owned: the probe's own client */
    struct cm_hc_req *inflight;
    double checked_at; /* monotonic seconds; 0 = never */
    int ok;
    char version[64];
    char reason[300];
    struct ready_waiter *waiters;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ready_answer(const struct ready_probe *p, struct cm_req *r)
{
    if (p->ok) {
        cm_req_reply_json(r, 200,
                          json_pack("{s:s, s:s}", "status", "ready", "ollama_version", p->version));
        return;
    }
    cm_req_reply_json(r, 503, json_pack("{s:s, s:s}", "status", "not_ready", "reason", p->reason));
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

static void probe_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct ready_probe *p = arg;
    (void)up;
    p->inflight = NULL;
    p->checked_at = mono_now();
    p->ok = result == CM_HC_OK && status == 200;
    if (p->ok) {
        json_t *j = cm_json_parse((const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body), NULL, 0);
        const char *v = cm_json_str(j, "version");
        snprintf(p->version, sizeof p->version, "%s", v ? v : "unknown");
        json_decref(j);
    } else {
        if (result != CM_HC_OK)
            snprintf(p->reason, sizeof p->reason, "ollama unreachable: %s",
                     errmsg ? errmsg : "error");
        else
            snprintf(p->reason, sizeof p->reason, "ollama answered HTTP %ld", status);
        CM_WARN(NULL, "not_ready", "%s", p->reason);
    }
    while (p->waiters) {
        struct ready_waiter *w = p->waiters;
        waiter_unlink(w);
        struct cm_req *r = w->r;
        free(w);
        cm_req_on_abort(r, NULL, NULL);
        ready_answer(p, r);
    }
}

static struct ready_probe *probe_get(struct proxy *px)
{
    if (!px->ready) {
        px->ready = cm_xcalloc(1, sizeof *px->ready);
        px->ready->px = px;
        px->ready->hc = cm_hc_new(px->base);
    }
    return px->ready;
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
    if (p->checked_at > 0 && mono_now() - p->checked_at < px->cfg.ready_cache_ttl && !p->inflight) {
        ready_answer(p, r);
        return;
    }
    if (!p->inflight) {
        char *url = proxy_upstream_url(px, "/api/version");
        struct cm_hc_opts o = {.method = "GET",
                               .url = url,
                               .request_id = cm_req_id(r),
                               .connect_timeout_s = px->cfg.connect_timeout,
                               .total_timeout_s = px->cfg.connect_timeout + 1,
                               .max_response_bytes = 64 * 1024};
        static const struct cm_hc_callbacks cbs = {.on_done = probe_done};
        p->inflight = cm_hc_start(p->hc, &o, &cbs, p);
        free(url);
        if (!p->inflight) {
            cm_req_reply_json(r, 503, json_pack("{s:s}", "status", "not_ready"));
            return;
        }
    }
    struct ready_waiter *w = cm_xcalloc(1, sizeof *w);
    w->p = p;
    w->r = r;
    w->next = p->waiters;
    if (p->waiters)
        p->waiters->prev = w;
    p->waiters = w;
    cm_req_on_abort(r, waiter_abort, w);
}

void health_ready_free(struct proxy *px)
{
    struct ready_probe *p = px->ready;
    if (!p)
        return;
    /* The server (freed first) has already aborted every waiter. */
    cm_hc_free(p->hc); /* cancels a probe in flight, no callback */
    free(p);
    px->ready = NULL;
}

void health_handle_metrics(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    cm_metric_set(px->m_inflight, NULL, (double)cm_http_server_inflight(px->srv));
    cm_metric_set(px->m_queue, NULL, (double)cm_hc_queued(px->hc));
    cm_metric_set(px->m_body_memory, NULL, (double)cm_mem_budget_used());
    struct evbuffer *buf = evbuffer_new();
    cm_metrics_render(px->metrics, buf);
    cm_req_reply_buffer(r, 200, CM_METRICS_CONTENT_TYPE, buf);
    evbuffer_free(buf);
}

/* upstream_pool: Ollama hosts, health, models, choice (see upstream_pool.h). */
#include "upstream_pool.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct upstream_host {
    struct upstream_pool *pool;
    char *url;   /* base URL, no trailing slash */
    char *label; /* url without userinfo */
    struct cm_hc *hc;
    enum upstream_host_state state;
    unsigned failures; /* consecutive */
    double backoff_s;
    unsigned in_flight;
    struct event *probe_timer;
    struct cm_hc_req *probe;
    struct cm_hc_req *tags_req, *ps_req;
    struct upstream_models installed, loaded;
};

struct upstream_pool {
    struct event_base *base;
    struct upstream_pool_opts o;
    struct cm_hc *ctl; /* refresh and probes: no slot cap */
    struct upstream_host *hosts;
    size_t n;
    size_t turn; /* rotates ties */
    struct event *refresh_timer;
};

static struct timeval tv_from_s(double s)
{
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

/* ------------------------------------------------------------ state */

const char *upstream_host_state_name(enum upstream_host_state s)
{
    switch (s) {
    case UPSTREAM_HEALTHY:
        return "healthy";
    case UPSTREAM_DOWN:
        return "down";
    case UPSTREAM_PROBING:
        return "probing";
    }
    return "unknown";
}

static void refresh_host(struct upstream_host *h);
static void probe_start(evutil_socket_t fd, short what, void *arg);

static void host_set_state(struct upstream_host *h, enum upstream_host_state s, const char *why)
{
    struct upstream_pool *p = h->pool;
    enum upstream_host_state old = h->state;
    h->state = s;
    const char *labels[] = {h->label};
    cm_metric_set(p->o.m_healthy, labels, s == UPSTREAM_HEALTHY ? 1 : 0);
    if (old == s)
        return;
    if (s == UPSTREAM_HEALTHY)
        CM_INFO(NULL, "upstream_up", "host=%s was=%s", h->label, upstream_host_state_name(old));
    else if (s == UPSTREAM_DOWN && old == UPSTREAM_HEALTHY)
        CM_WARN(NULL, "upstream_down", "host=%s failures=%u reason=%s retry_in=%.2fs", h->label,
                h->failures, why ? why : "", h->backoff_s);
    if (s == UPSTREAM_DOWN) {
        struct timeval tv = tv_from_s(h->backoff_s);
        evtimer_add(h->probe_timer, &tv);
    }
    if (s == UPSTREAM_HEALTHY)
        refresh_host(h); /* at once after a recovery */
}

static int is_failure(enum cm_hc_result result, long status)
{
    if (result == CM_HC_OK)
        return status >= 500;
    return result == CM_HC_ERR_CONNECT || result == CM_HC_ERR_TIMEOUT || result == CM_HC_ERR_IO;
}

int upstream_failover_ok(enum cm_hc_result result, long status)
{
    if (result == CM_HC_OK)
        return status == 500 || status == 502 || status == 503 || status == 504;
    return result == CM_HC_ERR_CONNECT || result == CM_HC_ERR_TIMEOUT || result == CM_HC_ERR_IO;
}

/* One outcome seen on h (request, refresh or probe). */
static void host_outcome(struct upstream_host *h, enum cm_hc_result result, long status,
                         const char *errmsg)
{
    if (result == CM_HC_ERR_QUEUE_TIMEOUT || result == CM_HC_ERR_TOO_LARGE)
        return; /* says nothing about the host's health */
    if (!is_failure(result, status)) {
        h->failures = 0;
        return;
    }
    h->failures++;
    if (h->state == UPSTREAM_HEALTHY && h->failures >= h->pool->o.fail_threshold) {
        char why[240];
        if (result == CM_HC_OK)
            snprintf(why, sizeof why, "HTTP %ld", status);
        else
            snprintf(why, sizeof why, "%s: %.200s", cm_hc_result_name(result),
                     errmsg ? errmsg : "");
        h->backoff_s = h->pool->o.backoff_min_s;
        host_set_state(h, UPSTREAM_DOWN, why);
    }
}

/* ------------------------------------------------------------ probe */

static void probe_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_host *h = arg;
    (void)up;
    (void)body;
    h->probe = NULL;
    if (result == CM_HC_OK && status == 200) {
        h->failures = 0;
        host_set_state(h, UPSTREAM_HEALTHY, NULL);
        return;
    }
    double next = h->backoff_s * 2;
    h->backoff_s = next > h->pool->o.backoff_max_s ? h->pool->o.backoff_max_s : next;
    CM_INFO(NULL, "upstream_probe_failed", "host=%s reason=%.200s retry_in=%.2fs", h->label,
            result == CM_HC_OK ? "bad status" : (errmsg ? errmsg : cm_hc_result_name(result)),
            h->backoff_s);
    host_set_state(h, UPSTREAM_DOWN, NULL);
}

static void probe_start(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_host *h = arg;
    (void)fd;
    (void)what;
    if (h->state != UPSTREAM_DOWN || h->probe)
        return;
    host_set_state(h, UPSTREAM_PROBING, NULL);
    char *url = upstream_host_url(h, "/api/version");
    struct cm_hc_opts o = {.method = "GET",
                           .url = url,
                           .connect_timeout_s = h->pool->o.connect_timeout_s,
                           .total_timeout_s = h->pool->o.connect_timeout_s + 1,
                           .max_response_bytes = 64 * 1024};
    static const struct cm_hc_callbacks cbs = {.on_done = probe_done};
    h->probe = cm_hc_start(h->pool->ctl, &o, &cbs, h);
    free(url);
    if (!h->probe)
        probe_done(NULL, CM_HC_ERR_IO, 0, NULL, "could not start the probe", h);
}

/* ------------------------------------------------------------ refresh */

static void refresh_done(struct upstream_host *h, struct upstream_models *l,
                         enum cm_hc_result result, long status, struct evbuffer *body,
                         const char *errmsg, const char *what)
{
    if (result == CM_HC_OK && status == 200) {
        if (upstream_models_parse(l, (const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body)) != 0)
            CM_WARN(NULL, "upstream_bad_reply",
                    "host=%s path=%s: not a model list; kept the "
                    "previous one",
                    h->label, what);
        else
            CM_INFO(NULL, "upstream_models", "host=%s path=%s count=%zu", h->label, what, l->n);
    }
    host_outcome(h, result, status, errmsg);
}

static void tags_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                      struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_host *h = arg;
    (void)up;
    h->tags_req = NULL;
    refresh_done(h, &h->installed, result, status, body, errmsg, "/api/tags");
}

static void ps_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                    struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_host *h = arg;
    (void)up;
    h->ps_req = NULL;
    refresh_done(h, &h->loaded, result, status, body, errmsg, "/api/ps");
}

static struct cm_hc_req *refresh_get(struct upstream_host *h, const char *path,
                                     void (*done)(struct cm_hc_req *, enum cm_hc_result, long,
                                                  struct evbuffer *, const char *, void *))
{
    char *url = upstream_host_url(h, path);
    double t = h->pool->o.connect_timeout_s + 5;
    struct cm_hc_opts o = {.method = "GET",
                           .url = url,
                           .connect_timeout_s = h->pool->o.connect_timeout_s,
                           .total_timeout_s = t,
                           .max_response_bytes = UPSTREAM_MODELS_MAX_BYTES};
    struct cm_hc_callbacks cbs = {.on_done = done};
    struct cm_hc_req *req = cm_hc_start(h->pool->ctl, &o, &cbs, h);
    free(url);
    return req;
}

static void refresh_host(struct upstream_host *h)
{
    if (h->state != UPSTREAM_HEALTHY)
        return;
    if (!h->tags_req)
        h->tags_req = refresh_get(h, "/api/tags", tags_done);
    if (!h->ps_req)
        h->ps_req = refresh_get(h, "/api/ps", ps_done);
}

static void refresh_tick(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *p = arg;
    (void)fd;
    (void)what;
    for (size_t i = 0; i < p->n; i++)
        refresh_host(&p->hosts[i]);
}

/* ------------------------------------------------------------ pool */

static char *label_of(const char *url)
{
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    size_t alen = strcspn(auth, "/?#");
    const char *at = memchr(auth, '@', alen);
    if (!at)
        return cm_xstrdup(url);
    return cm_xasprintf("%.*s%s", (int)(auth - url), url, at + 1);
}

struct upstream_pool *upstream_pool_new(struct event_base *base, char *const *urls, size_t n,
                                        const struct upstream_pool_opts *o)
{
    struct upstream_pool *p = cm_xcalloc(1, sizeof *p);
    p->base = base;
    p->o = *o;
    if (p->o.fail_threshold == 0)
        p->o.fail_threshold = 1;
    p->ctl = cm_hc_new(base);
    p->n = n;
    p->hosts = cm_xcalloc(n ? n : 1, sizeof *p->hosts);
    for (size_t i = 0; i < n; i++) {
        struct upstream_host *h = &p->hosts[i];
        h->pool = p;
        h->url = cm_xstrdup(urls[i]);
        h->label = label_of(urls[i]);
        h->hc = cm_hc_new(base);
        cm_hc_set_limits(h->hc, o->max_upstream, o->queue_size, o->queue_timeout_s);
        h->probe_timer = evtimer_new(base, probe_start, h);
        h->backoff_s = o->backoff_min_s;
        host_set_state(h, UPSTREAM_HEALTHY, NULL); /* exports the gauge */
        const char *labels[] = {h->label};
        cm_metric_set(p->o.m_in_flight, labels, 0);
    }
    p->refresh_timer = event_new(base, -1, EV_PERSIST, refresh_tick, p);
    return p;
}

void upstream_pool_start(struct upstream_pool *p)
{
    for (size_t i = 0; i < p->n; i++)
        refresh_host(&p->hosts[i]);
    struct timeval tv = tv_from_s(p->o.refresh_interval_s);
    event_add(p->refresh_timer, &tv);
}

void upstream_pool_free(struct upstream_pool *p)
{
    if (!p)
        return;
    cm_hc_free(p->ctl); /* refresh and probe transfers: no callbacks */
    for (size_t i = 0; i < p->n; i++) {
        struct upstream_host *h = &p->hosts[i];
        cm_hc_free(h->hc);
        event_free(h->probe_timer);
        upstream_models_clear(&h->installed);
        upstream_models_clear(&h->loaded);
        free(h->url);
        free(h->label);
    }
    event_free(p->refresh_timer);
    free(p->hosts);
    free(p);
}

size_t upstream_pool_size(const struct upstream_pool *p)
{
    return p->n;
}

struct upstream_host *upstream_pool_host(struct upstream_pool *p, size_t i)
{
    return i < p->n ? &p->hosts[i] : NULL;
}

unsigned upstream_pool_healthy(const struct upstream_pool *p)
{
    unsigned k = 0;
    for (size_t i = 0; i < p->n; i++)
        k += p->hosts[i].state == UPSTREAM_HEALTHY;
    return k;
}

unsigned upstream_pool_queued(const struct upstream_pool *p)
{
    unsigned k = 0;
    for (size_t i = 0; i < p->n; i++)
        k += cm_hc_queued(p->hosts[i].hc);
    return k;
}

/* 3 loaded, 2 installed, 1 lists unknown, 0 absent. */
static int rank(const struct upstream_host *h, const char *model)
{
    if (!model)
        return 2;
    if (h->loaded.known && upstream_models_has(&h->loaded, model))
        return 3;
    if (!h->installed.known)
        return 1;
    return upstream_models_has(&h->installed, model) ? 2 : 0;
}

struct upstream_host *upstream_pool_pick(struct upstream_pool *p, const char *model,
                                         const struct upstream_host *exclude)
{
    struct upstream_host *best = NULL;
    int best_rank = -1;
    size_t start = p->turn++;
    for (size_t k = 0; k < p->n; k++) {
        struct upstream_host *h = &p->hosts[(start + k) % p->n];
        if (h == exclude || h->state != UPSTREAM_HEALTHY)
            continue;
        int r = rank(h, model);
        if (exclude && r == 0)
            continue;
        if (r > best_rank || (r == best_rank && h->in_flight < best->in_flight)) {
            best = h;
            best_rank = r;
        }
    }
    if (best || exclude)
        return best;
    /* No healthy host: try the least busy one anyway. */
    for (size_t k = 0; k < p->n; k++) {
        struct upstream_host *h = &p->hosts[(start + k) % p->n];
        if (!best || h->in_flight < best->in_flight)
            best = h;
    }
    return best;
}

void upstream_pool_count_failover(struct upstream_pool *p)
{
    cm_metric_add(p->o.m_failovers, NULL, 1);
}

/* ------------------------------------------------------------ host */

struct cm_hc *upstream_host_hc(struct upstream_host *h)
{
    return h->hc;
}

char *upstream_host_url(const struct upstream_host *h, const char *path)
{
    return cm_xasprintf("%s%s", h->url, path);
}

const char *upstream_host_label(const struct upstream_host *h)
{
    return h->label;
}

enum upstream_host_state upstream_host_state(const struct upstream_host *h)
{
    return h->state;
}

unsigned upstream_host_in_flight(const struct upstream_host *h)
{
    return h->in_flight;
}

long upstream_host_installed(const struct upstream_host *h)
{
    return h->installed.known ? (long)h->installed.n : -1;
}

long upstream_host_loaded(const struct upstream_host *h)
{
    return h->loaded.known ? (long)h->loaded.n : -1;
}

static void export_in_flight(struct upstream_host *h)
{
    const char *labels[] = {h->label};
    cm_metric_set(h->pool->o.m_in_flight, labels, (double)h->in_flight);
}

void upstream_host_begin(struct upstream_host *h)
{
    h->in_flight++;
    export_in_flight(h);
}

void upstream_host_release(struct upstream_host *h)
{
    if (h->in_flight)
        h->in_flight--;
    export_in_flight(h);
}

void upstream_host_end(struct upstream_host *h, const char *route, enum cm_hc_result result,
                       long status)
{
    char st[24];
    if (result == CM_HC_OK)
        snprintf(st, sizeof st, "%ld", status);
    else
        snprintf(st, sizeof st, "%s", cm_hc_result_name(result));
    const char *labels[] = {h->label, route ? route : "", st};
    cm_metric_add(h->pool->o.m_requests, labels, 1);
    upstream_host_release(h);
    host_outcome(h, result, status, NULL);
}

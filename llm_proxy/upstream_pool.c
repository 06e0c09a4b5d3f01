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
#include <pthread.h>
#include <stdatomic.h>

/* One Ollama host as every worker sees it: its health, load and model
 * lists are shared. mu guards state changes, failures, backoff_s and the
 * lists; state and in_flight are also read without it (atomics). */
struct upstream_shared {
    pthread_mutex_t mu;
    size_t index;
    char *url;            /* base URL, no trailing slash */
    char *label;          /* url without userinfo */
    _Atomic int state;    /* enum upstream_host_state */
    atomic_uint failures; /* consecutive */
    double backoff_s;
    atomic_uint in_flight; /* across workers */
    struct upstream_models installed, loaded;
};

struct upstream_hosts {
    struct upstream_pool_opts o;
    struct upstream_shared *sh;
    size_t n;
    struct upstream_pool *control; /* runs the refresh and the probes */
};

/* One host as one worker uses it: its own HTTP client (curl multi, slots). */
struct upstream_host {
    struct upstream_pool *pool;
    struct upstream_shared *sh;
    struct cm_hc *hc;
    /* control pool only */
    struct event *probe_timer;
    struct cm_hc_req *probe;
    struct cm_hc_req *tags_req, *ps_req;
};

struct upstream_pool {
    struct event_base *base;
    struct upstream_hosts *shared;
    const struct upstream_pool_opts *o; /* shared->o */
    int control;
    struct cm_hc *ctl; /* control pool: refresh and probes, no slot cap */
    struct upstream_host *hosts;
    size_t n;
    size_t turn; /* rotates ties */
    struct event *refresh_timer;
    atomic_uint queued; /* requests waiting for a slot, as of the last begin/end */
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

static struct upstream_host *control_host(const struct upstream_shared *sh,
                                          struct upstream_hosts *hs)
{
    return hs->control ? &hs->control->hosts[sh->index] : NULL;
}

/* Called with sh->mu held. Arms the control pool's probe timer on DOWN
 * (event_add is safe from any thread). Returns 1 when the host just became
 * HEALTHY (the caller refreshes its models, on the control thread). */
static int host_set_state(struct upstream_hosts *hs, struct upstream_shared *sh,
                          enum upstream_host_state s, const char *why)
{
    enum upstream_host_state old = (enum upstream_host_state)atomic_load(&sh->state);
    atomic_store(&sh->state, (int)s);
    if (old == s)
        return 0;
    if (s == UPSTREAM_HEALTHY)
        CM_INFO(NULL, "upstream_up", "host=%s was=%s", sh->label, upstream_host_state_name(old));
    else if (s == UPSTREAM_DOWN && old == UPSTREAM_HEALTHY)
        CM_WARN(NULL, "upstream_down", "host=%s failures=%u reason=%s retry_in=%.2fs", sh->label,
                atomic_load(&sh->failures), why ? why : "", sh->backoff_s);
    struct upstream_host *ch = control_host(sh, hs);
    if (s == UPSTREAM_DOWN && ch) {
        struct timeval tv = tv_from_s(sh->backoff_s);
        evtimer_add(ch->probe_timer, &tv);
    }
    return s == UPSTREAM_HEALTHY;
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

/* One outcome seen on h (request, refresh or probe), on any worker. */
static void host_outcome(struct upstream_host *h, enum cm_hc_result result, long status,
                         const char *errmsg)
{
    struct upstream_shared *sh = h->sh;
    struct upstream_hosts *hs = h->pool->shared;
    if (result == CM_HC_ERR_QUEUE_TIMEOUT || result == CM_HC_ERR_TOO_LARGE)
        return; /* says nothing about the host's health */
    if (!is_failure(result, status)) {
        if (atomic_load_explicit(&sh->failures, memory_order_relaxed))
            atomic_store(&sh->failures, 0);
        return;
    }
    pthread_mutex_lock(&sh->mu);
    unsigned failures = atomic_fetch_add(&sh->failures, 1) + 1;
    if (atomic_load(&sh->state) == UPSTREAM_HEALTHY && failures >= hs->o.fail_threshold) {
        char why[240];
        if (result == CM_HC_OK)
            snprintf(why, sizeof why, "HTTP %ld", status);
        else
            snprintf(why, sizeof why, "%s: %.200s", cm_hc_result_name(result),
                     errmsg ? errmsg : "");
        sh->backoff_s = hs->o.backoff_min_s;
        host_set_state(hs, sh, UPSTREAM_DOWN, why);
    }
    pthread_mutex_unlock(&sh->mu);
}

/* ------------------------------------------------------------ probe */

/* The probe and the refresh run on the control pool's thread only. */
static void probe_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_host *h = arg;
    struct upstream_shared *sh = h->sh;
    struct upstream_hosts *hs = h->pool->shared;
    (void)up;
    (void)body;
    h->probe = NULL;
    pthread_mutex_lock(&sh->mu);
    int up_now = 0;
    if (result == CM_HC_OK && status == 200) {
        atomic_store(&sh->failures, 0);
        up_now = host_set_state(hs, sh, UPSTREAM_HEALTHY, NULL);
    } else {
        double next = sh->backoff_s * 2;
        sh->backoff_s = next > hs->o.backoff_max_s ? hs->o.backoff_max_s : next;
        CM_INFO(NULL, "upstream_probe_failed", "host=%s reason=%.200s retry_in=%.2fs", sh->label,
                result == CM_HC_OK ? "bad status" : (errmsg ? errmsg : cm_hc_result_name(result)),
                sh->backoff_s);
        host_set_state(hs, sh, UPSTREAM_DOWN, NULL);
    }
    pthread_mutex_unlock(&sh->mu);
    if (up_now)
        refresh_host(h); /* at once after a recovery */
}

static void probe_start(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_host *h = arg;
    struct upstream_shared *sh = h->sh;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&sh->mu);
    int go = atomic_load(&sh->state) == UPSTREAM_DOWN && !h->probe;
    if (go)
        host_set_state(h->pool->shared, sh, UPSTREAM_PROBING, NULL);
    pthread_mutex_unlock(&sh->mu);
    if (!go)
        return;
    char *url = upstream_host_url(h, "/api/version");
    struct cm_hc_opts o = {.method = "GET",
                           .url = url,
                           .connect_timeout_s = h->pool->o->connect_timeout_s,
                           .total_timeout_s = h->pool->o->connect_timeout_s + 1,
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
        /* Parsed outside the lock, swapped in under it. */
        struct upstream_models fresh = {0};
        if (upstream_models_parse(&fresh, (const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body)) != 0) {
            CM_WARN(NULL, "upstream_bad_reply",
                    "host=%s path=%s: not a model list; kept the "
                    "previous one",
                    h->sh->label, what);
        } else {
            CM_INFO(NULL, "upstream_models", "host=%s path=%s count=%zu", h->sh->label, what,
                    fresh.n);
            pthread_mutex_lock(&h->sh->mu);
            struct upstream_models old = *l;
            *l = fresh;
            pthread_mutex_unlock(&h->sh->mu);
            upstream_models_clear(&old);
        }
    }
    host_outcome(h, result, status, errmsg);
}

static void tags_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                      struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_host *h = arg;
    (void)up;
    h->tags_req = NULL;
    refresh_done(h, &h->sh->installed, result, status, body, errmsg, "/api/tags");
}

static void ps_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                    struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_host *h = arg;
    (void)up;
    h->ps_req = NULL;
    refresh_done(h, &h->sh->loaded, result, status, body, errmsg, "/api/ps");
}

static struct cm_hc_req *refresh_get(struct upstream_host *h, const char *path,
                                     void (*done)(struct cm_hc_req *, enum cm_hc_result, long,
                                                  struct evbuffer *, const char *, void *))
{
    char *url = upstream_host_url(h, path);
    double t = h->pool->o->connect_timeout_s + 5;
    struct cm_hc_opts o = {.method = "GET",
                           .url = url,
                           .connect_timeout_s = h->pool->o->connect_timeout_s,
                           .total_timeout_s = t,
                           .max_response_bytes = UPSTREAM_MODELS_MAX_BYTES};
    struct cm_hc_callbacks cbs = {.on_done = done};
    struct cm_hc_req *req = cm_hc_start(h->pool->ctl, &o, &cbs, h);
    free(url);
    return req;
}

static void refresh_host(struct upstream_host *h)
{
    if (atomic_load(&h->sh->state) != UPSTREAM_HEALTHY)
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

struct upstream_hosts *upstream_hosts_new(char *const *urls, size_t n,
                                          const struct upstream_pool_opts *o)
{
    struct upstream_hosts *hs = cm_xcalloc(1, sizeof *hs);
    hs->o = *o;
    if (hs->o.fail_threshold == 0)
        hs->o.fail_threshold = 1;
    hs->n = n;
    hs->sh = cm_xcalloc(n ? n : 1, sizeof *hs->sh);
    for (size_t i = 0; i < n; i++) {
        struct upstream_shared *sh = &hs->sh[i];
        pthread_mutex_init(&sh->mu, NULL);
        sh->index = i;
        sh->url = cm_xstrdup(urls[i]);
        sh->label = label_of(urls[i]);
        sh->backoff_s = o->backoff_min_s;
        atomic_init(&sh->state, UPSTREAM_HEALTHY);
    }
    return hs;
}

void upstream_hosts_free(struct upstream_hosts *hs)
{
    if (!hs)
        return;
    for (size_t i = 0; i < hs->n; i++) {
        struct upstream_shared *sh = &hs->sh[i];
        upstream_models_clear(&sh->installed);
        upstream_models_clear(&sh->loaded);
        free(sh->url);
        free(sh->label);
        pthread_mutex_destroy(&sh->mu);
    }
    free(hs->sh);
    free(hs);
}

struct upstream_pool *upstream_pool_new(struct event_base *base, struct upstream_hosts *shared,
                                        int control)
{
    struct upstream_pool *p = cm_xcalloc(1, sizeof *p);
    p->base = base;
    p->shared = shared;
    p->o = &shared->o;
    p->control = control;
    p->n = shared->n;
    p->hosts = cm_xcalloc(p->n ? p->n : 1, sizeof *p->hosts);
    if (control) {
        p->ctl = cm_hc_new(base);
        shared->control = p;
        p->refresh_timer = event_new(base, -1, EV_PERSIST, refresh_tick, p);
    }
    for (size_t i = 0; i < p->n; i++) {
        struct upstream_host *h = &p->hosts[i];
        h->pool = p;
        h->sh = &shared->sh[i];
        h->hc = cm_hc_new(base);
        cm_hc_set_limits(h->hc, p->o->max_upstream, p->o->queue_size, p->o->queue_timeout_s);
        if (control)
            h->probe_timer = evtimer_new(base, probe_start, h);
    }
    upstream_pool_export_metrics(p);
    return p;
}

void upstream_pool_start(struct upstream_pool *p)
{
    if (!p->control)
        return;
    for (size_t i = 0; i < p->n; i++)
        refresh_host(&p->hosts[i]);
    struct timeval tv = tv_from_s(p->o->refresh_interval_s);
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
        if (h->probe_timer)
            event_free(h->probe_timer);
    }
    if (p->shared->control == p)
        p->shared->control = NULL;
    if (p->refresh_timer)
        event_free(p->refresh_timer);
    free(p->hosts);
    free(p);
}

void upstream_pool_export_metrics(struct upstream_pool *p)
{
    for (size_t i = 0; i < p->n; i++) {
        struct upstream_shared *sh = p->hosts[i].sh;
        const char *labels[] = {sh->label};
        cm_metric_set(p->o->m_healthy, labels, atomic_load(&sh->state) == UPSTREAM_HEALTHY);
        cm_metric_set(p->o->m_in_flight, labels, (double)atomic_load(&sh->in_flight));
    }
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
        k += atomic_load(&p->hosts[i].sh->state) == UPSTREAM_HEALTHY;
    return k;
}

unsigned upstream_pool_queued(const struct upstream_pool *p)
{
    return atomic_load(&((struct upstream_pool *)p)->queued);
}

/* On the pool's thread, after each transfer starts or ends. */
static void publish_queued(struct upstream_pool *p)
{
    unsigned k = 0;
    for (size_t i = 0; i < p->n; i++)
        k += cm_hc_queued(p->hosts[i].hc);
    atomic_store(&p->queued, k);
}

/* 3 loaded, 2 installed, 1 lists unknown, 0 absent. */
static int rank_locked(const struct upstream_shared *sh, const char *model)
{
    if (sh->loaded.known && upstream_models_has(&sh->loaded, model))
        return 3;
    if (!sh->installed.known)
        return 1;
    return upstream_models_has(&sh->installed, model) ? 2 : 0;
}

static int rank(struct upstream_shared *sh, const char *model)
{
    if (!model)
        return 2;
    pthread_mutex_lock(&sh->mu);
    int r = rank_locked(sh, model);
    pthread_mutex_unlock(&sh->mu);
    return r;
}

struct upstream_host *upstream_pool_pick(struct upstream_pool *p, const char *model,
                                         const struct upstream_host *exclude)
{
    struct upstream_host *best = NULL;
    int best_rank = -1;
    size_t start = p->turn++;
    for (size_t k = 0; k < p->n; k++) {
        struct upstream_host *h = &p->hosts[(start + k) % p->n];
        if (h == exclude || atomic_load(&h->sh->state) != UPSTREAM_HEALTHY)
            continue;
        int r = rank(h->sh, model);
        if (exclude && r == 0)
            continue;
        if (r > best_rank || (r == best_rank &&
                              atomic_load(&h->sh->in_flight) < atomic_load(&best->sh->in_flight))) {
            best = h;
            best_rank = r;
        }
    }
    if (best || exclude)
        return best;
    /* No healthy host: try the least busy one anyway. */
    for (size_t k = 0; k < p->n; k++) {
        struct upstream_host *h = &p->hosts[(start + k) % p->n];
        if (!best || atomic_load(&h->sh->in_flight) < atomic_load(&best->sh->in_flight))
            best = h;
    }
    return best;
}

void upstream_pool_count_failover(struct upstream_pool *p)
{
    cm_metric_add(p->o->m_failovers, NULL, 1);
}

/* ------------------------------------------------------------ host */

struct cm_hc *upstream_host_hc(struct upstream_host *h)
{
    return h->hc;
}

char *upstream_host_url(const struct upstream_host *h, const char *path)
{
    return cm_xasprintf("%s%s", h->sh->url, path);
}

const char *upstream_host_label(const struct upstream_host *h)
{
    return h->sh->label;
}

enum upstream_host_state upstream_host_state(const struct upstream_host *h)
{
    return (enum upstream_host_state)atomic_load(&h->sh->state);
}

unsigned upstream_host_in_flight(const struct upstream_host *h)
{
    return atomic_load(&h->sh->in_flight);
}

long upstream_host_installed(const struct upstream_host *h)
{
    pthread_mutex_lock(&h->sh->mu);
    long n = h->sh->installed.known ? (long)h->sh->installed.n : -1;
    pthread_mutex_unlock(&h->sh->mu);
    return n;
}

long upstream_host_loaded(const struct upstream_host *h)
{
    pthread_mutex_lock(&h->sh->mu);
    long n = h->sh->loaded.known ? (long)h->sh->loaded.n : -1;
    pthread_mutex_unlock(&h->sh->mu);
    return n;
}

void upstream_host_begin(struct upstream_host *h)
{
    atomic_fetch_add(&h->sh->in_flight, 1);
    publish_queued(h->pool);
}

void upstream_host_release(struct upstream_host *h)
{
    unsigned n = atomic_load(&h->sh->in_flight);
    while (n && !atomic_compare_exchange_weak(&h->sh->in_flight, &n, n - 1))
        ;
    publish_queued(h->pool);
}

void upstream_host_end(struct upstream_host *h, const char *route, enum cm_hc_result result,
                       long status)
{
    char st[24];
    if (result == CM_HC_OK)
        snprintf(st, sizeof st, "%ld", status);
    else
        snprintf(st, sizeof st, "%s", cm_hc_result_name(result));
    const char *labels[] = {h->sh->label, route ? route : "", st};
    cm_metric_add(h->pool->o->m_requests, labels, 1);
    upstream_host_release(h);
    host_outcome(h, result, status, NULL);
}

/*
 * upstream_pool: the Ollama hosts of OLLAMA_URL_INTERNAL (comma-separated),
 * their health, their models and their load, and the choice of one host
 * for a request.
 *
 * A host's state is one enum; every change goes through one function
 * (host_set_state in upstream_pool.c) and is logged and exported:
 *
 *   HEALTHY --UPSTREAM_FAIL_THRESHOLD consecutive failures--> DOWN
 *   DOWN    --backoff timer expires--> PROBING (one GET /api/version)
 *   PROBING --probe answered 200--> HEALTHY (models refreshed at once)
 *   PROBING --probe failed--> DOWN (backoff doubled, at most BACKOFF_MAX)
 *
 * A failure is a connection error, a timeout or a 5xx answer; any other
 * answer is a success and resets the count. Requests, the background model
 * refresh and the probe all report their outcome.
 *
 * Models: every UPSTREAM_REFRESH_INTERVAL each HEALTHY host's /api/tags
 * (installed) and /api/ps (loaded) are fetched on the pool's own client
 * (no slot cap); upstream_models.h validates and bounds the replies.
 *
 * Choice (upstream_pool_pick): among HEALTHY hosts, loaded > installed >
 * lists not known yet > model absent; among equals the fewest requests in
 * flight, ties taken in turn. With no HEALTHY host the least busy host is
 * tried anyway (one host behaves as a plain proxy).
 *
 * Workers (LLM_PROXY_WORKERS): the hosts' state is shared by every worker
 * thread (struct upstream_hosts, one per process): health (the state
 * machine above, the failure count), requests in flight on each host, and
 * the model lists. Each worker has its own upstream_pool over them: its own
 * HTTP client (curl multi) per host with LLM_PROXY_MAX_UPSTREAM slots and
 * LLM_PROXY_QUEUE_SIZE queue places, so those two limits are per worker. A
 * failure seen on any worker counts towards marking a host down, and a
 * host down is down for every worker. One pool, the control pool (worker
 * 0), runs the model refresh and the probes; the others only report
 * outcomes (a DOWN arms the control pool's probe timer from any thread).
 * Shared state: a mutex per host for state changes and the model lists,
 * atomics for the state, the failure count and the in-flight count.
 *
 * Ownership: upstream_hosts owns the shared hosts and their model lists and
 * outlives every pool; a pool owns its hosts' HTTP clients. Host pointers
 * stay valid until upstream_pool_free(). Metrics are borrowed. A pool is
 * used on its loop thread only.
 */
#ifndef UPSTREAM_POOL_H
#define UPSTREAM_POOL_H

#include "cm_http_client.h"
#include "cm_metrics.h"
#include "upstream_models.h"

#include <stddef.h>

struct event_base;
struct upstream_pool;
struct upstream_host;

enum upstream_host_state {
    UPSTREAM_HEALTHY = 0,
    UPSTREAM_DOWN,
    UPSTREAM_PROBING,
};

struct upstream_pool_opts {
    double refresh_interval_s;
    unsigned fail_threshold;
    double backoff_min_s;
    double backoff_max_s;
    double connect_timeout_s;
    unsigned max_upstream; /* per host and worker */
    unsigned queue_size;   /* per host and worker */
    double queue_timeout_s;
    struct cm_metric *m_requests;  /* host, route, status */
    struct cm_metric *m_in_flight; /* host */
    struct cm_metric *m_healthy;   /* host */
    struct cm_metric *m_failovers; /* no labels */
};

struct upstream_hosts;

/* The shared hosts of OLLAMA_URL_INTERNAL (o is copied). */
struct upstream_hosts *upstream_hosts_new(char *const *urls, size_t n,
                                          const struct upstream_pool_opts *o);
/* After every pool is freed. */
void upstream_hosts_free(struct upstream_hosts *hs);

/* One worker's pool over the shared hosts; control: this pool runs the
 * refresh and the probes (exactly one pool of a process). */
struct upstream_pool *upstream_pool_new(struct event_base *base, struct upstream_hosts *shared,
                                        int control);
/* Cancels every transfer of every host (no callbacks) and frees. */
void upstream_pool_free(struct upstream_pool *p);
/* Starts the first model refresh (and the periodic one): control pool. */
void upstream_pool_start(struct upstream_pool *p);
/* Sets the per-host gauges (healthy, in flight) from the shared state. */
void upstream_pool_export_metrics(struct upstream_pool *p);

size_t upstream_pool_size(const struct upstream_pool *p);
struct upstream_host *upstream_pool_host(struct upstream_pool *p, size_t i);
unsigned upstream_pool_healthy(const struct upstream_pool *p);
/* Requests of this pool waiting for a slot (any thread may read it). */
unsigned upstream_pool_queued(const struct upstream_pool *p);

/*
 * A host for model (NULL: any), never `exclude`. With exclude set (a
 * failover) only HEALTHY hosts that may have the model qualify; NULL when
 * none does.
 */
struct upstream_host *upstream_pool_pick(struct upstream_pool *p, const char *model,
                                         const struct upstream_host *exclude);
void upstream_pool_count_failover(struct upstream_pool *p);

/* 1 when a failure before any byte reached the client may go elsewhere. */
int upstream_failover_ok(enum cm_hc_result result, long status);

struct cm_hc *upstream_host_hc(struct upstream_host *h);
/* "<url><path>"; caller frees. */
char *upstream_host_url(const struct upstream_host *h, const char *path);
/* scheme://host:port[/path] without credentials: for logs, metrics, /ready. */
const char *upstream_host_label(const struct upstream_host *h);
enum upstream_host_state upstream_host_state(const struct upstream_host *h);
const char *upstream_host_state_name(enum upstream_host_state s);
unsigned upstream_host_in_flight(const struct upstream_host *h);
/* Models known from the last refresh; -1 before the first one. */
long upstream_host_installed(const struct upstream_host *h);
long upstream_host_loaded(const struct upstream_host *h);

/* A transfer on h starts / ends. end records the outcome (health,
 * upstream_requests_total); release only gives back the in-flight count
 * (a cancelled transfer says nothing about the host). */
void upstream_host_begin(struct upstream_host *h);
void upstream_host_end(struct upstream_host *h, const char *route, enum cm_hc_result result,
                       long status);
void upstream_host_release(struct upstream_host *h);

#endif

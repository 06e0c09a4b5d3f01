/*
 * proxy_workers: llm_proxy's event-loop threads (LLM_PROXY_WORKERS).
 *
 * Each worker is one thread running its own event_base with its own
 * struct proxy (proxy.h): its own HTTP server on the shared port (one
 * SO_REUSEPORT listening socket per worker; the kernel spreads new
 * connections over them), its own upstream pool (one curl multi per Ollama
 * host, LLM_PROXY_MAX_UPSTREAM slots each), its own /ready probe client and
 * waiters and its own WebSocket sessions (a session lives on the worker that accepted it).
 * Nothing of a worker is touched by another thread, except through:
 *
 *   - read-only after start: the configuration, the routes;
 *   - thread-safe: the metrics registry (cm_metrics.h, one mutex), the log
 *     (cm_log.h, one write per line), the memory budget (cm_mem_budget.h,
 *     atomics), the connection cap (cm_conn_guard.h, one atomic count), the
 *     Ollama hosts' health, load and models (upstream_pool.h), /ready's
 *     result and round in flight (one mutex; the worker running the round
 *     wakes the others with event_active on their wake events);
 *   - atomics a worker publishes for /metrics on any worker: requests in
 *     flight, requests queued for a slot, WebSocket sessions
 *     (proxy_workers_totals);
 *   - the drain and stop events, activated by the main thread.
 *
 * Lifecycle of a worker (all workers together):
 *
 *   created (main thread: base, pool, server, routes)
 *     -> listening (proxy_workers_listen: worker 0 binds the port, the
 *        others bind the same port, read from worker 0 when it was 0)
 *     -> running (proxy_workers_start: one thread each)
 *     -> draining (proxy_workers_drain, on SIGTERM: new requests 503,
 *        in-flight requests and streams finish, WebSockets close with 1001)
 *     -> stopped (its loop ends when nothing is in flight, or after
 *        SHUTDOWN_GRACE, or at once on proxy_workers_stop_now; a /ready
 *        round it runs is abandoned then, health_ready_stop)
 *     -> joined and freed by the main thread (proxy_workers_free).
 *
 * Ownership: proxy_workers owns its workers and everything each worker
 * created; the template's configuration, metrics, hosts, cap and /ready
 * state are borrowed and outlive it.
 */
#ifndef PROXY_WORKERS_H
#define PROXY_WORKERS_H

#include <stddef.h>

struct proxy;
struct proxy_workers;
struct event;
struct upstream_hosts;
struct cm_conn_cap;
struct health_ready;

/* The number of CPUs this process may run on (sched_getaffinity), >= 1. */
unsigned proxy_workers_default_count(void);

/*
 * n workers, each with a copy of tmpl (cfg, metrics, metric pointers) and
 * its own base, server, routes and pool over hosts; cap is the connection
 * cap they share, ready the /ready result and round they share (proxy.h).
 * Worker 0's pool runs the upstream refresh and probes.
 */
struct proxy_workers *proxy_workers_new(const struct proxy *tmpl, unsigned n,
                                        struct upstream_hosts *hosts, struct cm_conn_cap *cap,
                                        struct health_ready *ready);
/* Binds every worker's listener. Returns 0, or -1 with a reason in err. */
int proxy_workers_listen(struct proxy_workers *ws, char *err, size_t errlen);
/* The port bound (after proxy_workers_listen). */
int proxy_workers_port(const struct proxy_workers *ws);
/* Worker 0's proxy (its pool describes the shared hosts). */
struct proxy *proxy_workers_first(struct proxy_workers *ws);
unsigned proxy_workers_count(const struct proxy_workers *ws);

/* Starts the threads; when the last loop ends, main_done is activated
 * (an event of the main thread's loop). Returns 0 or -1. */
int proxy_workers_start(struct proxy_workers *ws, struct event *main_done);
/* From the main thread: every worker starts draining (graceful shutdown). */
void proxy_workers_drain(struct proxy_workers *ws);
/* From the main thread: every loop stops now (second signal). */
void proxy_workers_stop_now(struct proxy_workers *ws);
/* Joins the threads (after main_done) and frees everything. */
void proxy_workers_free(struct proxy_workers *ws);

/* Figures summed over the workers; safe from any worker. */
struct proxy_totals {
    unsigned inflight;    /* HTTP requests in flight */
    unsigned queued;      /* requests waiting for an upstream slot */
    unsigned ws_sessions; /* WebSocket sessions open */
};
void proxy_workers_totals(const struct proxy_workers *ws, struct proxy_totals *t);

#endif

/*
 * proxy: the state llm_proxy's handlers use, and the handlers' entry points.
 *
 * One struct proxy per worker thread (proxy_workers.h), owned by that
 * worker and used on its loop only: base, srv, pool, ready, ws_sessions.
 * /ready's result and round in flight are one struct health_ready for the
 * whole process (health_ready_shared_new): main owns it, creates it before
 * the workers and frees it after proxy_workers_free(); each worker's ready
 * borrows it (any thread, under its mutex).
 * Shared by every worker and read-only after start: cfg (a shallow copy of
 * main's configuration; main owns its strings), the metrics registry and
 * the metric pointers (cm_metrics is thread-safe), workers. ws_count is
 * atomic: /metrics on any worker sums it.
 */
#ifndef PROXY_H
#define PROXY_H

#include "cm_http_client.h"
#include "cm_http_server.h"
#include "cm_metrics.h"
#include "proxy_config.h"
#include "proxy_error.h"
#include "upstream_pool.h"

struct proxy_workers;

struct proxy {
    struct proxy_config cfg;
    struct event_base *base;
    struct cm_http_server *srv;
    struct upstream_pool *pool; /* the Ollama hosts (upstream_pool.h) */
    struct cm_metrics *metrics;
    struct cm_metric *m_requests;        /* route, method, status */
    struct cm_metric *m_duration;        /* route */
    struct cm_metric *m_ttft;            /* route */
    struct cm_metric *m_inflight;        /* gauge */
    struct cm_metric *m_upstream_errors; /* route, kind */
    struct cm_metric *m_tokens;          /* type */
    struct cm_metric *m_ws_connections;  /* gauge */
    struct cm_metric *m_queue;           /* gauge: requests waiting for an upstream slot */
    struct cm_metric *m_rejected;        /* reason */
    struct cm_metric *m_body_memory;     /* gauge: cm_mem_budget_used() */
    struct cm_metric *m_ready_waiting;   /* gauge: /ready waiting for a probe round */
    struct ready_probe *ready;           /* this worker's part of /ready (health_handler.c) */
    struct ws_session *ws_sessions;      /* this worker's live WebSocket sessions (ws_chat.c) */
    _Atomic unsigned ws_count;           /* its length */
    struct cm_metric *m_up_requests;     /* host, route, status */
    struct cm_metric *m_up_in_flight;    /* host */
    struct cm_metric *m_up_healthy;      /* host */
    struct cm_metric *m_up_failovers;
    struct cm_metric *m_worker_requests; /* worker */
    struct proxy_workers *workers;       /* every worker (proxy_workers.h) */
    unsigned worker;                     /* this worker's number, from 0 */
    char worker_label[12];               /* the same as text, for metrics */
};

/* Route handlers (arg = struct proxy *). */
void chat_handle(struct cm_req *r, void *arg);
void embed_handle(struct cm_req *r, void *arg);
void models_handle_list(struct cm_req *r, void *arg);
void models_handle_get(struct cm_req *r, void *arg);
void health_handle_live(struct cm_req *r, void *arg);
void health_handle_ready(struct cm_req *r, void *arg);
void health_handle_metrics(struct cm_req *r, void *arg);

/* /ready's process-wide cached probe round (health_handler.c), for n_hosts
 * hosts. The caller (main) owns it: created before the workers, freed after
 * proxy_workers_free(). Thread-safe. */
struct health_ready;
struct health_ready *health_ready_shared_new(size_t n_hosts);
void health_ready_shared_free(struct health_ready *sh);
/* Gives worker px its part of /ready (px->ready: its probe client on
 * px->base, its waiters) over sh, borrowed. Before px's thread starts. */
void health_ready_attach(struct proxy *px, struct health_ready *sh);
/* The server drains: this worker's /ready requests waiting for a probe get
 * 503 now. */
void health_ready_drain(struct proxy *px);
/* On px's thread once its loop has ended (or after it was joined): px
 * leaves sh, abandons the round it runs (its probes cancelled, another
 * worker starts the next) and wakes the others. Idempotent. */
void health_ready_stop(struct proxy *px);
/* Frees px's part of /ready (stops it first). After its server is freed. */
void health_ready_free(struct proxy *px);
void ws_handle_upgrade(struct cm_req *r, void *arg);

/* Graceful shutdown of WebSocket sessions: requests in flight finish, then
 * each session closes with 1001; new chat requests get an error. */
void ws_drain_all(struct proxy *px);

/* Replies with e as an OpenAI error. */
void proxy_reply_error(struct cm_req *r, const struct proxy_error *e);

/*
 * Turns a failed upstream exchange into a proxy_error: transport failures
 * (502 unreachable, 504 timeout) or an upstream error status with Ollama's
 * {"error":"..."} body (its message passed on). model names the requested
 * model for 404s. Also counts the failure in the upstream_errors metric.
 */
void proxy_upstream_error(struct proxy *px, const char *route, enum cm_hc_result result,
                          long status, struct evbuffer *body, const char *errmsg, const char *model,
                          struct proxy_error *out);

/* cm_hc_start() refused a transfer (upstream queue full): 429. */
void proxy_refused_error(struct proxy *px, const char *route, struct proxy_error *out);

/* Builds "<first host of OLLAMA_URL_INTERNAL><path>"; caller frees. */
char *proxy_upstream_url(const struct proxy *px, const char *path);

#endif

/*
 * proxy: the state llm_proxy's handlers use, and the handlers' entry points.
 *
 * One struct proxy per worker thread (proxy_workers.h), owned by that
 * worker and used on its loop only: base, srv, pool, ready, ws_sessions.
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
    struct ready_probe *ready;           /* /ready's cached probe (health_handler.c) */
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
/* The server drains: /ready requests waiting for a probe get 503 now. */
void health_ready_drain(struct proxy *px);
/* Frees /ready's probe state (cancels a probe in flight). */
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

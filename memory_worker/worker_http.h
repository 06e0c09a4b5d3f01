/*
 * worker_http: memory_worker's HTTP endpoint (main thread, evhttp):
 *   GET /health      200 while the process runs
 *   GET /ready       200 when Redis, PostgreSQL and llm_proxy answer and no
 *                    configuration error is pending; 503 with the reasons
 *   GET /metrics     Prometheus text
 *   POST /v1/process run a full pass now; answers with its counts
 *   POST /v1/replay-dead[?user=ID]  dead chunks back to pending
 * Slow work runs on a helper thread; its result comes back to the loop
 * through an event (libevent built with pthreads support).
 */
#ifndef WORKER_HTTP_H
#define WORKER_HTTP_H

#include "pipeline.h"

struct event_base;
struct cm_http_server;

struct worker_http;

struct worker_http *worker_http_new(struct event_base *base, struct pipeline *p,
                                    const struct worker_config *cfg, char *err, size_t errlen);
int worker_http_port(const struct worker_http *wh);
int worker_http_write_port_file(const struct worker_http *wh, const char *path);
/* Stops the readiness monitor thread and frees. */
void worker_http_free(struct worker_http *wh);

#endif

/*
 * worker_metrics: memory_worker's Prometheus metrics, safe to update from
 * any thread (one mutex around the cm_metrics registry).
 */
#ifndef WORKER_METRICS_H
#define WORKER_METRICS_H

struct evbuffer;

void wm_init(void);
void wm_free(void);
void wm_messages_claimed(long long n);
void wm_dead_messages(long long n);
/* result: created, done, retried, dead, released */
void wm_chunks(const char *result, long long n);
/* op: summary, embedding */
void wm_llm_latency(const char *op, double seconds);
void wm_queue(long long pending, long long dead, long long redis_backlog);
void wm_breaker(int open);
/* reason: invalid_user_id, wrong_type, redis_error, postgres_rejected,
 * stored_messages */
void wm_user_failure(const char *reason);
void wm_ready(int ready);
void wm_render(struct evbuffer *out);

#endif

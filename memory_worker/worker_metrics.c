/* worker_metrics: thread-safe metrics for memory_worker (see worker_metrics.h). */
#include "worker_metrics.h"

#include "cm_metrics.h"

#include <pthread.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct cm_metrics *reg;
static struct cm_metric *m_claimed, *m_dead_msgs, *m_chunks, *m_llm, *m_queue, *m_breaker, *m_ready,
    *m_user_failures;

static const double latency_buckets[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};

void wm_init(void)
{
    reg = cm_metrics_new();
    m_claimed = cm_metrics_counter(reg, "memory_worker_messages_claimed_total",
                                   "Messages taken from Redis and stored as chunks.", NULL);
    m_dead_msgs = cm_metrics_counter(reg, "memory_worker_dead_messages_total",
                                     "Redis elements kept as dead (unparsable) messages.", NULL);
    m_chunks =
        cm_metrics_counter(reg, "memory_worker_chunks_total",
                           "Chunk events: created, done, retried, dead, released.", "result");
    m_llm = cm_metrics_histogram(reg, "memory_worker_llm_request_duration_seconds",
                                 "Duration of llm_proxy calls.", "op", latency_buckets,
                                 sizeof latency_buckets / sizeof latency_buckets[0]);
    m_queue =
        cm_metrics_gauge(reg, "memory_worker_queue_depth",
                         "Work waiting: pending and dead chunks, messages in Redis.", "queue");
    m_breaker = cm_metrics_gauge(reg, "memory_worker_circuit_open",
                                 "1 while llm_proxy is considered down for everyone.", NULL);
    m_user_failures = cm_metrics_counter(
        reg, "memory_worker_user_failures_total",
        "Failures that belong to one user (skipped; the pass goes on for the others).", "reason");
    m_ready = cm_metrics_gauge(reg, "memory_worker_ready", "1 when /ready answers 200.", NULL);
}

void wm_free(void)
{
    cm_metrics_free(reg);
    reg = NULL;
}

#define LOCKED(stmt)                                                                               \
    do {                                                                                           \
        pthread_mutex_lock(&mu);                                                                   \
        if (reg) {                                                                                 \
            stmt;                                                                                  \
        }                                                                                          \
        pthread_mutex_unlock(&mu);                                                                 \
    } while (0)

void wm_messages_claimed(long long n)
{
    LOCKED(cm_metric_add(m_claimed, NULL, (double)n));
}

void wm_dead_messages(long long n)
{
    LOCKED(cm_metric_add(m_dead_msgs, NULL, (double)n));
}

void wm_chunks(const char *result, long long n)
{
    const char *l[] = {result};
    LOCKED(cm_metric_add(m_chunks, l, (double)n));
}

void wm_llm_latency(const char *op, double seconds)
{
    const char *l[] = {op};
    LOCKED(cm_metric_observe(m_llm, l, seconds));
}

void wm_queue(long long pending, long long dead, long long redis_backlog)
{
    const char *p[] = {"pending_chunks"}, *d[] = {"dead_chunks"}, *r[] = {"redis_messages"};
    LOCKED(cm_metric_set(m_queue, p, (double)pending); cm_metric_set(m_queue, d, (double)dead);
           if (redis_backlog >= 0) cm_metric_set(m_queue, r, (double)redis_backlog));
}

void wm_breaker(int open)
{
    LOCKED(cm_metric_set(m_breaker, NULL, open));
}

void wm_user_failure(const char *reason)
{
    const char *l[] = {reason};
    LOCKED(cm_metric_add(m_user_failures, l, 1));
}

void wm_ready(int ready)
{
    LOCKED(cm_metric_set(m_ready, NULL, ready));
}

void wm_render(struct evbuffer *out)
{
    LOCKED(cm_metrics_render(reg, out));
}

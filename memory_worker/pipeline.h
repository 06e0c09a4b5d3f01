/*
 * pipeline: the memory_worker's work loop, shared by WORKER_CONCURRENCY
 * threads and by on-demand passes (POST /v1/process).
 *
 *   claim pass (one thread at a time per process; replicas coordinate via
 *   Redis leases): for each user with messages, claim atomically, parse,
 *   chunk, persist every chunk (pending) and dead element in one PostgreSQL
 *   transaction, and only then delete the Redis claim (fenced: see
 *   redis_claim.h). A failure that belongs to one user (its key name, the
 *   type of its keys, data PostgreSQL refuses) is logged with the escaped
 *   user id, counted in memory_worker_user_failures_total{reason} and
 *   skipped; only Redis or PostgreSQL failing stops the pass.
 *
 *   process: lease a batch of due chunks (SKIP LOCKED + expiry), summarise
 *   each, embed the summaries in one call, store memory + mark done in one
 *   transaction per chunk. Failures follow llm_client's classification:
 *   outage -> lease released, no attempt spent, circuit breaker opens;
 *   transient -> attempt spent, exponential backoff with jitter, dead after
 *   MAX_ATTEMPTS; config -> /ready 503, lease released for RETRY_MAX.
 *   Upstream 5xx spend an attempt until CIRCUIT_5XX_THRESHOLD of them come
 *   in a row: then the breaker opens as for an outage and spends nothing.
 *
 * Circuit breaker (enum breaker_state, under pipeline.mu):
 *   CLOSED    -- outage, or the N-th consecutive 5xx -->            OPEN
 *   OPEN      -- cooldown over; one thread admitted as the probe --> HALF_OPEN
 *   HALF_OPEN -- the probe's call answers -->                       CLOSED
 *   HALF_OPEN -- the probe's call fails (outage or 5xx) -->         OPEN
 *   HALF_OPEN -- the probe found nothing to do -->                  OPEN (no wait)
 * The cooldown starts at RETRY_BASE and doubles per opening up to
 * RETRY_MAX; it resets when the breaker closes. While not CLOSED no other
 * thread calls llm_proxy, /ready is 503 with the reason.
 *
 * Nothing is ever deleted from Redis before it is committed to PostgreSQL,
 * and nothing in PostgreSQL is retried forever, so there is no loss and no
 * loop. Chunk hashes make every write idempotent, so a crash at any step
 * followed by a restart produces no duplicates.
 *
 * Thread-safety: struct pipeline is shared; each thread has its own
 * connections (struct pipeline_conn).
 */
#ifndef PIPELINE_H
#define PIPELINE_H

#include "worker_config.h"

#include <pthread.h>

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN };

struct pass_counts {
    long long messages_claimed;
    long long chunks_created;
    long long dead_messages;
    long long chunks_done;
    long long chunks_retried;
    long long chunks_dead;
    long long chunks_released;
    long long user_failures;
    long long duplicates_skipped; /* message_id already stored */
};

struct pipeline {
    const struct worker_config *cfg;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stopping;
    unsigned wake_seq;
    enum breaker_state breaker;
    double breaker_until;    /* OPEN: monotonic seconds when probing may start */
    double breaker_cooldown; /* next opening lasts this long */
    long long consecutive_5xx;
    char breaker_reason[300];
    char config_error[512]; /* "" when none */
    char schema_error[512]; /* set at start (e.g. EMBEDDING_DIM mismatch), never cleared */
    pthread_mutex_t claim_mu;
};

void pipeline_init(struct pipeline *p, const struct worker_config *cfg);
void pipeline_deinit(struct pipeline *p);
/* Asks every thread to finish its current chunk and stop. */
void pipeline_stop(struct pipeline *p);
/* Wakes idle threads for an immediate pass. */
void pipeline_wake(struct pipeline *p);
/* Copies the current configuration error ("" when none); a schema error
 * comes first. */
void pipeline_config_error(struct pipeline *p, char *out, size_t len);
/* A schema problem found at start: /ready 503 with it, no chunk processed
 * (claiming goes on) until a restart with a fixed configuration. */
void pipeline_set_schema_error(struct pipeline *p, const char *msg);
/* 1 when a schema error is set (copied to out unless NULL). */
int pipeline_schema_error(struct pipeline *p, char *out, size_t len);
/* 1 unless the breaker is CLOSED; reason (may be NULL) receives why. */
int pipeline_breaker_open(struct pipeline *p, char *reason, size_t len);

/* Thread entry (arg = struct pipeline *). */
void *pipeline_thread_main(void *arg);

/* One full pass on fresh connections: claim everything, then process every
 * due chunk. Returns 0, or -1 when Redis or PostgreSQL failed (counts still
 * report what was done). */
int pipeline_run_once(struct pipeline *p, struct pass_counts *counts, char *err, size_t errlen);

/* Backoff before attempt n+1 (n >= 1 failed attempts), with jitter. */
double pipeline_backoff(double base, double max, int failed_attempts, double unit_random);

#endif

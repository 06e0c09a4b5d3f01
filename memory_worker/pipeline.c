/* pipeline: claim, persist, summarise, embed, store (see pipeline.h). */
#include "pipeline.h"

#include "chunker.h"
#include "cm_alloc.h"
#include "cm_log.h"
#include "llm_client.h"
#include "message.h"
#include "redis_claim.h"
#include "store.h"
#include "worker_metrics.h"

#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct pipeline_conn {
    struct store *st;
    struct rclient *rc;
    struct llm_client *llm;
    unsigned seed;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void pipeline_init(struct pipeline *p, const struct worker_config *cfg)
{
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->claim_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    p->breaker_cooldown = cfg->retry_base;
}

void pipeline_deinit(struct pipeline *p)
{
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->claim_mu);
    pthread_cond_destroy(&p->cond);
}

void pipeline_stop(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

void pipeline_wake(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    p->wake_seq++;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

static int stopping(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    int s = p->stopping;
    pthread_mutex_unlock(&p->mu);
    return s;
}

/* Waits up to seconds, or until woken or stopped. */
static void idle_wait(struct pipeline *p, double seconds)
{
    pthread_mutex_lock(&p->mu);
    unsigned seq = p->wake_seq;
    double deadline = mono_now() + seconds;
    struct timespec ts = {(time_t)deadline, (long)((deadline - floor(deadline)) * 1e9)};
    while (!p->stopping && p->wake_seq == seq) {
        if (pthread_cond_timedwait(&p->cond, &p->mu, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&p->mu);
}

void pipeline_config_error(struct pipeline *p, char *out, size_t len)
{
    pthread_mutex_lock(&p->mu);
    snprintf(out, len, "%s", p->config_error);
    pthread_mutex_unlock(&p->mu);
}

static void set_config_error(struct pipeline *p, const char *msg)
{
    pthread_mutex_lock(&p->mu);
    if (!msg)
        msg = "";
    /* Truncated on purpose: the reason is for /ready and logs. */
    size_t n = strnlen(msg, sizeof p->config_error - 1);
    int fresh = strncmp(p->config_error, msg, n) != 0 || p->config_error[n] != '\0';
    memcpy(p->config_error, msg, n);
    p->config_error[n] = '\0';
    pthread_mutex_unlock(&p->mu);
    if (*msg && fresh)
        CM_ERROR(NULL, "config_error",
                 "llm_proxy rejects our requests: %s (check SUMMARY_MODEL, EMBEDDING_MODEL, "
                 "EMBEDDING_DIM, LLM_PROXY_API_KEY); /ready is 503 until this is fixed",
                 msg);
}

int pipeline_breaker_open(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    int open = p->breaker_until > mono_now();
    pthread_mutex_unlock(&p->mu);
    return open;
}

static double breaker_remaining(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    double r = p->breaker_until - mono_now();
    pthread_mutex_unlock(&p->mu);
    return r > 0 ? r : 0;
}

static void breaker_trip(struct pipeline *p, const char *why)
{
    pthread_mutex_lock(&p->mu);
    double now = mono_now();
    int was_open = p->breaker_until > now;
    double cool = p->breaker_cooldown;
    if (!was_open) {
        p->breaker_until = now + cool;
        p->breaker_cooldown = fmin(cool * 2, p->cfg->retry_max);
    }
    pthread_mutex_unlock(&p->mu);
    if (!was_open) {
        wm_breaker(1);
        CM_WARN(NULL, "circuit_open",
                "llm_proxy unavailable (%s); pausing %.1fs, no attempts spent", why, cool);
    }
}

static void breaker_success(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    int was = p->breaker_cooldown != p->cfg->retry_base || p->breaker_until != 0;
    p->breaker_until = 0;
    p->breaker_cooldown = p->cfg->retry_base;
    pthread_mutex_unlock(&p->mu);
    if (was) {
        wm_breaker(0);
        CM_INFO(NULL, "circuit_closed", "llm_proxy answers again");
    }
}

double pipeline_backoff(double base, double max, int failed_attempts, double unit_random)
{
    double d = base * pow(2, failed_attempts > 1 ? failed_attempts - 1 : 0);
    if (d > max)
        d = max;
    return d / 2 + d / 2 * unit_random; /* "equal jitter" */
}

/* Test hook: MEMORY_WORKER_FAULT=<step> kills the process at that step, so
 * the tests can prove a crash anywhere loses and duplicates nothing. */
static void fault_point(const char *step)
{
    const char *f = getenv("MEMORY_WORKER_FAULT");
    if (f && strcmp(f, step) == 0) {
        CM_WARN(NULL, "fault_injected", "step=%s", step);
        raise(SIGKILL);
    }
}

/* ------------------------------------------------------------ connections */

static void conn_drop(struct pipeline_conn *c)
{
    store_free(c->st);
    rclient_free(c->rc);
    c->st = NULL;
    c->rc = NULL;
}

static void conn_free(struct pipeline_conn *c)
{
    conn_drop(c);
    llm_client_free(c->llm);
    c->llm = NULL;
}

static int conn_pg(struct pipeline *p, struct pipeline_conn *c, char *err, size_t errlen)
{
    if (c->st && store_check(c->st) == 0)
        return 0;
    store_free(c->st);
    char *ci = worker_config_pg_conninfo(p->cfg);
    c->st = store_connect(ci, err, errlen);
    free(ci);
    return c->st ? 0 : -1;
}

static int conn_redis(struct pipeline *p, struct pipeline_conn *c, char *err, size_t errlen)
{
    if (c->rc && rclient_ping(c->rc) == 0)
        return 0;
    rclient_free(c->rc);
    c->rc = rclient_connect(p->cfg->redis_url, 5, err, errlen);
    return c->rc ? 0 : -1;
}

/* ------------------------------------------------------------ claim */

static int claim_user(struct pipeline *p, struct pipeline_conn *c, const char *user,
                      struct pass_counts *counts)
{
    const struct worker_config *cfg = p->cfg;
    enum claim_status status;
    char claim_id[64];
    if (redis_claim_take(c->rc, user, cfg->worker_id, cfg->lease_timeout, &status, claim_id,
                         sizeof claim_id) != 0)
        return -1;
    if (status == CLAIM_NONE || status == CLAIM_BUSY)
        return 0;
    fault_point("after_claim");
    char **items;
    size_t *lens, n;
    if (redis_claim_read(c->rc, user, &items, &lens, &n) != 0)
        return -1;
    struct message *msgs = cm_xcalloc(n ? n : 1, sizeof *msgs);
    struct dead_message *dead = cm_xcalloc(n ? n : 1, sizeof *dead);
    char(*reasons)[200] = cm_xcalloc(n ? n : 1, sizeof *reasons);
    size_t nm = 0, nd = 0;
    for (size_t i = 0; i < n; i++) {
        if (message_parse(items[i], lens[i], (size_t)cfg->max_message_bytes, &msgs[nm], reasons[nd],
                          sizeof reasons[nd]) == 0) {
            nm++;
        } else {
            dead[nd] = (struct dead_message){i, items[i], lens[i], reasons[nd]};
            CM_WARN(NULL, "dead_message", "user=%s claim=%s position=%zu reason=%s", user, claim_id,
                    i, reasons[nd]);
            nd++;
        }
    }
    size_t nchunks;
    struct chunk *chunks = chunker_split(msgs, nm, (size_t)cfg->chunk_max_messages,
                                         (size_t)cfg->chunk_max_chars, user, claim_id, &nchunks);
    long long created = 0;
    int rc = store_persist_claim(c->st, user, claim_id, chunks, nchunks, dead, nd, &created);
    if (rc == 0) {
        fault_point("after_persist");
        /* Committed: only now may Redis forget the batch. */
        if (redis_claim_delete(c->rc, user) != 0)
            CM_WARN(NULL, "claim_delete_failed",
                    "user=%s claim=%s: stays in Redis; the next pass re-persists it idempotently",
                    user, claim_id);
        CM_INFO(NULL, "claim_persisted",
                "user=%s claim=%s %s messages=%zu chunks=%zu new_chunks=%lld dead_messages=%zu",
                user, claim_id, status == CLAIM_RESUMED ? "resumed=true" : "resumed=false", n,
                nchunks, created, nd);
        counts->messages_claimed += (long long)nm;
        counts->chunks_created += created;
        counts->dead_messages += (long long)nd;
        wm_messages_claimed((long long)nm);
        wm_dead_messages((long long)nd);
        wm_chunks("created", created);
    } else {
        CM_WARN(NULL, "claim_persist_failed", "user=%s claim=%s: kept in Redis for the next pass",
                user, claim_id);
        redis_claim_unlease(c->rc, user);
    }
    chunker_free(chunks);
    for (size_t i = 0; i < nm; i++)
        message_deinit(&msgs[i]);
    free(msgs);
    free(dead);
    free(reasons);
    redis_claim_free_list(items, lens, n);
    return rc;
}

/* Returns messages claimed (>= 0), or -1 on an infrastructure failure. */
static long long claim_pass(struct pipeline *p, struct pipeline_conn *c, struct pass_counts *counts,
                            int block)
{
    if (block)
        pthread_mutex_lock(&p->claim_mu);
    else if (pthread_mutex_trylock(&p->claim_mu) != 0)
        return 0;
    char err[300];
    long long before = counts->messages_claimed + counts->dead_messages;
    long long rc = 0;
    if (conn_redis(p, c, err, sizeof err) != 0 || conn_pg(p, c, err, sizeof err) != 0) {
        CM_WARN(NULL, "claim_pass_skipped", "%s", err);
        rc = -1;
        goto out;
    }
    char **users;
    size_t n;
    if (redis_claim_scan_users(c->rc, &users, &n) != 0) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < n && !stopping(p); i++) {
        if (claim_user(p, c, users[i], counts) != 0) {
            rc = -1;
            break;
        }
    }
    redis_claim_free_list(users, NULL, n);
    if (rc == 0)
        rc = counts->messages_claimed + counts->dead_messages - before;
out:
    if (rc < 0)
        conn_drop(c);
    pthread_mutex_unlock(&p->claim_mu);
    return rc;
}

/* ------------------------------------------------------------ process */

static double rand_unit(struct pipeline_conn *c)
{
    return (double)rand_r(&c->seed) / ((double)RAND_MAX + 1);
}

static void record_failure(struct pipeline *p, struct pipeline_conn *c,
                           const struct leased_chunk *ch, enum llm_result res, const char *err,
                           struct pass_counts *counts)
{
    const struct worker_config *cfg = p->cfg;
    if (res == LLM_OUTAGE) {
        store_release(c->st, ch, cfg->worker_id, 0, err);
        counts->chunks_released++;
        wm_chunks("released", 1);
        CM_INFO(NULL, "chunk_released", "chunk=%lld user=%s reason=%s", ch->id, ch->user_id, err);
        return;
    }
    if (res == LLM_CONFIG) {
        store_release(c->st, ch, cfg->worker_id, cfg->retry_max, err);
        counts->chunks_released++;
        wm_chunks("released", 1);
        return;
    }
    int failed = ch->attempts + 1;
    int dead = failed >= cfg->max_attempts;
    double delay = pipeline_backoff(cfg->retry_base, cfg->retry_max, failed, rand_unit(c));
    store_fail(c->st, ch, cfg->worker_id, delay, err, dead);
    if (dead) {
        counts->chunks_dead++;
        wm_chunks("dead", 1);
        CM_ERROR(NULL, "chunk_dead",
                 "chunk=%lld user=%s attempts=%d error=%s; messages kept, replay with "
                 "--replay-dead",
                 ch->id, ch->user_id, failed, err);
    } else {
        counts->chunks_retried++;
        wm_chunks("retried", 1);
        CM_WARN(NULL, "chunk_retry", "chunk=%lld user=%s attempt=%d/%lld retry_in=%.1fs error=%s",
                ch->id, ch->user_id, failed, cfg->max_attempts, delay, err);
    }
}

/* Leases and processes one batch. Returns chunks leased (0 = none due) or -1. */
static long long process_batch(struct pipeline *p, struct pipeline_conn *c,
                               struct pass_counts *counts)
{
    const struct worker_config *cfg = p->cfg;
    char err[600];
    if (conn_pg(p, c, err, sizeof err) != 0) {
        CM_WARN(NULL, "process_skipped", "%s", err);
        return -1;
    }
    if (!c->llm)
        c->llm = llm_client_new(cfg);
    struct leased_chunk *chunks;
    size_t n;
    if (store_lease(c->st, cfg->worker_id, cfg->lease_timeout, (int)cfg->embed_batch, &chunks,
                    &n) != 0) {
        conn_drop(c);
        return -1;
    }
    char **summaries = cm_xcalloc(n ? n : 1, sizeof(char *));
    size_t *ok_idx = cm_xcalloc(n ? n : 1, sizeof(size_t));
    size_t nok = 0;
    int halted = 0; /* outage or stop: release the rest */
    for (size_t i = 0; i < n; i++) {
        struct leased_chunk *ch = &chunks[i];
        if (halted || stopping(p)) {
            store_release(c->st, ch, cfg->worker_id, 0, NULL);
            counts->chunks_released++;
            continue;
        }
        char rid[96];
        snprintf(rid, sizeof rid, "mw-%lld-%d-s", ch->id, ch->attempts + 1);
        double secs = 0;
        enum llm_result res =
            llm_summarize(c->llm, rid, ch->messages, &summaries[i], &secs, err, sizeof err);
        wm_llm_latency("summary", secs);
        if (res == LLM_OK) {
            fault_point("after_summary");
            ok_idx[nok++] = i;
            continue;
        }
        if (res == LLM_OUTAGE) {
            breaker_trip(p, err);
            halted = 1;
        }
        if (res == LLM_CONFIG)
            set_config_error(p, err);
        record_failure(p, c, ch, res, err, counts);
    }
    if (nok > 0) {
        const char **texts = cm_xcalloc(nok, sizeof(char *));
        for (size_t k = 0; k < nok; k++)
            texts[k] = summaries[ok_idx[k]];
        char rid[96];
        snprintf(rid, sizeof rid, "mw-%lld-e", chunks[ok_idx[0]].id);
        float *vecs = NULL;
        double secs = 0;
        enum llm_result res = llm_embed(c->llm, rid, texts, nok, &vecs, &secs, err, sizeof err);
        wm_llm_latency("embedding", secs);
        if (res == LLM_OUTAGE)
            breaker_trip(p, err);
        if (res == LLM_CONFIG)
            set_config_error(p, err);
        for (size_t k = 0; k < nok; k++) {
            struct leased_chunk *ch = &chunks[ok_idx[k]];
            if (res != LLM_OK) {
                record_failure(p, c, ch, res, err, counts);
                continue;
            }
            size_t dim = (size_t)cfg->embedding_dim;
            if (store_complete(c->st, ch, cfg->worker_id, texts[k], vecs + k * dim, dim,
                               cfg->summary_model, cfg->embedding_model) != 0) {
                /* The lease expires and another pass redoes it; the memory
                 * row is unique per chunk, so no duplicate can appear. */
                CM_WARN(NULL, "chunk_store_failed", "chunk=%lld user=%s", ch->id, ch->user_id);
                continue;
            }
            fault_point("after_store");
            counts->chunks_done++;
            wm_chunks("done", 1);
            CM_INFO(NULL, "chunk_done", "chunk=%lld user=%s messages=%d summary_chars=%zu", ch->id,
                    ch->user_id, ch->message_count, strlen(texts[k]));
        }
        if (res == LLM_OK) {
            breaker_success(p);
            set_config_error(p, NULL);
        }
        free(vecs);
        free(texts);
    }
    for (size_t i = 0; i < n; i++)
        free(summaries[i]);
    free(summaries);
    free(ok_idx);
    store_leased_free(chunks, n);
    return (long long)n;
}

/* ------------------------------------------------------------ loops */

void *pipeline_thread_main(void *arg)
{
    struct pipeline *p = arg;
    struct pipeline_conn c = {.seed = (unsigned)(uintptr_t)&c ^ (unsigned)time(NULL)};
    while (!stopping(p)) {
        double wait = breaker_remaining(p);
        if (wait > 0) {
            idle_wait(p, wait);
            continue;
        }
        struct pass_counts counts = {0};
        long long n = process_batch(p, &c, &counts);
        if (n > 0)
            continue;
        long long claimed = n < 0 ? -1 : claim_pass(p, &c, &counts, 0);
        if (claimed > 0)
            continue;
        idle_wait(p, p->cfg->poll_interval);
    }
    conn_free(&c);
    return NULL;
}

int pipeline_run_once(struct pipeline *p, struct pass_counts *counts, char *err, size_t errlen)
{
    struct pipeline_conn c = {.seed = (unsigned)time(NULL)};
    int rc = 0;
    memset(counts, 0, sizeof *counts);
    if (claim_pass(p, &c, counts, 1) < 0) {
        snprintf(err, errlen, "claiming from Redis into PostgreSQL failed");
        rc = -1;
    }
    /* Process what is due now; chunks that fail are scheduled later, so
     * this ends. */
    for (int i = 0; i < 10000 && !stopping(p) && breaker_remaining(p) == 0; i++) {
        long long n = process_batch(p, &c, counts);
        if (n < 0) {
            snprintf(err, errlen, "PostgreSQL failed while processing");
            rc = -1;
            break;
        }
        if (n == 0)
            break;
    }
    conn_free(&c);
    return rc;
}

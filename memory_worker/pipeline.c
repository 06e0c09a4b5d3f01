/* pipeline: claim, persist, summarise, embed, store (see pipeline.h). */
#include "pipeline.h"

#include "chunker.h"
#include "cm_alloc.h"
#include "cm_log.h"
#include "llm_client.h"
#include "message.h"
#include "redis_claim.h"
#include "store.h"
#include "user_id.h"
#include "worker_metrics.h"

#include <errno.h>
#include <stdatomic.h>
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
    snprintf(out, len, "%s", p->schema_error[0] ? p->schema_error : p->config_error);
    pthread_mutex_unlock(&p->mu);
}

void pipeline_set_schema_error(struct pipeline *p, const char *msg)
{
    pthread_mutex_lock(&p->mu);
    snprintf(p->schema_error, sizeof p->schema_error, "%s", msg ? msg : "");
    pthread_mutex_unlock(&p->mu);
}

int pipeline_schema_error(struct pipeline *p, char *out, size_t len)
{
    pthread_mutex_lock(&p->mu);
    int b = p->schema_error[0] != '\0';
    if (out)
        snprintf(out, len, "%s", p->schema_error);
    pthread_mutex_unlock(&p->mu);
    return b;
}

static int schema_blocked(struct pipeline *p)
{
    return pipeline_schema_error(p, NULL, 0);
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

int pipeline_breaker_open(struct pipeline *p, char *reason, size_t len)
{
    pthread_mutex_lock(&p->mu);
    int open = p->breaker != BREAKER_CLOSED;
    if (reason)
        snprintf(reason, len, "%s", open ? p->breaker_reason : "");
    pthread_mutex_unlock(&p->mu);
    return open;
}

/* May this thread call llm_proxy now? 1 = yes (*probe: as the half-open
 * probe); 0 = no, *wait = seconds until it may ask again. */
static int breaker_admit(struct pipeline *p, int *probe, double *wait)
{
    *probe = 0;
    *wait = 0;
    pthread_mutex_lock(&p->mu);
    int ok = 0;
    double now = mono_now();
    switch (p->breaker) {
    case BREAKER_CLOSED:
        ok = 1;
        break;
    case BREAKER_OPEN:
        if (now >= p->breaker_until) {
            p->breaker = BREAKER_HALF_OPEN;
            *probe = ok = 1;
        } else {
            *wait = p->breaker_until - now;
        }
        break;
    case BREAKER_HALF_OPEN:
        *wait = p->cfg->poll_interval; /* the probe's result wakes us */
        break;
    }
    pthread_mutex_unlock(&p->mu);
    if (*probe)
        CM_INFO(NULL, "circuit_half_open", "probing llm_proxy with one chunk");
    return ok;
}

/* CLOSED or HALF_OPEN -> OPEN (a no-op while already OPEN). */
static void breaker_trip(struct pipeline *p, const char *why)
{
    pthread_mutex_lock(&p->mu);
    double now = mono_now();
    enum breaker_state was = p->breaker;
    double cool = p->breaker_cooldown;
    if (was != BREAKER_OPEN) {
        p->breaker = BREAKER_OPEN;
        p->breaker_until = now + cool;
        p->breaker_cooldown = fmin(cool * 2, p->cfg->retry_max);
        snprintf(p->breaker_reason, sizeof p->breaker_reason, "circuit open: %s", why);
    }
    pthread_mutex_unlock(&p->mu);
    if (was != BREAKER_OPEN) {
        wm_breaker(1);
        CM_WARN(NULL, "circuit_open",
                "llm_proxy unavailable (%s); pausing %.1fs, no attempts spent", why, cool);
    }
}

/* An answer from upstream: -> CLOSED. */
static void breaker_success(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    int was = p->breaker != BREAKER_CLOSED;
    p->breaker = BREAKER_CLOSED;
    p->breaker_until = 0;
    p->breaker_cooldown = p->cfg->retry_base;
    p->consecutive_5xx = 0;
    p->breaker_reason[0] = '\0';
    if (was) {
        p->wake_seq++; /* threads waiting for the probe go on */
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->mu);
    if (was) {
        wm_breaker(0);
        CM_INFO(NULL, "circuit_closed", "llm_proxy answers again");
    }
}

/* The probe ended without an answer either way: HALF_OPEN -> OPEN, due now. */
static void breaker_probe_done(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    if (p->breaker == BREAKER_HALF_OPEN) {
        p->breaker = BREAKER_OPEN;
        p->breaker_until = mono_now();
    }
    pthread_mutex_unlock(&p->mu);
}

/* An upstream 5xx: 1 when it is counted as an outage (the breaker is, or
 * now goes, open: no attempt spent), 0 when it spends an attempt. */
static int breaker_5xx(struct pipeline *p, const char *err)
{
    pthread_mutex_lock(&p->mu);
    long long n = ++p->consecutive_5xx;
    int outage = p->breaker != BREAKER_CLOSED || n >= p->cfg->circuit_5xx_threshold;
    pthread_mutex_unlock(&p->mu);
    if (outage) {
        char why[400];
        snprintf(why, sizeof why, "%lld consecutive upstream 5xx, last: %.300s", n, err);
        breaker_trip(p, why);
    }
    return outage;
}

double pipeline_backoff(double base, double max, int failed_attempts, double unit_random)
{
    double d = base * pow(2, failed_attempts > 1 ? failed_attempts - 1 : 0);
    if (d > max)
        d = max;
    return d / 2 + d / 2 * unit_random; /* "equal jitter" */
}

/* Test hook: MEMORY_WORKER_PAUSE=<step> stops the whole process (SIGSTOP)
 * the first time it reaches that step, until the test sends SIGCONT: a
 * stalled worker, for deterministic interleavings with its peers. */
static void pause_point(const char *step)
{
    static atomic_int paused;
    const char *f = getenv("MEMORY_WORKER_PAUSE");
    if (f && strcmp(f, step) == 0 && !atomic_exchange(&paused, 1)) {
        CM_WARN(NULL, "pause_injected", "step=%s: stopped until SIGCONT", step);
        raise(SIGSTOP);
    }
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

/* A failure that belongs to one user: logged (escaped id), counted, skipped. */
static void user_failure(struct pass_counts *counts, const char *esc_user, const char *reason,
                         const char *detail)
{
    counts->user_failures++;
    wm_user_failure(reason);
    CM_ERROR(NULL, "user_failed", "user=%s reason=%s detail=\"%s\"; other users go on", esc_user,
             reason, detail);
}

/* Maps a redis_claim error on one user's keys: -1 stops the pass (Redis
 * down), 0 goes on (logged and counted, or fenced). */
static int redis_user_error(struct pass_counts *counts, struct pipeline_conn *c,
                            const char *esc_user, const char *step, int code)
{
    if (code == REDIS_CLAIM_DOWN) {
        CM_WARN(NULL, "redis_error", "%s user=%s: %s", step, esc_user, rclient_last_error(c->rc));
        return -1;
    }
    if (code == REDIS_CLAIM_FENCED) {
        CM_WARN(NULL, "claim_fenced",
                "%s user=%s: the claim was taken over by another worker; leaving it to them", step,
                esc_user);
        return 0;
    }
    char detail[300];
    snprintf(detail, sizeof detail, "%s: %s", step, rclient_last_error(c->rc));
    user_failure(counts, esc_user, "redis_error", detail);
    return 0;
}

/* One transaction for a claim's chunks and dead elements, leaving out what
 * PostgreSQL already holds (see store_claim_begin). Returns a store_err. */
static int persist(struct store *st, const char *user, long long epoch, const char *claim_id,
                   const struct chunk *chunks, size_t nchunks, const struct dead_message *dead,
                   size_t nd, long long *created, size_t *skipped)
{
    size_t total = 0;
    for (size_t i = 0; i < nchunks; i++)
        total += chunks[i].count;
    unsigned char *exists = cm_xcalloc(nchunks ? nchunks : 1, 1);
    unsigned char *drop = cm_xcalloc(total ? total : 1, 1);
    *created = 0;
    *skipped = 0;
    int rc = store_claim_begin(st, user, epoch, chunks, nchunks, exists, drop);
    if (rc == STORE_OK) {
        struct message *storage;
        size_t nkeep;
        struct chunk *keep = chunker_without(chunks, nchunks, exists, drop, &storage, &nkeep);
        size_t kept = 0;
        for (size_t i = 0; i < nkeep; i++)
            kept += keep[i].count;
        size_t stored_before = 0;
        for (size_t i = 0; i < nchunks; i++)
            if (exists[i])
                stored_before += chunks[i].count;
        *skipped = total - kept - stored_before;
        rc = store_claim_commit(st, user, claim_id, keep, nkeep, dead, nd, created);
        chunker_free(keep);
        free(storage);
    }
    free(exists);
    free(drop);
    return rc;
}

/* Returns 0 (go on with the next user) or -1 (Redis or PostgreSQL failed). */
static int claim_user(struct pipeline *p, struct pipeline_conn *c, const struct redis_user *u,
                      struct pass_counts *counts)
{
    const struct worker_config *cfg = p->cfg;
    char *esc = user_id_escape(u->id, u->len);
    int rc = 0;
    char **items = NULL;
    size_t *lens = NULL, n = 0;
    const char *problem = user_id_problem(u->id, u->len);
    if (problem) {
        long long moved = 0;
        int q = redis_claim_quarantine(c->rc, u, &moved);
        if (q != 0) {
            rc = redis_user_error(counts, c, esc, "quarantine", q);
        } else {
            char detail[200];
            snprintf(detail, sizeof detail,
                     "%s; %lld element(s) moved to user:{id}:messages:invalid", problem, moved);
            user_failure(counts, esc, "invalid_user_id", detail);
        }
        goto out;
    }
    /* The erasure epoch before the claim: a claim taken before an erasure
     * of this user is refused when persisted after it (store_claim_begin). */
    long long epoch = 0;
    int e = store_user_epoch(c->st, u->id, &epoch);
    if (e == STORE_DOWN) {
        rc = -1;
        goto out;
    }
    if (e != STORE_OK) {
        user_failure(counts, esc, "postgres_rejected", store_last_error(c->st));
        goto out;
    }
    struct claim cl;
    int r = redis_claim_take(c->rc, u, cfg->worker_id, cfg->lease_timeout, &cl);
    if (r != 0) {
        rc = redis_user_error(counts, c, esc, "claim", r);
        goto out;
    }
    if (cl.status == CLAIM_MOVED) {
        char detail[200];
        snprintf(detail, sizeof detail, "%s; moved to user:{id}:messages:invalid", cl.detail);
        user_failure(counts, esc, "wrong_type", detail);
        goto out;
    }
    if (cl.status == CLAIM_NONE || cl.status == CLAIM_BUSY)
        goto out;
    pause_point("after_claim");
    fault_point("after_claim");
    r = redis_claim_read(c->rc, u, &cl, cfg->lease_timeout, &items, &lens, &n);
    if (r != 0) {
        rc = redis_user_error(counts, c, esc, "read claim", r);
        if (r == REDIS_CLAIM_USER)
            redis_claim_unlease(c->rc, u, &cl);
        goto out;
    }
    pause_point("after_read");
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
            CM_WARN(NULL, "dead_message", "user=%s claim=%s position=%zu reason=%s", esc, cl.id, i,
                    reasons[nd]);
            nd++;
        }
    }
    size_t nchunks;
    struct chunk *chunks = chunker_split(msgs, nm, (size_t)cfg->chunk_max_messages,
                                         (size_t)cfg->chunk_max_chars, u->id, cl.id, &nchunks);
    long long created = 0;
    size_t skipped = 0, stored = nm, kept_dead = nd;
    r = redis_claim_renew(c->rc, u, &cl, cfg->lease_timeout);
    if (r != 0) {
        rc = redis_user_error(counts, c, esc, "renew claim", r);
        goto free_batch;
    }
    pause_point("before_persist");
    int st = persist(c->st, u->id, epoch, cl.id, chunks, nchunks, dead, nd, &created, &skipped);
    if (st == STORE_REJECTED) {
        /* PostgreSQL refused something the parser let through: keep every
         * element of the batch as a dead message rather than retry forever. */
        char why[400];
        snprintf(why, sizeof why, "PostgreSQL refused the batch: %.300s", store_last_error(c->st));
        struct dead_message *all = cm_xcalloc(n ? n : 1, sizeof *all);
        for (size_t i = 0; i < n; i++)
            all[i] = (struct dead_message){i, items[i], lens[i], why};
        st = persist(c->st, u->id, epoch, cl.id, NULL, 0, all, n, &created, &skipped);
        free(all);
        user_failure(counts, esc, "postgres_rejected", why);
        if (st == STORE_OK) {
            stored = 0;
            kept_dead = n;
        }
    }
    if (st == STORE_OK) {
        pause_point("after_persist");
        fault_point("after_persist");
        /* Committed: only now may Redis forget the batch (if it is still ours). */
        r = redis_claim_delete(c->rc, u, &cl);
        if (r != 0)
            rc = redis_user_error(counts, c, esc, "delete claim", r);
        CM_INFO(NULL, "claim_persisted",
                "user=%s claim=%s %s messages=%zu chunks=%zu new_chunks=%lld dead_messages=%zu "
                "duplicates_skipped=%zu",
                esc, cl.id, cl.status == CLAIM_RESUMED ? "resumed=true" : "resumed=false", n,
                nchunks, created, kept_dead, skipped);
        counts->messages_claimed += (long long)stored;
        counts->chunks_created += created;
        counts->duplicates_skipped += (long long)skipped;
        counts->dead_messages += (long long)kept_dead;
        wm_messages_claimed((long long)stored);
        wm_dead_messages((long long)kept_dead);
        wm_chunks("created", created);
    } else if (st == STORE_FENCED) {
        /* Erased meanwhile: the erasure deleted the claim keys it saw, so
         * this claim is gone (fenced) or holds only messages pushed after
         * the erasure began, which the next pass stores. */
        CM_WARN(NULL, "claim_erased", "user=%s claim=%s: %s; nothing stored", esc, cl.id,
                store_last_error(c->st));
        redis_claim_unlease(c->rc, u, &cl);
    } else if (st == STORE_REJECTED) {
        user_failure(counts, esc, "postgres_rejected",
                     "even the dead-message fallback was refused; the claim stays in Redis");
        redis_claim_unlease(c->rc, u, &cl);
    } else {
        CM_WARN(NULL, "claim_persist_failed", "user=%s claim=%s: kept in Redis for the next pass",
                esc, cl.id);
        redis_claim_unlease(c->rc, u, &cl);
        rc = -1;
    }
free_batch:
    chunker_free(chunks);
    for (size_t i = 0; i < nm; i++)
        message_deinit(&msgs[i]);
    free(msgs);
    free(dead);
    free(reasons);
out:
    redis_claim_free_list(items, lens, n);
    free(esc);
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
    struct redis_user *users;
    size_t n;
    if (redis_claim_scan_users(c->rc, &users, &n) != 0) {
        CM_WARN(NULL, "claim_pass_skipped", "redis scan: %s", rclient_last_error(c->rc));
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < n && !stopping(p); i++) {
        if (claim_user(p, c, &users[i], counts) != 0) {
            CM_WARN(NULL, "claim_pass_stopped",
                    "Redis or PostgreSQL failed after %zu of %zu users; the next pass goes on", i,
                    n);
            rc = -1;
            break;
        }
    }
    redis_claim_free_users(users, n);
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
                           const struct leased_chunk *ch, const char *owner, enum llm_result res,
                           const char *err, struct pass_counts *counts)
{
    const struct worker_config *cfg = p->cfg;
    if (res == LLM_OUTAGE) {
        store_release(c->st, ch, owner, 0, err);
        counts->chunks_released++;
        wm_chunks("released", 1);
        CM_INFO(NULL, "chunk_released", "chunk=%lld reason=%s", ch->id, err);
        return;
    }
    if (res == LLM_CONFIG) {
        store_release(c->st, ch, owner, cfg->retry_max, err);
        counts->chunks_released++;
        wm_chunks("released", 1);
        return;
    }
    int failed = ch->attempts + 1;
    int dead = failed >= cfg->max_attempts;
    double delay = pipeline_backoff(cfg->retry_base, cfg->retry_max, failed, rand_unit(c));
    store_fail(c->st, ch, owner, delay, err, dead);
    if (dead) {
        counts->chunks_dead++;
        wm_chunks("dead", 1);
        CM_ERROR(NULL, "chunk_dead",
                 "chunk=%lld attempts=%d error=%s; messages kept, replay with --replay-dead",
                 ch->id, failed, err);
    } else {
        counts->chunks_retried++;
        wm_chunks("retried", 1);
        CM_WARN(NULL, "chunk_retry", "chunk=%lld attempt=%d/%lld retry_in=%.1fs error=%s", ch->id,
                failed, cfg->max_attempts, delay, err);
    }
}

/* A 5xx spends an attempt only while it does not mean an outage. */
static enum llm_result classify_result(struct pipeline *p, enum llm_result res, const char *err)
{
    if (res == LLM_SERVER_ERROR)
        return breaker_5xx(p, err) ? LLM_OUTAGE : LLM_TRANSIENT;
    if (res == LLM_OUTAGE)
        breaker_trip(p, err);
    if (res == LLM_CONFIG)
        set_config_error(p, err);
    return res;
}

/* Leases and processes one batch (one chunk when probing). Returns chunks
 * leased (0 = none due) or -1. */
static long long process_batch(struct pipeline *p, struct pipeline_conn *c,
                               struct pass_counts *counts, int probe)
{
    const struct worker_config *cfg = p->cfg;
    char err[600];
    if (schema_blocked(p)) {
        /* No memory can be stored: leave the chunks pending. */
        if (probe)
            breaker_probe_done(p);
        return 0;
    }
    if (conn_pg(p, c, err, sizeof err) != 0) {
        CM_WARN(NULL, "process_skipped", "%s", err);
        if (probe)
            breaker_probe_done(p);
        return -1;
    }
    if (!c->llm)
        c->llm = llm_client_new(cfg);
    /* A fresh owner token per batch: only this batch's holder can act on
     * its leases. */
    char owner[200];
    snprintf(owner, sizeof owner, "%s/%08x", cfg->worker_id, (unsigned)rand_r(&c->seed));
    struct leased_chunk *chunks;
    size_t n;
    if (store_lease(c->st, owner, cfg->lease_timeout, probe ? 1 : (int)cfg->embed_batch, &chunks,
                    &n) != 0) {
        conn_drop(c);
        if (probe)
            breaker_probe_done(p);
        return -1;
    }
    char **summaries = cm_xcalloc(n ? n : 1, sizeof(char *));
    size_t *ok_idx = cm_xcalloc(n ? n : 1, sizeof(size_t));
    long long *ids = cm_xcalloc(n ? n : 1, sizeof(long long));
    for (size_t i = 0; i < n; i++)
        ids[i] = chunks[i].id;
    size_t nok = 0;
    int halted = 0; /* outage or stop: release the rest */
    for (size_t i = 0; i < n; i++) {
        struct leased_chunk *ch = &chunks[i];
        if (halted || stopping(p)) {
            store_release(c->st, ch, owner, 0, NULL);
            counts->chunks_released++;
            continue;
        }
        if (ch->parse_error) {
            char *esc = user_id_escape(ch->user_id, strlen(ch->user_id));
            user_failure(counts, esc, "stored_messages", ch->parse_error);
            free(esc);
            store_fail(c->st, ch, owner, 0, ch->parse_error, 1);
            counts->chunks_dead++;
            wm_chunks("dead", 1);
            continue;
        }
        /* Work continues: keep the leases of the whole batch (chunks
         * summarised earlier wait for the batch's embeddings call; chunks
         * given back are no longer ours and are left alone). */
        store_renew(c->st, owner, cfg->lease_timeout, ids, n);
        char rid[96];
        snprintf(rid, sizeof rid, "mw-%lld-%d-s", ch->id, ch->attempts + 1);
        double secs = 0;
        enum llm_result res =
            llm_summarize(c->llm, rid, ch->msgs, ch->nmsgs, &summaries[i], &secs, err, sizeof err);
        wm_llm_latency("summary", secs);
        if (res == LLM_OK) {
            breaker_success(p);
            fault_point("after_summary");
            ok_idx[nok++] = i;
            continue;
        }
        res = classify_result(p, res, err);
        if (res == LLM_OUTAGE)
            halted = 1;
        record_failure(p, c, ch, owner, res, err, counts);
    }
    if (nok > 0) {
        const char **texts = cm_xcalloc(nok, sizeof(char *));
        for (size_t k = 0; k < nok; k++)
            texts[k] = summaries[ok_idx[k]];
        store_renew(c->st, owner, cfg->lease_timeout, ids, n);
        char rid[96];
        snprintf(rid, sizeof rid, "mw-%lld-e", chunks[ok_idx[0]].id);
        float *vecs = NULL;
        double secs = 0;
        enum llm_result res = llm_embed(c->llm, rid, texts, nok, &vecs, &secs, err, sizeof err);
        wm_llm_latency("embedding", secs);
        if (res != LLM_OK)
            res = classify_result(p, res, err);
        for (size_t k = 0; k < nok; k++) {
            struct leased_chunk *ch = &chunks[ok_idx[k]];
            if (res != LLM_OK) {
                record_failure(p, c, ch, owner, res, err, counts);
                continue;
            }
            size_t dim = (size_t)cfg->embedding_dim;
            pause_point("before_store");
            if (store_complete(c->st, ch, owner, texts[k], vecs + k * dim, dim, cfg->summary_model,
                               cfg->embedding_model) != 0) {
                /* The lease expires and another pass redoes it; the memory
                 * row is unique per chunk, so no duplicate can appear. */
                CM_WARN(NULL, "chunk_store_failed", "chunk=%lld", ch->id);
                continue;
            }
            fault_point("after_store");
            counts->chunks_done++;
            wm_chunks("done", 1);
            CM_INFO(NULL, "chunk_done", "chunk=%lld messages=%d summary_chars=%zu", ch->id,
                    ch->message_count, strlen(texts[k]));
        }
        if (res == LLM_OK) {
            breaker_success(p);
            set_config_error(p, NULL);
        }
        free(vecs);
        free(texts);
    }
    if (probe)
        breaker_probe_done(p);
    for (size_t i = 0; i < n; i++)
        free(summaries[i]);
    free(summaries);
    free(ok_idx);
    free(ids);
    store_leased_free(chunks, n);
    return (long long)n;
}

/* ------------------------------------------------------------ loops */

void *pipeline_thread_main(void *arg)
{
    struct pipeline *p = arg;
    struct pipeline_conn c = {.seed = (unsigned)(uintptr_t)&c ^ (unsigned)time(NULL)};
    while (!stopping(p)) {
        struct pass_counts counts = {0};
        int probe;
        double wait;
        long long n = 0;
        if (breaker_admit(p, &probe, &wait)) {
            n = process_batch(p, &c, &counts, probe);
            if (n > 0)
                continue;
        }
        /* Claiming needs no LLM: it goes on while the breaker is open. */
        long long claimed = n < 0 ? -1 : claim_pass(p, &c, &counts, 0);
        if (claimed > 0 && wait == 0)
            continue;
        double idle = p->cfg->poll_interval;
        if (wait > 0 && wait < idle)
            idle = wait;
        idle_wait(p, idle);
    }
    conn_free(&c);
    return NULL;
}

int pipeline_run_once(struct pipeline *p, struct pass_counts *counts, char *err, size_t errlen)
{
    struct pipeline_conn c = {.seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)&c};
    int rc = 0;
    memset(counts, 0, sizeof *counts);
    if (claim_pass(p, &c, counts, 1) < 0) {
        snprintf(err, errlen, "claiming from Redis into PostgreSQL failed");
        rc = -1;
    }
    /* Process what is due now; chunks that fail are scheduled later, so
     * this ends. */
    for (int i = 0; i < 10000 && !stopping(p); i++) {
        int probe;
        double wait;
        if (!breaker_admit(p, &probe, &wait))
            break;
        long long n = process_batch(p, &c, counts, probe);
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

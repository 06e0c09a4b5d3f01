/*
 * store: memory_worker's PostgreSQL side (sync libpq; one connection per
 * thread, never shared).
 *
 * Tables (created and migrated at startup, versioned in schema_migrations,
 * under an advisory lock so replicas can start together):
 *   memory_chunks  pending/done/dead chunks with their messages, attempts,
 *                  next attempt, lease and last error; unique (user_id,
 *                  chunk_hash)
 *   memories       summary + embedding real[] per chunk; unique (user_id,
 *                  chunk_hash); index (user_id, created_at)
 *   dead_messages  Redis elements that could not be parsed, kept verbatim
 *   message_ids    (user_id, message_id) of every stored message that has a
 *                  message_id: the idempotency key across claims (a Redis
 *                  failover can bring a persisted claim back)
 *
 * Connections set statement_timeout and idle_in_transaction_session_timeout
 * (STORE_STATEMENT_TIMEOUT) and TCP keepalives, so a hung server or network
 * cannot hold a worker (and its leases) indefinitely.
 *
 * Errors: functions returning int answer STORE_OK (0), STORE_DOWN (the
 * server or connection failed: stop and retry later) or STORE_REJECTED (the
 * server refused this data: a per-user failure); store_last_error() has the
 * text.
 *
 * Chunks are leased with FOR UPDATE SKIP LOCKED plus a lease expiry, so
 * several replicas share the work and a crashed worker's chunks come back.
 *
 * Ownership: struct leased_chunk owns its members (store_leased_free).
 */
#ifndef STORE_H
#define STORE_H

#include "chunker.h"

#include <stddef.h>

struct store;

enum store_err { STORE_OK = 0, STORE_DOWN = -1, STORE_REJECTED = -2, STORE_FENCED = -3 };

#define STORE_STATEMENT_TIMEOUT_MS 60000
/* pgvector's HNSW indexes vectors of at most 2000 dimensions. */
#define STORE_HNSW_MAX_DIM 2000

typedef struct pg_conn PGconn;

struct store *store_connect(const char *conninfo, char *err, size_t errlen);
void store_free(struct store *st);
/* 0 when the connection works (reconnecting once if it broke). */
int store_check(struct store *st);
/* Migrations (3: pgvector with vector(dim) converted from real[], an HNSW
 * cosine index, the generated tsvector column summary_tsv over the summary
 * with text search configuration fts and its GIN index, erased_users), then
 * summary_tsv rebuilt if fts changed since. */
int store_migrate(struct store *st, long long dim, const char *fts, char *err, size_t errlen);
/* 1 when name may be a MEMORY_FTS_CONFIG (a plain identifier). */
int store_fts_config_ok(const char *name);
/* The dimension of memories.embedding (-1 when it has none). */
int store_embedding_dim(struct store *st, long long *dim);
/* The connection (borrowed), for the modules with their own queries. */
PGconn *store_pg(struct store *st);
/* "[x,y,...]": pgvector's text form; caller frees. */
char *store_vector_literal(const float *v, size_t dim);
/* Text of the last failure (borrowed, valid until the next call). */
const char *store_last_error(const struct store *st);

struct dead_message {
    size_t index;    /* position in the claim */
    const char *raw; /* borrowed */
    size_t raw_len;
    const char *error; /* borrowed */
};

/*
 * Persisting a claim is one transaction:
 *   store_claim_begin   BEGIN, lock the user (advisory, per transaction),
 *                       then report chunks whose hash is already stored
 *                       (exists[c]: a re-persisted claim) and messages to
 *                       drop (drop[k], k over every chunk's messages in
 *                       order: its message_id is already stored for this
 *                       user, or repeats an earlier one of this batch);
 *   store_claim_commit  insert the chunks (pending), their message ids and
 *                       the dead messages, COMMIT; idempotent (ON CONFLICT
 *                       DO NOTHING); *new_chunks: rows actually inserted;
 *   store_claim_abort   ROLLBACK (after a failed begin or a change of mind).
 */
/* The user's erasure epoch (0 when never erased); read before a claim is
 * taken from Redis and passed to store_claim_begin, which answers
 * STORE_FENCED (rolled back) when the user was erased in between. */
int store_user_epoch(struct store *st, const char *user_id, long long *epoch);
int store_claim_begin(struct store *st, const char *user_id, long long epoch,
                      const struct chunk *chunks, size_t nchunks, unsigned char *exists,
                      unsigned char *drop);
int store_claim_commit(struct store *st, const char *user_id, const char *claim_id,
                       const struct chunk *chunks, size_t nchunks, const struct dead_message *dead,
                       size_t ndead, long long *new_chunks);
void store_claim_abort(struct store *st);

struct leased_chunk {
    long long id;
    char *user_id;
    char *room_id; /* NULL when none */
    char *hash;
    struct message *msgs; /* parsed by message.c; NULL when parse_error */
    size_t nmsgs;
    char *parse_error; /* the stored messages could not be read back */
    int message_count;
    char *first_at, *last_at; /* timestamptz text or NULL */
    int attempts;
};

/* Leases up to max due pending chunks for lease_s seconds. */
int store_lease(struct store *st, const char *owner, double lease_s, int max,
                struct leased_chunk **out, size_t *n);
void store_leased_free(struct leased_chunk *c, size_t n);
/* Extends the leases of ids[0..n) still held by owner. */
int store_renew(struct store *st, const char *owner, double lease_s, const long long *ids,
                size_t n);

/* One statement: insert the memory and mark the chunk done, only while the
 * chunk exists (row-locked, so an erasure cannot miss the memory). */
int store_complete(struct store *st, const struct leased_chunk *c, const char *owner,
                   const char *summary, const float *embedding, size_t dim,
                   const char *summary_model, const char *embedding_model);
/* A failed attempt: attempts+1, retry after delay_s, or dead when dead != 0. */
int store_fail(struct store *st, const struct leased_chunk *c, const char *owner, double delay_s,
               const char *error, int dead);
/* Gives the lease back without spending an attempt. */
int store_release(struct store *st, const struct leased_chunk *c, const char *owner, double delay_s,
                  const char *error);
/* Dead chunks back to pending with attempts reset; user NULL = all. */
long long store_replay_dead(struct store *st, const char *user_id);
int store_counts(struct store *st, long long *pending, long long *dead);

struct store_erased {
    long long memories, chunks, dead_messages, message_ids;
};
/* Erases every row of the user in one transaction and bumps its erasure
 * epoch (erased_users), under the user's advisory lock. Idempotent. */
int store_erase_user(struct store *st, const char *user_id, struct store_erased *out);

#endif

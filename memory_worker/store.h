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

struct store *store_connect(const char *conninfo, char *err, size_t errlen);
void store_free(struct store *st);
/* 0 when the connection works (reconnecting once if it broke). */
int store_check(struct store *st);
int store_migrate(struct store *st, char *err, size_t errlen);

struct dead_message {
    size_t index;    /* position in the claim */
    const char *raw; /* borrowed */
    size_t raw_len;
    const char *error; /* borrowed */
};

/* One transaction: every chunk (pending) and dead message of a claim.
 * Idempotent (ON CONFLICT DO NOTHING). *new_chunks: rows actually inserted. */
int store_persist_claim(struct store *st, const char *user_id, const char *claim_id,
                        const struct chunk *chunks, size_t nchunks, const struct dead_message *dead,
                        size_t ndead, long long *new_chunks);

struct leased_chunk {
    long long id;
    char *user_id;
    char *room_id; /* NULL when none */
    char *hash;
    char *messages; /* JSON array text of the raw elements */
    int message_count;
    char *first_at, *last_at; /* timestamptz text or NULL */
    int attempts;
};

/* Leases up to max due pending chunks for lease_s seconds. */
int store_lease(struct store *st, const char *owner, double lease_s, int max,
                struct leased_chunk **out, size_t *n);
void store_leased_free(struct leased_chunk *c, size_t n);

/* One transaction: insert the memory, mark the chunk done. */
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

#endif

/*
 * memory_db: the memories API's PostgreSQL queries (sync libpq, on the API
 * threads' own connections, never the pipeline's): search (vector, text,
 * hybrid), list, get, delete. Every value is a parameter (PQexecParams).
 *
 * Vector search uses the HNSW index with pgvector 0.8's iterative scans
 * (hnsw.iterative_scan = relaxed_order, re-sorted by distance), so a
 * filtered search keeps scanning the graph until enough rows pass the
 * filters; when the scan still yields fewer rows than asked (its
 * hnsw.max_scan_tuples bound), the same query runs as an exact scan, so a
 * search never returns fewer than limit rows when more exist.
 *
 * Results are JSON objects {id, user_id, room_id, summary, score,
 * message_count, first_message_at, last_message_at, created_at}, times in
 * ISO 8601 UTC.
 *
 * Errors: STORE_OK, STORE_DOWN (connection or server failed: 503) or
 * STORE_REJECTED; err receives the text.
 * Ownership: *data and *row are new references for the caller.
 */
#ifndef MEMORY_DB_H
#define MEMORY_DB_H

#include "memory_query.h"
#include "store.h"

#include <jansson.h>

/* The full-text ranking ranks at most this many of the user's matching
 * memories, the most recent ones. */
#define MEMORY_DB_TEXT_CANDIDATES 500

struct memory_db;

/* Wraps st (borrowed; it must outlive the memory_db). hnsw.ef_search is
 * max(ef_search_min, rows wanted) (MEMORY_SEARCH_EF_SEARCH). */
struct memory_db *memory_db_new(struct store *st, int ef_search_min);
void memory_db_free(struct memory_db *db);

/* The rankings a search ran, for hybrid fusion and the tests. vec: the
 * query's embedding (NULL: text only), fts: the text search configuration. */
int memory_db_search(struct memory_db *db, const struct mq_search *q, const float *vec, size_t dim,
                     const char *fts, json_t **data, char *err, size_t errlen);

/* Newest first; *next_cursor NULL (malloc'd otherwise) when no more. */
int memory_db_list(struct memory_db *db, const struct mq_list *q, json_t **data, char **next_cursor,
                   char *err, size_t errlen);

/* user_id NULL: any user. *row NULL when unknown. */
int memory_db_get(struct memory_db *db, long long id, const char *user_id, json_t **row, char *err,
                  size_t errlen);
/* Deletes the memory and the chunk it was made from (its messages).
 * *deleted: 0 when unknown. */
int memory_db_delete(struct memory_db *db, long long id, const char *user_id, int *deleted,
                     char *err, size_t errlen);

#endif

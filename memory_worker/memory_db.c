/* memory_db: search, list, get and delete of memories (see memory_db.h). */
#include "memory_db.h"

#include "cm_alloc.h"
#include "cm_log.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct memory_db {
    struct store *st;
    int ef_search; /* hnsw.ef_search set on this connection (0: not yet) */
    int ef_search_min;
};

#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* Columns 0..8 of every row query. */
#define COLS                                                                                       \
    "m.id, m.user_id, m.room_id, m.summary, m.message_count, " ISO("m.first_message_at") ", " ISO( \
        "m.last_message_at") ", " ISO("m.created_at") ", "                                         \
                                                      "(extract(epoch FROM m.created_at) * "       \
                                                      "1000000)::bigint"
/* $1 user, $2 room, $3 since, $4 until (unix seconds). Times filter on the
 * memory's messages (the time it was made when they had none): the
 * memory's span overlaps [since, until]. */
#define FILTERS                                                                                    \
    "m.user_id = $1 AND ($2::text IS NULL OR m.room_id = $2) AND ($3::float8 IS NULL OR "          \
    "coalesce(m.last_message_at, m.created_at) >= to_timestamp($3::float8)) AND ($4::float8 IS "   \
    "NULL OR coalesce(m.first_message_at, m.created_at) <= to_timestamp($4::float8))"

struct memory_db *memory_db_new(struct store *st, int ef_search_min)
{
    struct memory_db *db = cm_xcalloc(1, sizeof *db);
    db->st = st;
    db->ef_search_min = ef_search_min;
    return db;
}

void memory_db_free(struct memory_db *db)
{
    free(db);
}

static int failed(struct memory_db *db, PGresult *r, const char *what, char *err, size_t errlen)
{
    PGconn *c = store_pg(db->st);
    snprintf(err, errlen, "%s: %s", what, r ? PQresultErrorMessage(r) : PQerrorMessage(c));
    size_t l = strlen(err);
    while (l && (err[l - 1] == '\n' || err[l - 1] == ' '))
        err[--l] = '\0';
    CM_WARN(NULL, "postgres_error", "%s", err);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    PQclear(r);
    if (PQstatus(c) != CONNECTION_OK || !state)
        return STORE_DOWN;
    return strncmp(state, "22", 2) == 0 || strncmp(state, "42", 2) == 0 ? STORE_REJECTED
                                                                        : STORE_DOWN;
}

static PGresult *run(struct memory_db *db, const char *sql, int n, const char *const *params,
                     const char *what, int *code, char *err, size_t errlen)
{
    PGresult *r = PQexecParams(store_pg(db->st), sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
        *code = failed(db, r, what, err, errlen);
        return NULL;
    }
    return r;
}

static json_t *str_or_null(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

/* A memory object from columns 0..7 (score added by the caller). */
static json_t *row_json(PGresult *r, int i)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer(atoll(PQgetvalue(r, i, 0))));
    json_object_set_new(o, "object", json_string("memory"));
    json_object_set_new(o, "user_id", str_or_null(r, i, 1));
    json_object_set_new(o, "room_id", str_or_null(r, i, 2));
    json_object_set_new(o, "summary", str_or_null(r, i, 3));
    json_object_set_new(o, "message_count", json_integer(atoll(PQgetvalue(r, i, 4))));
    json_object_set_new(o, "first_message_at", str_or_null(r, i, 5));
    json_object_set_new(o, "last_message_at", str_or_null(r, i, 6));
    json_object_set_new(o, "created_at", str_or_null(r, i, 7));
    return o;
}

struct filter_params {
    char since[40], until[40];
    const char *p[4];
};

static void filters(const struct mq_search *q, struct filter_params *f)
{
    snprintf(f->since, sizeof f->since, "%.6f", q->since);
    snprintf(f->until, sizeof f->until, "%.6f", q->until);
    f->p[0] = q->user_id;
    f->p[1] = q->room_id;
    f->p[2] = q->has_since ? f->since : NULL;
    f->p[3] = q->has_until ? f->until : NULL;
}

static int set_ef_search(struct memory_db *db, int want, char *err, size_t errlen)
{
    if (want < db->ef_search_min)
        want = db->ef_search_min;
    if (want > 1000)
        want = 1000;
    if (db->ef_search == want)
        return STORE_OK;
    char v[16];
    snprintf(v, sizeof v, "%d", want);
    const char *p[] = {v};
    int code = STORE_DOWN;
    PGresult *r = run(db,
                      "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', false), "
                      "set_config('hnsw.ef_search', $1, false)",
                      1, p, "hnsw settings", &code, err, errlen);
    if (!r)
        return code;
    PQclear(r);
    db->ef_search = want;
    return STORE_OK;
}

/* Vector ranking: up to fetch rows, nearest first; score = cosine
 * similarity (column 9). */
static PGresult *vector_ranking(struct memory_db *db, const struct mq_search *q, const char *vec,
                                int fetch, int *code, char *err, size_t errlen)
{
    struct filter_params f;
    filters(q, &f);
    char lim[16];
    snprintf(lim, sizeof lim, "%d", fetch);
    const char *p[] = {f.p[0], f.p[1], f.p[2], f.p[3], vec, lim};
    if ((*code = set_ef_search(db, fetch, err, errlen)) != STORE_OK)
        return NULL;
    /* relaxed_order: the index's rows come nearly in order; the outer
     * query puts them in exact order (pgvector's documented pattern). */
    PGresult *r = run(db,
                      "WITH hits AS MATERIALIZED (SELECT " COLS
                      ", m.embedding <=> $5::vector AS distance FROM memories m WHERE " FILTERS
                      " ORDER BY m.embedding <=> $5::vector LIMIT $6::int) "
                      "SELECT *, 1 - distance FROM hits ORDER BY distance, id DESC",
                      6, p, "vector search", code, err, errlen);
    if (!r || PQntuples(r) >= fetch)
        return r;
    /* Fewer than asked: the iterative scan may have stopped at
     * hnsw.max_scan_tuples before finding them all. Exact scan (the
     * "+ 0" keeps the index out of it). */
    PQclear(r);
    return run(db,
               "SELECT " COLS ", m.embedding <=> $5::vector AS distance, 1 - (m.embedding <=> "
               "$5::vector) FROM memories m WHERE " FILTERS
               " ORDER BY (m.embedding <=> $5::vector) + 0, m.id DESC LIMIT $6::int",
               6, p, "vector search (exact)", code, err, errlen);
}

/* Text ranking: memories holding any of the query's words (its lexemes
 * under the text search configuration, OR'd: a question in natural
 * language must not need every word), ranked by ts_rank_cd (column 10).
 * Each lexeme is quoted for tsquery input (backslash and quote escaped),
 * so no query text is ever read as tsquery syntax. The tsquery is made
 * first, in its own statement, so the search is planned knowing it (a
 * common word is better served from the user's recent rows than from the
 * GIN index). Bounded work: only the user's MEMORY_DB_TEXT_CANDIDATES most
 * recent matching memories are ranked. NULL with *code STORE_OK: no words. */
static PGresult *text_ranking(struct memory_db *db, const struct mq_search *q, const char *fts,
                              int fetch, int *code, char *err, size_t errlen)
{
    const char *wp[] = {fts, q->query};
    PGresult *w = run(db,
                      "SELECT coalesce(string_agg('''' || replace(replace(l, '\\', '\\\\'), '''', "
                      "'''''') || '''', ' | '), '') FROM "
                      "unnest(tsvector_to_array(to_tsvector($1::regconfig, $2))) AS l",
                      2, wp, "text query", code, err, errlen);
    if (!w)
        return NULL;
    if (!PQgetvalue(w, 0, 0)[0]) {
        PQclear(w);
        *code = STORE_OK;
        return NULL;
    }
    struct filter_params f;
    filters(q, &f);
    char lim[16], cand[16];
    snprintf(lim, sizeof lim, "%d", fetch);
    snprintf(cand, sizeof cand, "%d", MEMORY_DB_TEXT_CANDIDATES);
    const char *p[] = {f.p[0], f.p[1], f.p[2], f.p[3], PQgetvalue(w, 0, 0), lim, cand};
    PGresult *r = run(db,
                      "WITH cand AS MATERIALIZED (SELECT " COLS
                      ", 0 AS d, ts_rank_cd(m.summary_tsv, $5::tsquery) AS rank FROM memories m "
                      "WHERE " FILTERS " AND m.summary_tsv @@ $5::tsquery ORDER BY m.created_at "
                      "DESC, m.id DESC LIMIT $7::int) "
                      "SELECT * FROM cand ORDER BY rank DESC, id DESC LIMIT $6::int",
                      7, p, "text search", code, err, errlen);
    PQclear(w);
    return r;
}

int memory_db_search(struct memory_db *db, const struct mq_search *q, const float *vec, size_t dim,
                     const char *fts, json_t **data, char *err, size_t errlen)
{
    *data = NULL;
    int code = STORE_OK;
    int hybrid = q->mode == MQ_HYBRID && vec;
    int fetch = hybrid ? q->limit * MQ_OVERFETCH : q->limit;
    PGresult *vr = NULL, *tr = NULL;
    if (vec) {
        char *lit = store_vector_literal(vec, dim);
        vr = vector_ranking(db, q, lit, fetch, &code, err, errlen);
        free(lit);
        if (!vr)
            return code;
    }
    if (q->mode != MQ_VECTOR) {
        tr = text_ranking(db, q, fts, fetch, &code, err, errlen);
        if (!tr && code != STORE_OK) {
            PQclear(vr);
            return code;
        }
    }
    json_t *out = json_array();
    if (!hybrid) {
        PGresult *r = vr ? vr : tr; /* NULL: a text search without words */
        for (int i = 0; r && i < PQntuples(r) && i < q->limit; i++) {
            json_t *o = row_json(r, i);
            json_object_set_new(o, "score", json_real(atof(PQgetvalue(r, i, 10))));
            json_array_append_new(out, o);
        }
    } else {
        size_t nv = (size_t)PQntuples(vr), nt = tr ? (size_t)PQntuples(tr) : 0;
        long long *vids = cm_xcalloc(nv + 1, sizeof *vids),
                  *tids = cm_xcalloc(nt + 1, sizeof *tids);
        for (size_t i = 0; i < nv; i++)
            vids[i] = atoll(PQgetvalue(vr, (int)i, 0));
        for (size_t i = 0; i < nt; i++)
            tids[i] = atoll(PQgetvalue(tr, (int)i, 0));
        struct mq_fused *fused = cm_xcalloc(nv + nt + 1, sizeof *fused);
        size_t n = mq_rrf(vids, nv, tids, nt, MQ_RRF_K, fused);
        for (size_t k = 0; k < n && k < (size_t)q->limit; k++) {
            PGresult *r = fused[k].vector_rank ? vr : tr;
            int row = (fused[k].vector_rank ? fused[k].vector_rank : fused[k].text_rank) - 1;
            json_t *o = row_json(r, row);
            json_object_set_new(o, "score", json_real(fused[k].score));
            json_array_append_new(out, o);
        }
        free(vids);
        free(tids);
        free(fused);
    }
    PQclear(vr);
    PQclear(tr);
    *data = out;
    return STORE_OK;
}

int memory_db_list(struct memory_db *db, const struct mq_list *q, json_t **data, char **next_cursor,
                   char *err, size_t errlen)
{
    *data = NULL;
    *next_cursor = NULL;
    char us[24], id[24], lim[16];
    snprintf(us, sizeof us, "%lld", q->cursor_us);
    snprintf(id, sizeof id, "%lld", q->cursor_id);
    snprintf(lim, sizeof lim, "%d", q->limit + 1);
    const char *p[] = {q->user_id, q->room_id, q->has_cursor ? us : NULL, q->has_cursor ? id : NULL,
                       lim};
    int code = STORE_DOWN;
    /* The cursor is (created_at in microseconds, id) of the last row shown:
     * strictly older rows follow (ties on created_at broken by id). */
    PGresult *r = run(db,
                      "SELECT " COLS " FROM memories m WHERE m.user_id = $1 AND ($2::text IS NULL "
                      "OR m.room_id = $2) AND ($3::bigint IS NULL OR (m.created_at, m.id) < "
                      "(timestamptz 'epoch' + $3::bigint * interval '1 microsecond', $4::bigint)) "
                      "ORDER BY m.created_at DESC, m.id DESC LIMIT $5::int",
                      5, p, "list memories", &code, err, errlen);
    if (!r)
        return code;
    json_t *out = json_array();
    int n = PQntuples(r);
    for (int i = 0; i < n && i < q->limit; i++)
        json_array_append_new(out, row_json(r, i));
    if (n > q->limit)
        *next_cursor = mq_cursor_encode(atoll(PQgetvalue(r, q->limit - 1, 8)),
                                        atoll(PQgetvalue(r, q->limit - 1, 0)));
    PQclear(r);
    *data = out;
    return STORE_OK;
}

int memory_db_get(struct memory_db *db, long long id, const char *user_id, json_t **row, char *err,
                  size_t errlen)
{
    *row = NULL;
    char ids[24];
    snprintf(ids, sizeof ids, "%lld", id);
    const char *p[] = {ids, user_id};
    int code = STORE_DOWN;
    PGresult *r = run(db,
                      "SELECT " COLS " FROM memories m WHERE m.id = $1::bigint AND ($2::text IS "
                      "NULL OR m.user_id = $2)",
                      2, p, "get memory", &code, err, errlen);
    if (!r)
        return code;
    if (PQntuples(r) == 1)
        *row = row_json(r, 0);
    PQclear(r);
    return STORE_OK;
}

int memory_db_delete(struct memory_db *db, long long id, const char *user_id, int *deleted,
                     char *err, size_t errlen)
{
    *deleted = 0;
    char ids[24];
    snprintf(ids, sizeof ids, "%lld", id);
    const char *p[] = {ids, user_id};
    int code = STORE_DOWN;
    PGresult *r = run(db,
                      "WITH d AS (DELETE FROM memories WHERE id = $1::bigint AND ($2::text IS NULL "
                      "OR user_id = $2) RETURNING user_id, chunk_hash), c AS (DELETE FROM "
                      "memory_chunks mc USING d WHERE mc.user_id = d.user_id AND mc.chunk_hash = "
                      "d.chunk_hash RETURNING 1) SELECT (SELECT count(*) FROM d), (SELECT "
                      "count(*) FROM c)",
                      2, p, "delete memory", &code, err, errlen);
    if (!r)
        return code;
    *deleted = atoi(PQgetvalue(r, 0, 0)) > 0;
    PQclear(r);
    return STORE_OK;
}

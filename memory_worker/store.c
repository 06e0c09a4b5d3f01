/* store: PostgreSQL persistence for memory_worker (see store.h). */
#include "store.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store {
    PGconn *conn;
    char last_error[300];
};

static const char *const MIGRATIONS[] = {
    /* 1: chunks, memories, dead messages */
    "CREATE TABLE memory_chunks ("
    "  id bigserial PRIMARY KEY,"
    "  user_id text NOT NULL,"
    "  room_id text,"
    "  chunk_hash text NOT NULL,"
    "  claim_id text NOT NULL,"
    "  messages jsonb NOT NULL,"
    "  message_count integer NOT NULL,"
    "  first_message_at timestamptz,"
    "  last_message_at timestamptz,"
    "  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),"
    "  attempts integer NOT NULL DEFAULT 0,"
    "  next_attempt_at timestamptz NOT NULL DEFAULT now(),"
    "  lease_owner text,"
    "  lease_expires_at timestamptz,"
    "  last_error text,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  updated_at timestamptz NOT NULL DEFAULT now(),"
    "  UNIQUE (user_id, chunk_hash));"
    "CREATE INDEX memory_chunks_due ON memory_chunks (next_attempt_at) WHERE state = 'pending';"
    "CREATE TABLE memories ("
    "  id bigserial PRIMARY KEY,"
    "  user_id text NOT NULL,"
    "  room_id text,"
    "  summary text NOT NULL,"
    "  embedding real[] NOT NULL,"
    "  summary_model text NOT NULL,"
    "  embedding_model text NOT NULL,"
    "  message_count integer NOT NULL,"
    "  first_message_at timestamptz,"
    "  last_message_at timestamptz,"
    "  chunk_hash text NOT NULL,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  UNIQUE (user_id, chunk_hash));"
    "CREATE INDEX memories_user_created ON memories (user_id, created_at);"
    "CREATE TABLE dead_messages ("
    "  id bigserial PRIMARY KEY,"
    "  user_id text NOT NULL,"
    "  claim_id text NOT NULL,"
    "  position integer NOT NULL,"
    "  raw bytea NOT NULL,"
    "  error text NOT NULL,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  UNIQUE (user_id, claim_id, position));",
    /* 2: message ids, the idempotency key across claims (backfilled) */
    "CREATE TABLE message_ids ("
    "  user_id text NOT NULL,"
    "  message_id text NOT NULL,"
    "  chunk_hash text NOT NULL,"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (user_id, message_id));"
    "INSERT INTO message_ids (user_id, message_id, chunk_hash) "
    "SELECT c.user_id, m->>'message_id', c.chunk_hash FROM memory_chunks c, "
    "jsonb_array_elements(c.messages) m WHERE jsonb_typeof(m->'message_id') IN ('string', "
    "'number') ON CONFLICT DO NOTHING;",
};

static void notice_cb(void *arg, const char *message)
{
    (void)arg;
    CM_DEBUG(NULL, "postgres_notice", "%s", message);
}

struct store *store_connect(const char *conninfo, char *err, size_t errlen)
{
    /* conninfo (a URL or key=value string) is expanded first; the later
     * keywords add TCP keepalives, so a dead peer is noticed. */
    static const char *const keys[] = {"dbname",
                                       "keepalives",
                                       "keepalives_idle",
                                       "keepalives_interval",
                                       "keepalives_count",
                                       "tcp_user_timeout",
                                       NULL};
    const char *values[] = {conninfo, "1", "30", "10", "3", "60000", NULL};
    PGconn *c = PQconnectdbParams(keys, values, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(err, errlen, "postgres: %s", PQerrorMessage(c));
        size_t l = strlen(err);
        while (l && (err[l - 1] == '\n' || err[l - 1] == ' '))
            err[--l] = '\0';
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, notice_cb, NULL);
    char sql[200];
    snprintf(sql, sizeof sql,
             "SET statement_timeout = %d; SET idle_in_transaction_session_timeout = %d",
             STORE_STATEMENT_TIMEOUT_MS, STORE_STATEMENT_TIMEOUT_MS);
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        snprintf(err, errlen, "postgres: cannot set timeouts: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    struct store *st = cm_xcalloc(1, sizeof *st);
    st->conn = c;
    return st;
}

const char *store_last_error(const struct store *st)
{
    return st->last_error;
}

void store_free(struct store *st)
{
    if (!st)
        return;
    PQfinish(st->conn);
    free(st);
}

int store_check(struct store *st)
{
    /* No PQreset: a new connection must set its timeouts again, so the
     * caller reconnects with store_connect(). */
    if (PQstatus(st->conn) != CONNECTION_OK)
        return -1;
    PGresult *r = PQexec(st->conn, "SELECT 1");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok ? 0 : -1;
}

/* Records the failure of r (or of the connection) and classifies it. */
static int fail(struct store *st, const char *what, PGresult *r)
{
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(st->conn);
    snprintf(st->last_error, sizeof st->last_error, "%s: %s", what, msg && *msg ? msg : "failed");
    size_t l = strlen(st->last_error);
    while (l && (st->last_error[l - 1] == '\n' || st->last_error[l - 1] == ' '))
        st->last_error[--l] = '\0';
    CM_WARN(NULL, "postgres_error", "%s", st->last_error);
    if (PQstatus(st->conn) != CONNECTION_OK)
        return STORE_DOWN;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    /* The data was refused: data exception, integrity, limits, syntax. */
    if (state && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
                  strncmp(state, "54", 2) == 0 || strncmp(state, "42", 2) == 0))
        return STORE_REJECTED;
    return STORE_DOWN;
}

/* Runs a statement; returns the result (caller PQclear) or NULL after
 * recording the failure (*code, when given, receives its class). */
static PGresult *exec_c(struct store *st, const char *what, const char *sql, int n,
                        const char *const *params, int *code)
{
    PGresult *r = PQexecParams(st->conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        int c = fail(st, what, r);
        if (code)
            *code = c;
        PQclear(r);
        return NULL;
    }
    return r;
}

static PGresult *exec(struct store *st, const char *what, const char *sql, int n,
                      const char *const *params)
{
    return exec_c(st, what, sql, n, params, NULL);
}

static int exec_ok(struct store *st, const char *what, const char *sql, int n,
                   const char *const *params)
{
    PGresult *r = exec(st, what, sql, n, params);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

static void rollback(struct store *st)
{
    PGresult *r = PQexec(st->conn, "ROLLBACK");
    PQclear(r);
}

/* Migration 3 (pgvector, full text, erasure epochs): built at run time, as
 * the vector's dimension and the text search configuration are settings.
 * The dimension is that of the rows already stored (a real[] column being
 * converted keeps its vectors), else EMBEDDING_DIM. */
static char *migration3(struct store *st, long long dim, const char *fts)
{
    PGresult *r = exec(st, "stored dimension",
                       "SELECT array_length(embedding, 1) FROM memories LIMIT 1", 0, NULL);
    if (r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        dim = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return cm_xasprintf(
        "CREATE EXTENSION IF NOT EXISTS vector;"
        "ALTER TABLE memories ALTER COLUMN embedding TYPE vector(%lld) USING "
        "embedding::vector(%lld);"
        "%s"
        "ALTER TABLE memories ADD COLUMN summary_tsv tsvector GENERATED ALWAYS AS "
        "(to_tsvector('%s'::regconfig, summary)) STORED;"
        "CREATE INDEX memories_summary_tsv ON memories USING gin (summary_tsv);"
        "CREATE INDEX memories_user_created_id ON memories (user_id, created_at DESC, id DESC);"
        "DROP INDEX memories_user_created;"
        "CREATE TABLE erased_users ("
        "  user_id text PRIMARY KEY,"
        "  epoch bigint NOT NULL,"
        "  erased_at timestamptz NOT NULL DEFAULT now());",
        dim, dim,
        dim <= STORE_HNSW_MAX_DIM
            ? "CREATE INDEX memories_embedding_hnsw ON memories USING hnsw "
              "(embedding vector_cosine_ops) WITH (m = 24, ef_construction = 128);"
            : "",
        fts);
}

/* The generated tsvector column follows MEMORY_FTS_CONFIG: rebuilt (with
 * its index) when the configuration changed since it was made. */
static int ensure_fts(struct store *st, const char *fts, char *err, size_t errlen)
{
    const char *p[] = {fts};
    PGresult *r = exec(st, "text search configuration",
                       "SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1)", 1, p);
    int known = r && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!known) {
        snprintf(err, errlen,
                 "MEMORY_FTS_CONFIG=%s is not a text search configuration of this PostgreSQL "
                 "(see \\dF in psql; 'simple' always exists)",
                 fts);
        return -1;
    }
    r = exec(st, "tsvector expression",
             "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON "
             "a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'memories'::regclass "
             "AND a.attname = 'summary_tsv'",
             0, NULL);
    if (!r || PQntuples(r) != 1) {
        PQclear(r);
        snprintf(err, errlen, "postgres: memories.summary_tsv is missing");
        return -1;
    }
    char *want = cm_xasprintf("'%s'::regconfig", fts);
    int same = strstr(PQgetvalue(r, 0, 0), want) != NULL;
    free(want);
    PQclear(r);
    if (same)
        return 0;
    char *sql = cm_xasprintf(
        "BEGIN; ALTER TABLE memories DROP COLUMN summary_tsv;"
        "ALTER TABLE memories ADD COLUMN summary_tsv tsvector GENERATED ALWAYS AS "
        "(to_tsvector('%s'::regconfig, summary)) STORED;"
        "CREATE INDEX memories_summary_tsv ON memories USING gin (summary_tsv); COMMIT",
        fts);
    PGresult *mr = PQexec(st->conn, sql);
    free(sql);
    int ok = PQresultStatus(mr) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "postgres: cannot rebuild summary_tsv for MEMORY_FTS_CONFIG=%s: %s",
                 fts, PQresultErrorMessage(mr));
    PQclear(mr);
    if (!ok) {
        rollback(st);
        return -1;
    }
    CM_INFO(NULL, "fts_rebuilt", "summary_tsv now uses the text search configuration %s", fts);
    return 0;
}

int store_fts_config_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

int store_migrate(struct store *st, long long dim, const char *fts, char *err, size_t errlen)
{
    if (!store_fts_config_ok(fts)) {
        snprintf(err, errlen,
                 "MEMORY_FTS_CONFIG must be a plain identifier (e.g. simple, english)");
        return -1;
    }
    /* Waiting for another replica's migration, or a backfill, may take
     * longer than STORE_STATEMENT_TIMEOUT_MS: no limit here. */
    if (exec_ok(st, "no statement timeout", "SET statement_timeout = 0", 0, NULL) != 0 ||
        exec_ok(st, "advisory lock", "SELECT pg_advisory_lock(727274)", 0, NULL) != 0 ||
        exec_ok(st, "migrations table",
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())",
                0, NULL) != 0) {
        snprintf(err, errlen, "postgres: cannot prepare migrations: %s", PQerrorMessage(st->conn));
        return -1;
    }
    int rc = 0;
    PGresult *r = exec(st, "schema version",
                       "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL);
    int have = r ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    int want = (int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]) + 1;
    for (int v = have + 1; have >= 0 && v <= want; v++) {
        char ver[16];
        snprintf(ver, sizeof ver, "%d", v);
        const char *params[] = {ver};
        PGresult *mr = NULL;
        char *built = NULL;
        if (exec_ok(st, "begin", "BEGIN", 0, NULL) != 0 ||
            (v == 3 && !(built = migration3(st, dim, fts))) ||
            /* several statements: the simple protocol */
            PQresultStatus(mr = PQexec(st->conn, built ? built : MIGRATIONS[v - 1])) !=
                PGRES_COMMAND_OK ||
            exec_ok(st, "record migration", "INSERT INTO schema_migrations (version) VALUES ($1)",
                    1, params) != 0 ||
            exec_ok(st, "commit", "COMMIT", 0, NULL) != 0) {
            const char *why = mr ? PQresultErrorMessage(mr) : PQerrorMessage(st->conn);
            snprintf(err, errlen, "postgres: migration %d failed: %s%s", v, why,
                     v == 3 && strstr(why, "extension") ? " (pgvector is not installed on the "
                                                          "PostgreSQL server: see README, "
                                                          "\"Getting pgvector\")"
                                                        : "");
            PQclear(mr);
            free(built);
            rollback(st);
            rc = -1;
            break;
        }
        PQclear(mr);
        free(built);
        CM_INFO(NULL, "schema_migrated", "version=%d", v);
    }
    if (have < 0) {
        snprintf(err, errlen, "postgres: cannot read the schema version");
        rc = -1;
    }
    if (rc == 0 && ensure_fts(st, fts, err, errlen) != 0)
        rc = -1;
    exec_ok(st, "advisory unlock", "SELECT pg_advisory_unlock(727274)", 0, NULL);
    char sql[64];
    snprintf(sql, sizeof sql, "SET statement_timeout = %d", STORE_STATEMENT_TIMEOUT_MS);
    if (exec_ok(st, "statement timeout", sql, 0, NULL) != 0 && rc == 0) {
        snprintf(err, errlen, "postgres: cannot restore statement_timeout");
        rc = -1;
    }
    return rc;
}

static char *ts_param(double ts)
{
    return ts < 0 ? NULL : cm_xasprintf("%.6f", ts);
}

int store_user_epoch(struct store *st, const char *user_id, long long *epoch)
{
    const char *p[] = {user_id};
    int code = STORE_DOWN;
    PGresult *r = exec_c(st, "erasure epoch",
                         "SELECT coalesce((SELECT epoch FROM erased_users WHERE user_id = $1), 0)",
                         1, p, &code);
    if (!r)
        return code;
    *epoch = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return STORE_OK;
}

int store_claim_begin(struct store *st, const char *user_id, long long epoch,
                      const struct chunk *chunks, size_t nchunks, unsigned char *exists,
                      unsigned char *drop)
{
    int code = STORE_DOWN;
    const char *p1[] = {user_id};
    if (exec_ok(st, "begin", "BEGIN", 0, NULL) != 0)
        return STORE_DOWN;
    PGresult *r =
        exec_c(st, "lock user", "SELECT pg_advisory_xact_lock(727275, hashtext($1))", 1, p1, &code);
    if (!r)
        goto fail;
    PQclear(r);
    /* Under the user's lock, which erasure takes too: a claim taken before
     * an erasure (read the epoch, then claimed) is never stored after it. */
    r = exec_c(st, "erasure epoch",
               "SELECT coalesce((SELECT epoch FROM erased_users WHERE user_id = $1), 0)", 1, p1,
               &code);
    if (!r)
        goto fail;
    long long now_epoch = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (now_epoch != epoch) {
        rollback(st);
        snprintf(st->last_error, sizeof st->last_error,
                 "the user was erased after this claim was taken (epoch %lld, now %lld)", epoch,
                 now_epoch);
        return STORE_FENCED;
    }
    json_t *hashes = json_array(), *ids = json_array();
    size_t total = 0;
    for (size_t c = 0; c < nchunks; c++) {
        json_array_append_new(hashes, json_string(chunks[c].hash));
        for (size_t k = 0; k < chunks[c].count; k++, total++) {
            const char *mid = chunks[c].msgs[k].message_id;
            json_array_append_new(ids, mid ? json_string(mid) : json_null());
        }
    }
    char *hj = cm_json_dumps(hashes), *ij = cm_json_dumps(ids);
    json_decref(hashes);
    json_decref(ids);
    const char *p2[] = {user_id, hj};
    r = exec_c(st, "known chunks",
               "SELECT h.i FROM jsonb_array_elements_text($2::jsonb) WITH ORDINALITY AS h(hash, i) "
               "WHERE EXISTS (SELECT 1 FROM memory_chunks c WHERE c.user_id = $1 AND "
               "c.chunk_hash = h.hash)",
               2, p2, &code);
    if (r) {
        memset(exists, 0, nchunks);
        for (int i = 0; i < PQntuples(r); i++) {
            long long idx = atoll(PQgetvalue(r, i, 0)) - 1;
            if (idx >= 0 && (size_t)idx < nchunks)
                exists[idx] = 1;
        }
        PQclear(r);
        const char *p3[] = {user_id, ij};
        r = exec_c(
            st, "known message ids",
            "SELECT t.i FROM (SELECT mid, i, row_number() OVER (PARTITION BY mid ORDER BY i) "
            "AS rn FROM jsonb_array_elements_text($2::jsonb) WITH ORDINALITY AS e(mid, i)) t "
            "WHERE t.mid IS NOT NULL AND (t.rn > 1 OR EXISTS (SELECT 1 FROM message_ids m "
            "WHERE m.user_id = $1 AND m.message_id = t.mid))",
            2, p3, &code);
    }
    free(hj);
    free(ij);
    if (!r)
        goto fail;
    memset(drop, 0, total);
    for (int i = 0; i < PQntuples(r); i++) {
        long long idx = atoll(PQgetvalue(r, i, 0)) - 1;
        if (idx >= 0 && (size_t)idx < total)
            drop[idx] = 1;
    }
    PQclear(r);
    return STORE_OK;
fail:
    rollback(st);
    return code;
}

void store_claim_abort(struct store *st)
{
    rollback(st);
}

int store_claim_commit(struct store *st, const char *user_id, const char *claim_id,
                       const struct chunk *chunks, size_t nchunks, const struct dead_message *dead,
                       size_t ndead, long long *new_chunks)
{
    int code = STORE_DOWN;
    *new_chunks = 0;
    for (size_t i = 0; i < nchunks; i++) {
        const struct chunk *c = &chunks[i];
        char *msgs = message_array_json(c->msgs, c->count);
        json_t *ids = json_array();
        for (size_t k = 0; k < c->count; k++)
            if (c->msgs[k].message_id)
                json_array_append_new(ids, json_string(c->msgs[k].message_id));
        char *idj = cm_json_dumps(ids);
        json_decref(ids);
        char count[16];
        snprintf(count, sizeof count, "%zu", c->count);
        char *first = ts_param(c->first_ts), *last = ts_param(c->last_ts);
        const char *params[] = {user_id, c->room_id, c->hash, claim_id, msgs, count, first, last};
        PGresult *r =
            exec_c(st, "insert chunk",
                   "INSERT INTO memory_chunks (user_id, room_id, chunk_hash, claim_id, "
                   "messages, message_count, first_message_at, last_message_at) VALUES "
                   "($1, $2, $3, $4, $5::jsonb, $6, to_timestamp($7::float8), "
                   "to_timestamp($8::float8)) ON CONFLICT (user_id, chunk_hash) DO NOTHING",
                   8, params, &code);
        const char *idp[] = {user_id, idj, c->hash};
        int ok = r != NULL;
        if (r) {
            *new_chunks += atoll(PQcmdTuples(r));
            PQclear(r);
            r = exec_c(st, "insert message ids",
                       "INSERT INTO message_ids (user_id, message_id, chunk_hash) SELECT $1, mid, "
                       "$3 FROM jsonb_array_elements_text($2::jsonb) AS t(mid) ON CONFLICT DO "
                       "NOTHING",
                       3, idp, &code);
            ok = r != NULL;
            PQclear(r);
        }
        free(msgs);
        free(idj);
        free(first);
        free(last);
        if (!ok)
            goto fail;
    }
    for (size_t i = 0; i < ndead; i++) {
        char pos[24];
        snprintf(pos, sizeof pos, "%zu", dead[i].index);
        const char *values[] = {user_id, claim_id, pos, dead[i].raw, dead[i].error};
        int lengths[] = {0, 0, 0, (int)dead[i].raw_len, 0};
        int formats[] = {0, 0, 0, 1, 0};
        PGresult *r = PQexecParams(
            st->conn,
            "INSERT INTO dead_messages (user_id, claim_id, position, raw, error) VALUES ($1, $2, "
            "$3, $4, $5) ON CONFLICT (user_id, claim_id, position) DO NOTHING",
            5, NULL, values, lengths, formats, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            code = fail(st, "insert dead message", r);
            PQclear(r);
            goto fail;
        }
        PQclear(r);
    }
    PGresult *r = exec_c(st, "commit", "COMMIT", 0, NULL, &code);
    if (!r)
        goto fail;
    PQclear(r);
    return STORE_OK;
fail:
    rollback(st);
    return code;
}

static char *dup_or_null(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : cm_xstrdup(PQgetvalue(r, row, col));
}

int store_lease(struct store *st, const char *owner, double lease_s, int max,
                struct leased_chunk **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    char secs[32], lim[16];
    snprintf(secs, sizeof secs, "%.3f", lease_s);
    snprintf(lim, sizeof lim, "%d", max);
    const char *params[] = {owner, secs, lim};
    PGresult *r = exec(
        st, "lease",
        "UPDATE memory_chunks SET lease_owner = $1, lease_expires_at = now() + make_interval(secs "
        "=> $2::float8), updated_at = now() WHERE id IN (SELECT id FROM memory_chunks WHERE state "
        "= 'pending' AND next_attempt_at <= now() AND (lease_expires_at IS NULL OR "
        "lease_expires_at < now()) ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) "
        "RETURNING id, user_id, room_id, chunk_hash, messages::text, message_count, "
        "first_message_at::text, last_message_at::text, attempts",
        3, params);
    if (!r)
        return -1;
    int rows = PQntuples(r);
    *out = cm_xcalloc(rows ? (size_t)rows : 1, sizeof **out);
    for (int i = 0; i < rows; i++) {
        struct leased_chunk *c = &(*out)[i];
        c->id = atoll(PQgetvalue(r, i, 0));
        c->user_id = dup_or_null(r, i, 1);
        c->room_id = dup_or_null(r, i, 2);
        c->hash = dup_or_null(r, i, 3);
        char why[300];
        if (message_array_parse(PQgetvalue(r, i, 4), (size_t)PQgetlength(r, i, 4), &c->msgs,
                                &c->nmsgs, why, sizeof why) != 0)
            c->parse_error = cm_xstrdup(why);
        c->message_count = atoi(PQgetvalue(r, i, 5));
        c->first_at = dup_or_null(r, i, 6);
        c->last_at = dup_or_null(r, i, 7);
        c->attempts = atoi(PQgetvalue(r, i, 8));
    }
    *n = (size_t)rows;
    PQclear(r);
    return 0;
}

void store_leased_free(struct leased_chunk *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++) {
        free(c[i].user_id);
        free(c[i].room_id);
        free(c[i].hash);
        message_array_free(c[i].msgs, c[i].nmsgs);
        free(c[i].parse_error);
        free(c[i].first_at);
        free(c[i].last_at);
    }
    free(c);
}

int store_renew(struct store *st, const char *owner, double lease_s, const long long *ids, size_t n)
{
    if (n == 0)
        return STORE_OK;
    char *list = cm_xmalloc(n * 24 + 3);
    size_t off = 0;
    list[off++] = '{';
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(list + off, 24, "%s%lld", i ? "," : "", ids[i]);
    list[off++] = '}';
    list[off] = '\0';
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", lease_s);
    const char *params[] = {list, owner, secs};
    int rc = exec_ok(st, "renew leases",
                     "UPDATE memory_chunks SET lease_expires_at = now() + make_interval(secs => "
                     "$3::float8) WHERE id = ANY($1::bigint[]) AND state = 'pending' AND "
                     "lease_owner = $2",
                     3, params);
    free(list);
    return rc == 0 ? STORE_OK : STORE_DOWN;
}

char *store_vector_literal(const float *v, size_t dim)
{
    char *vec = cm_xmalloc(dim * 18 + 3);
    size_t off = 0;
    vec[off++] = '[';
    for (size_t i = 0; i < dim; i++)
        off += (size_t)snprintf(vec + off, 18, "%s%.9g", i ? "," : "", (double)v[i]);
    vec[off++] = ']';
    vec[off] = '\0';
    return vec;
}

int store_complete(struct store *st, const struct leased_chunk *c, const char *owner,
                   const char *summary, const float *embedding, size_t dim,
                   const char *summary_model, const char *embedding_model)
{
    char *vec = store_vector_literal(embedding, dim);
    char id[24], count[16];
    snprintf(id, sizeof id, "%lld", c->id);
    snprintf(count, sizeof count, "%d", c->message_count);
    const char *params[] = {c->user_id,    c->room_id,      summary, vec,
                            summary_model, embedding_model, count,   c->first_at,
                            c->last_at,    c->hash,         id,      owner};
    /* One statement, so one round trip and atomic on its own: lock the
     * chunk, insert the memory (idempotent per chunk hash) only while the
     * chunk is still there, and mark it done. The row lock fences erasure
     * (store_erase_user deletes the chunks first, then the memories, each
     * statement with a fresh snapshot): either the erasure waits for this
     * commit and then deletes the memory too, or this waits for the erasure
     * and finds no chunk, so nothing is inserted. */
    int rc = exec_ok(
        st, "store memory",
        "WITH chunk AS (SELECT id FROM memory_chunks WHERE id = $11 AND state = 'pending' AND "
        "(lease_owner = $12 OR lease_owner IS NULL OR lease_expires_at < now()) FOR UPDATE), "
        "memory AS (INSERT INTO memories (user_id, room_id, summary, embedding, "
        "summary_model, embedding_model, message_count, first_message_at, "
        "last_message_at, chunk_hash) SELECT $1, $2, $3, $4::text::vector, $5, $6, $7::int, "
        "$8::timestamptz, $9::timestamptz, $10 FROM chunk ON CONFLICT (user_id, chunk_hash) DO "
        "NOTHING) "
        "UPDATE memory_chunks SET state = 'done', lease_owner = NULL, lease_expires_at = "
        "NULL, last_error = NULL, updated_at = now() WHERE id IN (SELECT id FROM chunk)",
        12, params);
    free(vec);
    return rc == 0 ? 0 : -1;
}

int store_fail(struct store *st, const struct leased_chunk *c, const char *owner, double delay_s,
               const char *error, int dead)
{
    char id[24], delay[32];
    snprintf(id, sizeof id, "%lld", c->id);
    snprintf(delay, sizeof delay, "%.3f", delay_s);
    const char *params[] = {id, owner, delay, error, dead ? "dead" : "pending"};
    return exec_ok(st, "record failure",
                   "UPDATE memory_chunks SET attempts = attempts + 1, state = $5, "
                   "next_attempt_at = now() + make_interval(secs => $3::float8), last_error = $4, "
                   "lease_owner = NULL, lease_expires_at = NULL, updated_at = now() "
                   "WHERE id = $1 AND state = 'pending' AND lease_owner = $2",
                   5, params);
}

int store_release(struct store *st, const struct leased_chunk *c, const char *owner, double delay_s,
                  const char *error)
{
    char id[24], delay[32];
    snprintf(id, sizeof id, "%lld", c->id);
    snprintf(delay, sizeof delay, "%.3f", delay_s);
    const char *params[] = {id, owner, delay, error};
    return exec_ok(st, "release lease",
                   "UPDATE memory_chunks SET lease_owner = NULL, lease_expires_at = NULL, "
                   "next_attempt_at = now() + make_interval(secs => $3::float8), "
                   "last_error = coalesce($4, last_error), updated_at = now() "
                   "WHERE id = $1 AND state = 'pending' AND lease_owner = $2",
                   4, params);
}

long long store_replay_dead(struct store *st, const char *user_id)
{
    const char *params[] = {user_id};
    PGresult *r = exec(st, "replay dead",
                       "UPDATE memory_chunks SET state = 'pending', attempts = 0, next_attempt_at "
                       "= now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now() "
                       "WHERE state = 'dead' AND ($1::text IS NULL OR user_id = $1)",
                       1, params);
    if (!r)
        return -1;
    long long n = atoll(PQcmdTuples(r));
    PQclear(r);
    return n;
}

int store_embedding_dim(struct store *st, long long *dim)
{
    PGresult *r = exec(st, "embedding dimension",
                       "SELECT a.atttypmod, format_type(a.atttypid, a.atttypmod) FROM pg_attribute "
                       "a WHERE a.attrelid = 'memories'::regclass AND a.attname = 'embedding'",
                       0, NULL);
    if (!r)
        return -1;
    *dim = PQntuples(r) == 1 ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return 0;
}

int store_erase_user(struct store *st, const char *user_id, struct store_erased *out)
{
    memset(out, 0, sizeof *out);
    const char *p[] = {user_id};
    int code = STORE_DOWN;
    if (exec_ok(st, "begin", "BEGIN", 0, NULL) != 0)
        return STORE_DOWN;
    /* Order matters (see store_complete): the user's lock (claims persist
     * under it), the epoch (a claim taken before this is refused), the
     * chunks (waits for a memory being stored), then the memories. */
    static const char *const SQL[] = {
        "SELECT pg_advisory_xact_lock(727275, hashtext($1))",
        ("INSERT INTO erased_users (user_id, epoch) VALUES ($1, 1) ON CONFLICT (user_id) DO "
         "UPDATE SET epoch = erased_users.epoch + 1, erased_at = now()"),
        "DELETE FROM memory_chunks WHERE user_id = $1",
        "DELETE FROM memories WHERE user_id = $1",
        "DELETE FROM dead_messages WHERE user_id = $1",
        "DELETE FROM message_ids WHERE user_id = $1",
    };
    long long *counts[] = {
        NULL, NULL, &out->chunks, &out->memories, &out->dead_messages, &out->message_ids};
    for (size_t i = 0; i < sizeof SQL / sizeof SQL[0]; i++) {
        PGresult *r = exec_c(st, "erase user", SQL[i], 1, p, &code);
        if (!r) {
            rollback(st);
            return code;
        }
        if (counts[i])
            *counts[i] = atoll(PQcmdTuples(r));
        PQclear(r);
    }
    PGresult *r = exec_c(st, "commit", "COMMIT", 0, NULL, &code);
    if (!r) {
        rollback(st);
        return code;
    }
    PQclear(r);
    return STORE_OK;
}

PGconn *store_pg(struct store *st)
{
    return st->conn;
}

int store_counts(struct store *st, long long *pending, long long *dead)
{
    PGresult *r = exec(st, "counts",
                       "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE "
                       "state = 'dead') FROM memory_chunks",
                       0, NULL);
    if (!r)
        return -1;
    *pending = atoll(PQgetvalue(r, 0, 0));
    *dead = atoll(PQgetvalue(r, 0, 1));
    PQclear(r);
    return 0;
}

/*
 * bench_memory_search: latency and recall of memory_db_search, the query
 * code behind POST /v1/memories/search, on the data set that
 * bench/memory_search.sh loads (DATABASE_URL). The query embeddings are
 * precomputed (bench_queries), so no embedding call is timed; each search
 * includes its PostgreSQL round trips and building the JSON answer.
 * Usage: bench_memory_search [queries per category]
 */
#include "memory_db.h"
#include "memory_query.h"
#include "store.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIM 1024
#define NQ 1000

static const char *const WORDS[] = {"tea",    "bees",    "porto", "bike",   "piano",
                                    "garden", "sailing", "chess", "coffee", "rust"};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void parse_vec(const char *s, float *out)
{
    const char *p = s + 1;
    for (int i = 0; i < DIM; i++) {
        char *end;
        out[i] = strtof(p, &end);
        p = end + 1;
    }
}

static void user_of(int heavy, int i, char *buf, size_t len)
{
    if (heavy)
        snprintf(buf, len, "heavy");
    else
        snprintf(buf, len, "u%d", (i * 37) % 2000);
}

static void latency(struct memory_db *db, float *queries, int heavy, enum mq_mode mode, int n)
{
    double *ms = calloc((size_t)n, sizeof *ms);
    int short_answers = 0;
    char user[32], text[64], err[600];
    for (int i = -20; i < n; i++) { /* 20 warm-up searches */
        int k = (i + 20) % NQ;
        user_of(heavy, k, user, sizeof user);
        snprintf(text, sizeof text, "%s %s", WORDS[k % 10], WORDS[(k / 10) % 10]);
        struct mq_search q = {.user_id = user, .query = text, .limit = 10, .mode = mode};
        json_t *data = NULL;
        double t0 = now_ms();
        int rc = memory_db_search(db, &q, queries + (size_t)k * DIM, DIM, "simple", &data, err,
                                  sizeof err);
        double t1 = now_ms();
        if (rc != 0) {
            fprintf(stderr, "search failed: %s\n", err);
            exit(1);
        }
        if (json_array_size(data) != 10)
            short_answers++;
        json_decref(data);
        if (i >= 0)
            ms[i] = t1 - t0;
    }
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += ms[i];
    printf("%-8s %-7s n=%d  p50 %6.2f ms  p99 %6.2f ms  mean %6.2f ms  max %6.2f ms  "
           "answers short of 10: %d\n",
           heavy ? "heavy" : "typical", mode == MQ_VECTOR ? "vector" : "hybrid", n, ms[n / 2],
           ms[(int)(n * 0.99)], sum / n, ms[n - 1], short_answers);
    free(ms);
}

static void recall(struct memory_db *db, struct store *st, float *queries, int heavy, int n)
{
    double total = 0;
    char user[32], err[600];
    for (int i = 0; i < n; i++) {
        int k = (i * 7 + 3) % NQ;
        user_of(heavy, k, user, sizeof user);
        struct mq_search q = {.user_id = user, .query = "x", .limit = 10, .mode = MQ_VECTOR};
        json_t *data = NULL;
        if (memory_db_search(db, &q, queries + (size_t)k * DIM, DIM, "simple", &data, err,
                             sizeof err) != 0) {
            fprintf(stderr, "search failed: %s\n", err);
            exit(1);
        }
        char *lit = store_vector_literal(queries + (size_t)k * DIM, DIM);
        const char *p[] = {user, lit};
        /* "+ 0": not the indexed expression, so an exact scan. */
        PGresult *r = PQexecParams(store_pg(st),
                                   "SELECT id FROM memories WHERE user_id = $1 ORDER BY (embedding "
                                   "<=> $2::vector) + 0, id DESC LIMIT 10",
                                   2, NULL, p, NULL, NULL, 0);
        free(lit);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "exact scan failed: %s\n", PQresultErrorMessage(r));
            exit(1);
        }
        int hit = 0;
        for (int e = 0; e < PQntuples(r); e++) {
            long long id = atoll(PQgetvalue(r, e, 0));
            for (size_t a = 0; a < json_array_size(data); a++)
                if (json_integer_value(json_object_get(json_array_get(data, a), "id")) == id)
                    hit++;
        }
        total += PQntuples(r) ? (double)hit / PQntuples(r) : 1;
        PQclear(r);
        json_decref(data);
    }
    printf("%-8s recall@10 of the indexed vector search vs exact scan: %.4f (%d queries)\n",
           heavy ? "heavy" : "typical", total / n, n);
}

static void plan(struct store *st, const char *user, const char *vec)
{
    const char *p[] = {user, vec};
    PGresult *r = PQexecParams(store_pg(st),
                               "EXPLAIN (COSTS OFF) SELECT id FROM memories m WHERE user_id = $1 "
                               "ORDER BY m.embedding <=> $2::vector LIMIT 10",
                               2, NULL, p, NULL, NULL, 0);
    printf("plan for %s:", user);
    for (int i = 0; i < PQntuples(r) && i < 4; i++)
        printf(" | %.70s", PQgetvalue(r, i, 0));
    printf("\n");
    PQclear(r);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 300;
    if (n < 10)
        n = 10;
    const char *url = getenv("DATABASE_URL");
    char err[300];
    struct store *st = store_connect(url ? url : "", err, sizeof err);
    if (!st) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    PGresult *r = PQexec(store_pg(st), "SELECT v FROM bench_queries ORDER BY i");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != NQ) {
        fprintf(stderr, "no bench_queries: run bench/memory_search.sh\n");
        return 1;
    }
    float *queries = malloc((size_t)NQ * DIM * sizeof *queries);
    for (int i = 0; i < NQ; i++)
        parse_vec(PQgetvalue(r, i, 0), queries + (size_t)i * DIM);
    PQclear(r);
    r = PQexec(store_pg(st),
               "SELECT count(*), count(*) FILTER (WHERE user_id = 'heavy'), count(DISTINCT "
               "user_id), (SELECT coalesce(substring(indexdef FROM 'WITH \\(.*\\)'), 'defaults') "
               "FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw') FROM memories");
    printf("data: %s memories, %s of user heavy, %s users; vector(%d), HNSW cosine %s\n",
           PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), DIM, PQgetvalue(r, 0, 3));
    PQclear(r);
    const char *ef = getenv("MEMORY_SEARCH_EF_SEARCH");
    int ef_min = ef ? atoi(ef) : 100;
    printf("hnsw.ef_search >= %d (MEMORY_SEARCH_EF_SEARCH), text candidates %d\n", ef_min,
           MEMORY_DB_TEXT_CANDIDATES);
    struct memory_db *db = memory_db_new(st, ef_min);
    char *lit = store_vector_literal(queries, DIM);
    plan(st, "u1", lit);
    plan(st, "heavy", lit);
    free(lit);
    for (int heavy = 0; heavy < 2; heavy++) {
        latency(db, queries, heavy, MQ_VECTOR, n);
        latency(db, queries, heavy, MQ_HYBRID, n);
    }
    recall(db, st, queries, 0, n);
    recall(db, st, queries, 1, n);
    memory_db_free(db);
    store_free(st);
    free(queries);
    return 0;
}

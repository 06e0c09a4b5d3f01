/*
 * memory_query: the memories API's pure parts (no I/O): validation of
 * search and list requests, dates (ISO 8601 or unix seconds), list cursors,
 * memory ids and reciprocal rank fusion.
 *
 * Every parser answers 0, or -1 with *param naming the offending field (a
 * static string) and msg saying what is wrong, for a 400 reply.
 *
 * Ownership: the strings of struct mq_search and struct mq_list are
 * malloc'd copies, freed by mq_search_free / mq_list_free; mq_cursor_encode
 * returns a malloc'd string.
 */
#ifndef MEMORY_QUERY_H
#define MEMORY_QUERY_H

#include <jansson.h>
#include <stddef.h>

#define MQ_LIMIT_DEFAULT 10
#define MQ_LIMIT_MAX 100
#define MQ_QUERY_MAX_BYTES 4096 /* a search query */
#define MQ_ROOM_MAX_BYTES 256
#define MQ_RRF_K 60
#define MQ_OVERFETCH 4 /* hybrid: each ranking fetches 4 x limit */

enum mq_mode { MQ_HYBRID = 0, MQ_VECTOR, MQ_TEXT };

struct mq_search {
    char *user_id;
    char *query;
    char *room_id; /* NULL: every room */
    int limit;
    int has_since, has_until;
    double since, until; /* unix seconds */
    enum mq_mode mode;
};

/* body: the parsed JSON object of POST /v1/memories/search. */
int mq_parse_search(const json_t *body, struct mq_search *out, const char **param, char *msg,
                    size_t msglen);
void mq_search_free(struct mq_search *s);
const char *mq_mode_name(enum mq_mode m);

struct mq_list {
    char *user_id;
    char *room_id; /* NULL: every room */
    int limit;
    int has_cursor;
    long long cursor_us, cursor_id; /* rows strictly older than this */
};

/* The query parameters of GET /v1/memories (each NULL when absent). */
int mq_parse_list(const char *user_id, const char *room_id, const char *limit, const char *before,
                  struct mq_list *out, const char **param, char *msg, size_t msglen);
void mq_list_free(struct mq_list *l);

/* Opaque cursor for the row (created_at in unix microseconds, id). */
char *mq_cursor_encode(long long created_us, long long id);
/* 0, or -1 when s is not a cursor mq_cursor_encode made. */
int mq_cursor_decode(const char *s, long long *created_us, long long *id);

/* A date: a JSON number (unix seconds; ms or us by magnitude, as in
 * messages) or a string: ISO 8601 (YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.frac]]
 * with Z or +-HH:MM; no zone means UTC) or decimal unix seconds, parsed by
 * message_parse_time. 0 or -1. */
int mq_parse_time(const json_t *v, double *out);
int mq_parse_time_str(const char *s, double *out);

/* A memory id: decimal, 1..2^63-1, nothing else. 0 or -1. */
int mq_parse_id(const char *s, long long *id);

/* A user id from a request (same rule as the pipeline's, see user_id.h):
 * NULL when usable, else the reason. */
const char *mq_user_id_problem(const char *s, size_t len);

struct mq_fused {
    long long id;
    double score;               /* sum of 1 / (k + rank), ranks from 1 */
    int vector_rank, text_rank; /* 0 when absent from that ranking */
};

/* Reciprocal rank fusion of two rankings (ids best first; an id appears at
 * most once per ranking). out must hold nv + nt entries; returns how many
 * were written, best first (ties: better best rank, then larger id). */
size_t mq_rrf(const long long *vector_ids, size_t nv, const long long *text_ids, size_t nt, int k,
              struct mq_fused *out);

#endif

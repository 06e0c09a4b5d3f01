/* libFuzzer: the memories API's request parsing (memory_query.h): a search
 * body, list query parameters, dates, cursors, ids, and RRF over id lists
 * made from the input. Invariants: a parsed search is within its bounds; an
 * encoded cursor decodes to itself; fused scores are sorted. */
#include "memory_query.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    json_t *body = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    struct mq_search q;
    const char *param;
    char msg[300];
    if (body && mq_parse_search(body, &q, &param, msg, sizeof msg) == 0) {
        if (q.limit < 1 || q.limit > MQ_LIMIT_MAX || !q.user_id || !q.query ||
            strlen(q.query) > MQ_QUERY_MAX_BYTES ||
            (q.has_since && q.has_until && q.until < q.since))
            __builtin_trap();
        mq_search_free(&q);
    }
    json_decref(body);
    /* The same bytes as each query parameter (up to the first NUL). */
    struct mq_list l;
    if (mq_parse_list(s, s, s, s, &l, &param, msg, sizeof msg) == 0)
        mq_list_free(&l);
    if (mq_parse_list(s, NULL, NULL, NULL, &l, &param, msg, sizeof msg) == 0)
        mq_list_free(&l);
    double t;
    (void)mq_parse_time_str(s, &t);
    long long us, id;
    if (mq_cursor_decode(s, &us, &id) == 0) {
        char *c = mq_cursor_encode(us, id);
        long long us2, id2;
        if (mq_cursor_decode(c, &us2, &id2) != 0 || us2 != us || id2 != id)
            __builtin_trap();
        free(c);
    }
    (void)mq_parse_id(s, &id);
    /* Two rankings from the input's bytes (distinct ids in each). */
    long long v[32], tx[32];
    size_t nv = 0, nt = 0;
    for (size_t i = 0; i < size && i < 64; i++) {
        long long x = data[i] % 40;
        long long *a = i % 2 ? tx : v;
        size_t *n = i % 2 ? &nt : &nv;
        int dup = 0;
        for (size_t k = 0; k < *n; k++)
            dup |= a[k] == x;
        if (!dup && *n < 32)
            a[(*n)++] = x;
    }
    struct mq_fused out[64];
    size_t n = mq_rrf(v, nv, tx, nt, MQ_RRF_K, out);
    for (size_t i = 1; i < n; i++)
        if (out[i].score > out[i - 1].score)
            __builtin_trap();
    free(s);
    return 0;
}

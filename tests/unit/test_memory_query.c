/* Unit tests of the memories API's pure parts (memory_query.h): request
 * validation, dates, cursors, ids, reciprocal rank fusion. */
#include "memory_query.h"
#include "unit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int search(const char *body, struct mq_search *s, const char **param)
{
    json_error_t e;
    json_t *j = json_loads(body, JSON_DECODE_ANY, &e);
    char msg[300];
    *param = "(none)";
    int rc = mq_parse_search(j, s, param, msg, sizeof msg);
    if (rc != 0)
        CHECK(msg[0] != '\0');
    json_decref(j);
    return rc;
}

static void search_requests(void)
{
    struct mq_search s;
    const char *param;
    CHECK(search("{\"user_id\":\"u1\",\"query\":\"where\"}", &s, &param) == 0);
    CHECK_STR(s.user_id, "u1");
    CHECK_STR(s.query, "where");
    CHECK(s.limit == 10 && s.mode == MQ_HYBRID && !s.room_id && !s.has_since && !s.has_until);
    mq_search_free(&s);
    CHECK(search("{\"user_id\":\"u1\",\"query\":\"q\",\"limit\":100,\"room_id\":\"r\",\"mode\":"
                 "\"text\",\"since\":\"2024-05-27T10:00:00Z\",\"until\":1716900000}",
                 &s, &param) == 0);
    CHECK(s.limit == 100 && s.mode == MQ_TEXT);
    CHECK_STR(s.room_id, "r");
    CHECK(s.has_since && s.since == 1716804000 && s.has_until && s.until == 1716900000);
    mq_search_free(&s);
    CHECK(search("{\"user_id\":\"u\",\"query\":\"q\",\"mode\":\"vector\",\"room_id\":null}", &s,
                 &param) == 0);
    CHECK(s.mode == MQ_VECTOR && !s.room_id);
    mq_search_free(&s);
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"query\":\"q\"}", "user_id"},
        {"{\"user_id\":\"\",\"query\":\"q\"}", "user_id"},
        {"{\"user_id\":7,\"query\":\"q\"}", "user_id"},
        {"{\"user_id\":\"a\\u0001\",\"query\":\"q\"}", "user_id"},
        {"{\"user_id\":\"u\"}", "query"},
        {"{\"user_id\":\"u\",\"query\":\" \\n\\t\"}", "query"},
        {"{\"user_id\":\"u\",\"query\":1}", "query"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"limit\":0}", "limit"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"limit\":101}", "limit"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"limit\":1.0}", "limit"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"room_id\":[]}", "room_id"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"since\":\"soon\"}", "since"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"until\":-1}", "until"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"since\":20,\"until\":10}", "until"},
        {"{\"user_id\":\"u\",\"query\":\"q\",\"mode\":\"HYBRID\"}", "mode"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(search(bad[i].body, &s, &param) == -1);
        if (!param || strcmp(param, bad[i].param) != 0)
            fprintf(stderr, "case %zu: param %s, want %s\n", i, param ? param : "NULL",
                    bad[i].param);
        CHECK(param && strcmp(param, bad[i].param) == 0);
        CHECK(!s.user_id && !s.query); /* nothing leaks on failure */
    }
    CHECK(search("[1]", &s, &param) == -1 && param == NULL);
    /* The longest query accepted, one byte more refused. */
    char *big = malloc(MQ_QUERY_MAX_BYTES + 64);
    int n = snprintf(big, 64, "{\"user_id\":\"u\",\"query\":\"");
    memset(big + n, 'x', MQ_QUERY_MAX_BYTES);
    strcpy(big + n + MQ_QUERY_MAX_BYTES, "\"}");
    CHECK(search(big, &s, &param) == 0);
    mq_search_free(&s);
    memset(big + n, 'x', MQ_QUERY_MAX_BYTES + 1);
    strcpy(big + n + MQ_QUERY_MAX_BYTES + 1, "\"}");
    CHECK(search(big, &s, &param) == -1 && strcmp(param, "query") == 0);
    free(big);
}

static void dates(void)
{
    double t = -1;
    CHECK(mq_parse_time_str("2024-05-27T10:00:00Z", &t) == 0 && t == 1716804000);
    CHECK(mq_parse_time_str("2024-05-27T12:00:00+02:00", &t) == 0 && t == 1716804000);
    CHECK(mq_parse_time_str("2024-05-27T10:00:00.5Z", &t) == 0 && t == 1716804000.5);
    CHECK(mq_parse_time_str("2024-05-27T10:00", &t) == 0 && t == 1716804000);
    CHECK(mq_parse_time_str("2024-05-27", &t) == 0 && t == 1716768000);
    CHECK(mq_parse_time_str("2024-02-29", &t) == 0);
    CHECK(mq_parse_time_str("1716804000", &t) == 0 && t == 1716804000);
    CHECK(mq_parse_time_str("1716804000.25", &t) == 0 && t == 1716804000.25);
    static const char *const bad[] = {"",
                                      "yesterday",
                                      "2024-02-30",
                                      "2023-02-29",
                                      "2024-13-01",
                                      "2024-00-10",
                                      "2024-05-27T25:00:00Z",
                                      "2024-05-27T10:00:00Zjunk",
                                      "-5",
                                      "1e5",
                                      "1969-12-31"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (mq_parse_time_str(bad[i], &t) == 0)
            fprintf(stderr, "accepted %s\n", bad[i]);
        CHECK(mq_parse_time_str(bad[i], &t) == -1);
    }
    json_t *v = json_integer(1716804000);
    CHECK(mq_parse_time(v, &t) == 0 && t == 1716804000);
    json_decref(v);
    v = json_real(-1);
    CHECK(mq_parse_time(v, &t) == -1);
    json_decref(v);
    v = json_true();
    CHECK(mq_parse_time(v, &t) == -1);
    json_decref(v);
}

static void cursors_and_ids(void)
{
    char *c = mq_cursor_encode(1716804000123456LL, 42);
    long long us, id;
    CHECK(mq_cursor_decode(c, &us, &id) == 0 && us == 1716804000123456LL && id == 42);
    free(c);
    static const char *const bad[] = {
        "", "c", "c_1", "c1_", "x1_2", "c1_2_3", "c-1_2", "c1_0", "c99999999999999999999_1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(mq_cursor_decode(bad[i], &us, &id) == -1);
    CHECK(mq_parse_id("17", &id) == 0 && id == 17);
    CHECK(mq_parse_id("9223372036854775807", &id) == 0);
    static const char *const bad_ids[] = {
        "", "0", "-1", "+1", "1.0", " 1", "1 ", "9223372036854775808", "abc"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++)
        CHECK(mq_parse_id(bad_ids[i], &id) == -1);
    struct mq_list l;
    const char *param;
    char msg[200];
    CHECK(mq_parse_list("u", NULL, NULL, NULL, &l, &param, msg, sizeof msg) == 0);
    CHECK(l.limit == 10 && !l.has_cursor);
    mq_list_free(&l);
    CHECK(mq_parse_list(NULL, NULL, NULL, NULL, &l, &param, msg, sizeof msg) == -1);
    CHECK_STR(param, "user_id");
    CHECK(mq_parse_list("u", NULL, "101", NULL, &l, &param, msg, sizeof msg) == -1);
    CHECK_STR(param, "limit");
    CHECK(mq_parse_list("u", "\xff", NULL, NULL, &l, &param, msg, sizeof msg) == -1);
    CHECK_STR(param, "room_id");
    CHECK(mq_parse_list("u", NULL, NULL, "c5_6", &l, &param, msg, sizeof msg) == 0);
    CHECK(l.has_cursor && l.cursor_us == 5 && l.cursor_id == 6);
    mq_list_free(&l);
}

static void fusion(void)
{
    /* Known answer: k = 60, ranks from 1. */
    long long v[] = {10, 20, 30}, t[] = {30, 40, 10};
    struct mq_fused out[6];
    size_t n = mq_rrf(v, 3, t, 3, 60, out);
    CHECK(n == 4);
    /* 10: 1/61 + 1/63; 30: 1/63 + 1/61 (tie, best rank 1 each: larger id
     * first); 20: 1/62; 40: 1/62 (tie, same best rank 2: larger id). */
    CHECK(out[0].id == 30 && out[1].id == 10);
    CHECK(fabs(out[0].score - (1.0 / 61 + 1.0 / 63)) < 1e-12);
    CHECK(out[0].vector_rank == 3 && out[0].text_rank == 1);
    CHECK(out[2].id == 40 && out[3].id == 20);
    CHECK(fabs(out[3].score - 1.0 / 62) < 1e-12 && out[3].text_rank == 0);
    /* One ranking empty: the other's order. */
    n = mq_rrf(v, 3, NULL, 0, 60, out);
    CHECK(n == 3 && out[0].id == 10 && out[1].id == 20 && out[2].id == 30);
    n = mq_rrf(NULL, 0, t, 3, 60, out);
    CHECK(n == 3 && out[0].id == 30 && out[2].id == 10);
    CHECK(mq_rrf(NULL, 0, NULL, 0, 60, out) == 0);
    /* A document in both rankings beats one ranked first in only one. */
    long long v2[] = {1, 2}, t2[] = {3, 2};
    n = mq_rrf(v2, 2, t2, 2, 60, out);
    CHECK(n == 3 && out[0].id == 2);
}

UNIT_MAIN(T(search_requests), T(dates), T(cursors_and_ids), T(fusion))

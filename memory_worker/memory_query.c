/* memory_query: validation, dates, cursors and fusion (see memory_query.h). */
#include "memory_query.h"

#include "cm_alloc.h"
#include "message.h"
#include "user_id.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIME_MAX 253402300799.0 /* 9999-12-31T23:59:59Z */

static int bad(const char **param, const char *p, char *msg, size_t msglen, const char *text)
{
    *param = p;
    snprintf(msg, msglen, "%s", text);
    return -1;
}

const char *mq_user_id_problem(const char *s, size_t len)
{
    return user_id_problem(s, len);
}

const char *mq_mode_name(enum mq_mode m)
{
    return m == MQ_VECTOR ? "vector" : m == MQ_TEXT ? "text" : "hybrid";
}

int mq_parse_time_str(const char *s, double *out)
{
    /* message.c owns timestamp parsing (the same forms as in messages);
     * a bare date is that day's midnight UTC, a time without a zone UTC. */
    if (!s || strlen(s) > 64)
        return -1;
    char buf[96];
    size_t n = strlen(s);
    int date_only = n == 10 && s[4] == '-' && s[7] == '-';
    int no_seconds = n == 16 && (s[10] == 'T' || s[10] == ' ') && s[13] == ':';
    /* strptime takes 2024-02-30 as March 1st: the day must exist. */
    if (n >= 10 && s[4] == '-' && s[7] == '-') {
        int y = atoi(s), m = atoi(s + 5), d = atoi(s + 8);
        static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] + (m == 2 && leap))
            return -1;
    }
    snprintf(buf, sizeof buf, "%s%s", s, date_only ? "T00:00:00Z" : no_seconds ? ":00" : "");
    double t = message_parse_time(buf);
    if (t < 0 || t > TIME_MAX)
        return -1;
    *out = t;
    return 0;
}

int mq_parse_time(const json_t *v, double *out)
{
    if (json_is_integer(v) || json_is_real(v)) {
        double t = message_time_from_number(json_number_value(v));
        if (!isfinite(t) || t < 0 || t > TIME_MAX)
            return -1;
        *out = t;
        return 0;
    }
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v))
            return -1; /* a NUL inside */
        return mq_parse_time_str(json_string_value(v), out);
    }
    return -1;
}

int mq_parse_id(const char *s, long long *id)
{
    if (!s || !*s || strlen(s) > 19)
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v <= 0)
        return -1;
    *id = v;
    return 0;
}

/* A string field: absent (NULL), or a JSON string of 1..max bytes that
 * passes the user id rule. */
static int string_field(const json_t *body, const char *name, size_t max, int required, char **out,
                        const char **param, char *msg, size_t msglen)
{
    json_t *v = json_object_get(body, name);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (!required)
            return 0;
        char t[120];
        snprintf(t, sizeof t, "'%s' is required.", name);
        return bad(param, name, msg, msglen, t);
    }
    if (!json_is_string(v)) {
        char t[120];
        snprintf(t, sizeof t, "'%s' must be a string.", name);
        return bad(param, name, msg, msglen, t);
    }
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    const char *why = len > max ? "too long" : mq_user_id_problem(s, len);
    if (why) {
        char t[200];
        snprintf(t, sizeof t,
                 "'%s' is not usable: %s (1..%zu bytes of UTF-8, no control "
                 "characters).",
                 name, why, max);
        return bad(param, name, msg, msglen, t);
    }
    *out = cm_xstrdup(s);
    return 0;
}

void mq_search_free(struct mq_search *s)
{
    free(s->user_id);
    free(s->query);
    free(s->room_id);
    memset(s, 0, sizeof *s);
}

static int parse_limit_json(const json_t *v, int *out, const char **param, char *msg, size_t msglen)
{
    *out = MQ_LIMIT_DEFAULT;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MQ_LIMIT_MAX) {
        char t[120];
        snprintf(t, sizeof t, "'limit' must be an integer from 1 to %d.", MQ_LIMIT_MAX);
        return bad(param, "limit", msg, msglen, t);
    }
    *out = (int)json_integer_value(v);
    return 0;
}

int mq_parse_search(const json_t *body, struct mq_search *out, const char **param, char *msg,
                    size_t msglen)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(body))
        return bad(param, NULL, msg, msglen, "The body must be a JSON object.");
    if (string_field(body, "user_id", USER_ID_MAX, 1, &out->user_id, param, msg, msglen) != 0)
        goto fail;
    json_t *q = json_object_get(body, "query");
    if (!q || json_is_null(q)) {
        bad(param, "query", msg, msglen, "'query' is required.");
        goto fail;
    }
    if (!json_is_string(q)) {
        bad(param, "query", msg, msglen, "'query' must be a string.");
        goto fail;
    }
    const char *qs = json_string_value(q);
    size_t ql = json_string_length(q);
    if (ql > MQ_QUERY_MAX_BYTES) {
        char t[120];
        snprintf(t, sizeof t, "'query' is longer than %d bytes.", MQ_QUERY_MAX_BYTES);
        bad(param, "query", msg, msglen, t);
        goto fail;
    }
    int blank = 1;
    for (size_t i = 0; i < ql; i++)
        if (!(qs[i] == ' ' || qs[i] == '\t' || qs[i] == '\n' || qs[i] == '\r'))
            blank = 0;
    if (blank || strlen(qs) != ql || !user_id_utf8_valid(qs, ql)) {
        bad(param, "query", msg, msglen,
            blank ? "'query' must not be empty." : "'query' must be valid UTF-8 without NUL.");
        goto fail;
    }
    out->query = cm_xstrdup(qs);
    if (parse_limit_json(json_object_get(body, "limit"), &out->limit, param, msg, msglen) != 0)
        goto fail;
    if (string_field(body, "room_id", MQ_ROOM_MAX_BYTES, 0, &out->room_id, param, msg, msglen) != 0)
        goto fail;
    static const char *const tnames[] = {"since", "until"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(body, tnames[i]);
        if (!v || json_is_null(v))
            continue;
        double t;
        if (mq_parse_time(v, &t) != 0) {
            char m[200];
            snprintf(m, sizeof m,
                     "'%s' must be an ISO 8601 date (e.g. 2025-06-01T12:00:00Z) or unix seconds.",
                     tnames[i]);
            bad(param, tnames[i], msg, msglen, m);
            goto fail;
        }
        if (i == 0) {
            out->has_since = 1;
            out->since = t;
        } else {
            out->has_until = 1;
            out->until = t;
        }
    }
    if (out->has_since && out->has_until && out->until < out->since) {
        bad(param, "until", msg, msglen, "'until' is before 'since'.");
        goto fail;
    }
    json_t *m = json_object_get(body, "mode");
    out->mode = MQ_HYBRID;
    if (m && !json_is_null(m)) {
        const char *ms = json_string_value(m);
        if (ms && strcmp(ms, "hybrid") == 0)
            out->mode = MQ_HYBRID;
        else if (ms && strcmp(ms, "vector") == 0)
            out->mode = MQ_VECTOR;
        else if (ms && strcmp(ms, "text") == 0)
            out->mode = MQ_TEXT;
        else {
            bad(param, "mode", msg, msglen, "'mode' must be \"hybrid\", \"vector\" or \"text\".");
            goto fail;
        }
    }
    return 0;
fail:
    mq_search_free(out);
    return -1;
}

void mq_list_free(struct mq_list *l)
{
    free(l->user_id);
    free(l->room_id);
    memset(l, 0, sizeof *l);
}

int mq_parse_list(const char *user_id, const char *room_id, const char *limit, const char *before,
                  struct mq_list *out, const char **param, char *msg, size_t msglen)
{
    memset(out, 0, sizeof *out);
    json_t *o = json_object();
    if (user_id)
        json_object_set_new(o, "user_id", json_string(user_id));
    if (room_id)
        json_object_set_new(o, "room_id", json_string(room_id));
    int rc = -1;
    /* json_string refuses invalid UTF-8: then the field is reported as such. */
    if (user_id && !json_object_get(o, "user_id")) {
        bad(param, "user_id", msg, msglen, "'user_id' is not valid UTF-8.");
        goto out;
    }
    if (room_id && !json_object_get(o, "room_id")) {
        bad(param, "room_id", msg, msglen, "'room_id' is not valid UTF-8.");
        goto out;
    }
    if (string_field(o, "user_id", USER_ID_MAX, 1, &out->user_id, param, msg, msglen) != 0 ||
        string_field(o, "room_id", MQ_ROOM_MAX_BYTES, 0, &out->room_id, param, msg, msglen) != 0)
        goto out;
    out->limit = MQ_LIMIT_DEFAULT;
    if (limit) {
        long long v;
        if (mq_parse_id(limit, &v) != 0 || v > MQ_LIMIT_MAX) {
            char t[120];
            snprintf(t, sizeof t, "'limit' must be an integer from 1 to %d.", MQ_LIMIT_MAX);
            bad(param, "limit", msg, msglen, t);
            goto out;
        }
        out->limit = (int)v;
    }
    if (before) {
        if (mq_cursor_decode(before, &out->cursor_us, &out->cursor_id) != 0) {
            bad(param, "before", msg, msglen,
                "'before' must be a cursor from a previous page's next_cursor.");
            goto out;
        }
        out->has_cursor = 1;
    }
    rc = 0;
out:
    json_decref(o);
    if (rc != 0)
        mq_list_free(out);
    return rc;
}

char *mq_cursor_encode(long long created_us, long long id)
{
    return cm_xasprintf("c%lld_%lld", created_us, id);
}

int mq_cursor_decode(const char *s, long long *created_us, long long *id)
{
    if (!s || s[0] != 'c' || strlen(s) > 48)
        return -1;
    const char *us = s + 1, *sep = strchr(us, '_');
    if (!sep || sep == us)
        return -1;
    char buf[24];
    size_t n = (size_t)(sep - us);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, us, n);
    buf[n] = '\0';
    long long a, b;
    if (mq_parse_id(buf, &a) != 0 || mq_parse_id(sep + 1, &b) != 0)
        return -1;
    *created_us = a;
    *id = b;
    return 0;
}

static int fused_cmp(const void *pa, const void *pb)
{
    const struct mq_fused *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    int ra = a->vector_rank && (!a->text_rank || a->vector_rank < a->text_rank) ? a->vector_rank
                                                                                : a->text_rank;
    int rb = b->vector_rank && (!b->text_rank || b->vector_rank < b->text_rank) ? b->vector_rank
                                                                                : b->text_rank;
    if (ra != rb)
        return ra < rb ? -1 : 1;
    return a->id > b->id ? -1 : a->id < b->id;
}

size_t mq_rrf(const long long *vector_ids, size_t nv, const long long *text_ids, size_t nt, int k,
              struct mq_fused *out)
{
    size_t n = 0;
    for (size_t i = 0; i < nv; i++) {
        out[n] = (struct mq_fused){vector_ids[i], 1.0 / (k + (double)(i + 1)), (int)i + 1, 0};
        n++;
    }
    for (size_t i = 0; i < nt; i++) {
        size_t j = 0;
        while (j < n && out[j].id != text_ids[i])
            j++;
        if (j == n)
            out[n++] = (struct mq_fused){text_ids[i], 0, 0, 0};
        if (out[j].text_rank)
            continue; /* repeated in the text ranking: first rank counts */
        out[j].text_rank = (int)i + 1;
        out[j].score += 1.0 / (k + (double)(i + 1));
    }
    qsort(out, n, sizeof *out, fused_cmp);
    return n;
}

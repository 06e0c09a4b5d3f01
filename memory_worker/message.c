/* message: parsing and validation of Redis chat elements (see message.h). */
#include "message.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TIME_MAX 253402300800.0 /* 10000-01-01T00:00:00Z */

/* PostgreSQL numeric (hence jsonb) input limits. */
#define PG_EXPONENT_MAX 1000
#define PG_DSCALE_MAX 16383
#define PG_INT_DIGITS_MAX 131072

static const char *const ROLES[] = {"user", "assistant", "system", "tool"};

double message_time_from_number(double v)
{
    if (!isfinite(v) || v < 0)
        return -1;
    if (v >= 1e17)
        return -1;
    if (v >= 1e14)
        v /= 1e6;
    else if (v >= 1e11)
        v /= 1e3;
    return v < TIME_MAX ? v : -1;
}

static int all_digits(const char *s)
{
    int dot = 0, digits = 0;
    for (; *s; s++) {
        if (*s == '.' && !dot)
            dot = 1;
        else if (isdigit((unsigned char)*s))
            digits++;
        else
            return 0;
    }
    return digits > 0;
}

double message_parse_time(const char *s)
{
    if (!s || !*s)
        return -1;
    if (all_digits(s))
        return message_time_from_number(strtod(s, NULL));
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        p = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
    if (!p || tm.tm_year < 70 || tm.tm_year > 9999 - 1900)
        return -1;
    double frac = 0;
    if (*p == '.') {
        if (!isdigit((unsigned char)p[1]))
            return -1;
        char *fe;
        frac = strtod(p, &fe);
        p = fe;
    }
    double t = (double)timegm(&tm) + frac;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, hh = 0, mm = 0, used = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &used) != 2 &&
            sscanf(p + 1, "%2d%2d%n", &hh, &mm, &used) != 2)
            return -1;
        if (hh > 23 || mm > 59 || hh < 0 || mm < 0)
            return -1;
        t -= sign * (hh * 3600 + mm * 60);
        p += 1 + used;
    }
    if (*p != '\0' || !isfinite(t) || t < 0 || t >= TIME_MAX)
        return -1;
    return t;
}

/*
 * Checks every number token of a valid JSON text against PostgreSQL's
 * numeric input limits (jansson reads 1e-20000 as 0; jsonb refuses it).
 */
static int numbers_fit_jsonb(const char *s, size_t len, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < len) {
        char ch = s[i];
        if (ch == '"') {
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            i++;
            continue;
        }
        if (ch != '-' && !isdigit((unsigned char)ch)) {
            i++;
            continue;
        }
        if (ch == '-')
            i++;
        while (i < len && s[i] == '0')
            i++;
        size_t sig_start = i;
        while (i < len && isdigit((unsigned char)s[i]))
            i++;
        long long int_digits = (long long)(i - sig_start);
        long long frac_digits = 0;
        if (i < len && s[i] == '.') {
            size_t f = ++i;
            while (i < len && isdigit((unsigned char)s[i]))
                i++;
            frac_digits = (long long)(i - f);
        }
        long long exp = 0;
        if (i < len && (s[i] == 'e' || s[i] == 'E')) {
            i++;
            int neg = 0;
            if (i < len && (s[i] == '+' || s[i] == '-'))
                neg = s[i++] == '-';
            while (i < len && isdigit((unsigned char)s[i])) {
                if (exp <= PG_EXPONENT_MAX)
                    exp = exp * 10 + (s[i] - '0');
                i++;
            }
            if (neg)
                exp = -exp;
        }
        if (exp > PG_EXPONENT_MAX || exp < -PG_EXPONENT_MAX || frac_digits - exp > PG_DSCALE_MAX ||
            int_digits + exp > PG_INT_DIGITS_MAX) {
            snprintf(err, errlen, "a number is out of the range PostgreSQL jsonb can store");
            return -1;
        }
    }
    return 0;
}

static char *opt_string(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_string(v))
        return cm_xstrdup(json_string_value(v));
    if (json_is_integer(v))
        return cm_xasprintf("%lld", (long long)json_integer_value(v));
    return NULL;
}

/* Control characters become spaces, surrounding spaces go, at most
 * MESSAGE_NAME_MAX bytes (cut at a UTF-8 character boundary). */
static char *sanitise_name(const char *in)
{
    while (*in == ' ' || (unsigned char)*in < 0x20 || *in == 0x7f) {
        if (!*in)
            return NULL;
        in++;
    }
    size_t len = strlen(in);
    if (len > MESSAGE_NAME_MAX) {
        len = MESSAGE_NAME_MAX;
        while (len > 0 && ((unsigned char)in[len] & 0xC0) == 0x80)
            len--;
    }
    char *out = cm_xstrndup(in, len);
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    while (len > 0 && out[len - 1] == ' ')
        out[--len] = '\0';
    if (!*out) {
        free(out);
        return NULL;
    }
    return out;
}

/* Validates the object v (of the element raw) and fills out. */
static int from_object(json_t *v, const char *raw, size_t len, struct message *out, char *err,
                       size_t errlen)
{
    if (!json_is_object(v)) {
        snprintf(err, errlen, "not a JSON object");
        return -1;
    }
    json_t *content = json_object_get(v, "content");
    if (!json_is_string(content) || json_string_length(content) == 0) {
        snprintf(err, errlen, "field \"content\" is missing, empty or not a string");
        return -1;
    }
    json_t *role = json_object_get(v, "role");
    const char *role_name = ROLES[0];
    if (role) {
        role_name = NULL;
        for (size_t i = 0; json_is_string(role) && i < sizeof ROLES / sizeof ROLES[0]; i++)
            if (strcmp(json_string_value(role), ROLES[i]) == 0)
                role_name = ROLES[i];
        if (!role_name) {
            snprintf(err, errlen, "field \"role\" is not one of user, assistant, system, tool");
            return -1;
        }
    }
    double ts = -1;
    json_t *tsv = json_object_get(v, "timestamp");
    if (tsv && !json_is_null(tsv)) {
        ts = json_is_number(tsv)   ? message_time_from_number(json_number_value(tsv))
             : json_is_string(tsv) ? message_parse_time(json_string_value(tsv))
                                   : -1;
        if (ts < 0) {
            snprintf(err, errlen,
                     "field \"timestamp\" is not unix seconds, milliseconds, microseconds or ISO "
                     "8601 within years 1970-9999");
            return -1;
        }
    }
    if (numbers_fit_jsonb(raw, len, err, errlen) != 0)
        return -1;
    memset(out, 0, sizeof *out);
    out->raw = cm_xstrndup(raw, len);
    out->raw_len = len;
    out->role = role_name;
    out->content = cm_xstrdup(json_string_value(content));
    out->room_id = opt_string(v, "room_id");
    out->message_id = opt_string(v, "message_id");
    json_t *name = json_object_get(v, "name");
    out->name = json_is_string(name) ? sanitise_name(json_string_value(name)) : NULL;
    out->ts = ts;
    return 0;
}

int message_parse(const char *raw, size_t len, size_t max_bytes, struct message *out, char *err,
                  size_t errlen)
{
    if (len > max_bytes) {
        snprintf(err, errlen, "element of %zu bytes is over MAX_MESSAGE_BYTES (%zu)", len,
                 max_bytes);
        return -1;
    }
    if (memchr(raw, '\0', len)) {
        snprintf(err, errlen, "element contains a NUL byte");
        return -1;
    }
    /* The reason is logged: never quote the element (jansson's text does).
     * Without JSON_ALLOW_NUL jansson refuses \u0000, and it refuses invalid
     * UTF-8 and lone surrogates, like jsonb. */
    json_error_t jerr;
    json_t *v = json_loadb(raw, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        snprintf(err, errlen, "not valid JSON or not UTF-8 (at byte %d)", jerr.position);
        return -1;
    }
    int rc = from_object(v, raw, len, out, err, errlen);
    json_decref(v);
    return rc;
}

void message_deinit(struct message *m)
{
    free(m->raw);
    free(m->content);
    free(m->room_id);
    free(m->message_id);
    free(m->name);
    memset(m, 0, sizeof *m);
}

char *message_array_json(const struct message *msgs, size_t n)
{
    size_t total = 3;
    for (size_t k = 0; k < n; k++)
        total += msgs[k].raw_len + 1;
    char *out = cm_xmalloc(total);
    size_t off = 0;
    out[off++] = '[';
    for (size_t k = 0; k < n; k++) {
        if (k)
            out[off++] = ',';
        memcpy(out + off, msgs[k].raw, msgs[k].raw_len);
        off += msgs[k].raw_len;
    }
    out[off++] = ']';
    out[off] = '\0';
    return out;
}

int message_array_parse(const char *json, size_t len, struct message **msgs, size_t *n, char *err,
                        size_t errlen)
{
    *msgs = NULL;
    *n = 0;
    json_t *arr = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    /* PostgreSQL writes jsonb numbers out in full (1e300 as 301 digits),
     * which jansson reads only as reals. */
    if (!arr)
        arr = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, NULL);
    if (!json_is_array(arr)) {
        json_decref(arr);
        snprintf(err, errlen, "stored messages are not a JSON array");
        return -1;
    }
    size_t count = json_array_size(arr);
    struct message *out = cm_xcalloc(count ? count : 1, sizeof *out);
    for (size_t i = 0; i < count; i++) {
        json_t *e = json_array_get(arr, i);
        char *raw = json_dumps(e, JSON_COMPACT | JSON_ENCODE_ANY);
        char why[200];
        snprintf(why, sizeof why, "cannot be encoded");
        int rc = raw ? from_object(e, raw, strlen(raw), &out[i], why, sizeof why) : -1;
        free(raw);
        if (rc != 0) {
            snprintf(err, errlen, "stored message %zu: %s", i, why);
            message_array_free(out, i);
            json_decref(arr);
            return -1;
        }
    }
    json_decref(arr);
    *msgs = out;
    *n = count;
    return 0;
}

void message_array_free(struct message *msgs, size_t n)
{
    for (size_t i = 0; msgs && i < n; i++)
        message_deinit(&msgs[i]);
    free(msgs);
}

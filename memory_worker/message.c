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

double message_parse_time(const char *s)
{
    if (!s || !*s)
        return -1;
    char *end;
    double v = strtod(s, &end);
    if (end != s && *end == '\0' && isfinite(v) && v >= 0)
        return v;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        p = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
    if (!p)
        return -1;
    double frac = 0;
    if (*p == '.') {
        char *fe;
        frac = strtod(p, &fe);
        p = fe;
    }
    double t = (double)timegm(&tm) + frac;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, hh = 0, mm = 0;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) != 2 && sscanf(p + 1, "%2d%2d", &hh, &mm) != 2)
            return -1;
        t -= sign * (hh * 3600 + mm * 60);
        p += strlen(p);
    }
    return *p == '\0' ? t : -1;
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

int message_parse(const char *raw, size_t len, size_t max_bytes, struct message *out, char *err,
                  size_t errlen)
{
    if (len > max_bytes) {
        snprintf(err, errlen, "element of %zu bytes is over MAX_MESSAGE_BYTES (%zu)", len,
                 max_bytes);
        return -1;
    }
    /* The reason is logged: never quote the element (jansson's text does). */
    json_error_t jerr;
    json_t *v = json_loadb(raw, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        snprintf(err, errlen, "not valid JSON (at byte %d)", jerr.position);
        return -1;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        snprintf(err, errlen, "not a JSON object");
        return -1;
    }
    json_t *content = json_object_get(v, "content");
    if (!json_is_string(content) || json_string_length(content) == 0) {
        json_decref(v);
        snprintf(err, errlen, "field \"content\" is missing, empty or not a string");
        return -1;
    }
    json_t *role = json_object_get(v, "role");
    if (role && !json_is_string(role)) {
        json_decref(v);
        snprintf(err, errlen, "field \"role\" is not a string");
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->raw = cm_xstrndup(raw, len);
    out->raw_len = len;
    out->role = cm_xstrdup(role ? json_string_value(role) : "user");
    out->content = cm_xstrdup(json_string_value(content));
    out->room_id = opt_string(v, "room_id");
    out->message_id = opt_string(v, "message_id");
    out->name = opt_string(v, "name");
    json_t *ts = json_object_get(v, "timestamp");
    out->ts = json_is_number(ts)   ? json_number_value(ts)
              : json_is_string(ts) ? message_parse_time(json_string_value(ts))
                                   : -1;
    json_decref(v);
    return 0;
}

void message_deinit(struct message *m)
{
    free(m->raw);
    free(m->role);
    free(m->content);
    free(m->room_id);
    free(m->message_id);
    free(m->name);
    memset(m, 0, sizeof *m);
}

/* cm_json: jansson helpers and the OpenAI error envelope (see cm_json.h). */
#include "cm_json.h"

#include "cm_alloc.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *cm_json_parse(const char *buf, size_t len, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *v = json_loadb(buf, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!v && err && errlen) {
        if (len == 0)
            snprintf(err, errlen, "empty body");
        else
            snprintf(err, errlen, "%s at line %d column %d", jerr.text, jerr.line, jerr.column);
    }
    return v;
}

/* jansson hands the encoder's output over in small pieces (a quote, a key,
 * a colon...): gather them on the stack and add them to the evbuffer in
 * few large pieces (an evbuffer_add per piece cost ~20% of a reply). */
struct dump_stage {
    struct evbuffer *out;
    size_t len;
    int failed;
    char buf[4096];
};

static int stage_flush(struct dump_stage *st)
{
    if (st->len && evbuffer_add(st->out, st->buf, st->len) != 0)
        st->failed = 1;
    st->len = 0;
    return st->failed ? -1 : 0;
}

static int evbuffer_dump_cb(const char *buffer, size_t size, void *data)
{
    struct dump_stage *st = data;
    if (size > sizeof st->buf - st->len) {
        if (stage_flush(st) != 0)
            return -1;
        if (size > sizeof st->buf)
            return evbuffer_add(st->out, buffer, size);
    }
    memcpy(st->buf + st->len, buffer, size);
    st->len += size;
    return 0;
}

int cm_json_to_evbuffer(const json_t *v, struct evbuffer *out)
{
    struct dump_stage st;
    st.out = out;
    st.len = 0;
    st.failed = 0;
    int rc = json_dump_callback(v, evbuffer_dump_cb, &st, JSON_COMPACT | JSON_ENCODE_ANY);
    if (stage_flush(&st) != 0)
        return -1;
    return rc;
}

struct dump_text {
    char *buf;
    size_t len, cap;
};

static int text_dump_cb(const char *buffer, size_t size, void *data)
{
    struct dump_text *t = data;
    if (size >= t->cap - t->len) {
        size_t cap = t->cap ? t->cap : 256;
        while (size >= cap - t->len)
            cap *= 2;
        t->buf = cm_xrealloc(t->buf, cap);
        t->cap = cap;
    }
    memcpy(t->buf + t->len, buffer, size);
    t->len += size;
    return 0;
}

char *cm_json_dumps_flags(const json_t *v, size_t flags)
{
    struct dump_text t = {NULL, 0, 0};
    if (json_dump_callback(v, text_dump_cb, &t, flags) != 0) {
        free(t.buf);
        return NULL;
    }
    if (!t.buf)
        t.buf = cm_xmalloc(1);
    t.buf[t.len] = '\0';
    return t.buf;
}

char *cm_json_dumps(const json_t *v)
{
    return cm_json_dumps_flags(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

const char *cm_json_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

long long cm_json_int(const json_t *obj, const char *key, long long def)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : def;
}

json_t *cm_oai_error(const char *message, const char *type, const char *param, const char *code)
{
    json_t *inner = json_object();
    json_t *msg = json_string(message);
    if (!msg) /* not UTF-8 (upstream text): keep the envelope valid */
        msg = json_string("(error message was not valid UTF-8)");
    json_object_set_new(inner, "message", msg);
    json_object_set_new(inner, "type", json_string(type));
    json_object_set_new(inner, "param", param ? json_string(param) : json_null());
    json_object_set_new(inner, "code", code ? json_string(code) : json_null());
    return json_pack("{s:o}", "error", inner);
}

const char *cm_oai_error_type(int status)
{
    switch (status) {
    case 400:
    case 401:
    case 404:
    case 405:
    case 409:
    case 413:
    case 415:
    case 422:
        return "invalid_request_error";
    case 403:
        return "permission_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable_error";
    case 504:
        return "timeout_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

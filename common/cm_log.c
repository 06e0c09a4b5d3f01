/* cm_log: structured logging (see cm_log.h). */
#include "cm_log.h"

#include "cm_json.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum cm_log_level cm_log_min_level = CM_LOG_INFO;
static enum cm_log_format log_format = CM_LOG_TEXT;
static const char *log_service = "app";
/* The worker thread writing (cm_log_set_worker); -1 = none. */
static _Thread_local int log_worker = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *const cm_log_level_names[] = {"debug", "info", "warn", "warning", "error", NULL};
const char *const cm_log_format_names[] = {"text", "json", NULL};

void cm_log_init_names(const char *service, const char *level, const char *format)
{
    enum cm_log_level l = CM_LOG_INFO;
    enum cm_log_format f = CM_LOG_TEXT;
    if (level)
        cm_log_parse_level(level, &l);
    if (format)
        cm_log_parse_format(format, &f);
    cm_log_init(service, l, f);
}

void cm_log_set_worker(int worker)
{
    log_worker = worker;
}

void cm_log_init(const char *service, enum cm_log_level level, enum cm_log_format format)
{
    log_service = service;
    cm_log_min_level = level;
    log_format = format;
}

int cm_log_parse_level(const char *name, enum cm_log_level *out)
{
    static const struct {
        const char *name;
        enum cm_log_level level;
    } names[] = {{"debug", CM_LOG_DEBUG},
                 {"info", CM_LOG_INFO},
                 {"warn", CM_LOG_WARN},
                 {"warning", CM_LOG_WARN},
                 {"error", CM_LOG_ERROR}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

int cm_log_parse_format(const char *name, enum cm_log_format *out)
{
    if (strcasecmp(name, "text") == 0 || strcasecmp(name, "logfmt") == 0) {
        *out = CM_LOG_TEXT;
        return 0;
    }
    if (strcasecmp(name, "json") == 0) {
        *out = CM_LOG_JSON;
        return 0;
    }
    return -1;
}

static void format_ts(char *buf, size_t len)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
}

/* logfmt value: bare when safe, else a JSON-style quoted string. */
static void text_append_value(json_t *v, FILE *mem)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        int bare = *s != '\0';
        for (const char *p = s; *p; p++) {
            unsigned char c = (unsigned char)*p;
            if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) {
                bare = 0;
                break;
            }
        }
        if (bare) {
            fputs(s, mem);
            return;
        }
    }
    char *enc = cm_json_dumps_flags(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (enc) {
        fputs(enc, mem);
        free(enc);
    }
}

void cm_log_fields(enum cm_log_level level, const char *req_id, const char *event, json_t *fields)
{
    char ts[40];
    format_ts(ts, sizeof ts);
    char *line = NULL;
    size_t line_len = 0;
    FILE *mem = open_memstream(&line, &line_len);
    if (!mem) {
        json_decref(fields);
        return;
    }
    if (log_format == CM_LOG_JSON) {
        json_t *obj = json_object();
        json_object_set_new(obj, "ts", json_string(ts));
        json_object_set_new(obj, "level", json_string(level_names[level]));
        json_object_set_new(obj, "service", json_string(log_service));
        if (log_worker >= 0)
            json_object_set_new(obj, "worker", json_integer(log_worker));
        json_object_set_new(obj, "event", json_string(event));
        if (req_id && *req_id)
            json_object_set_new(obj, "req_id", json_string(req_id));
        if (fields)
            json_object_update_missing(obj, fields);
        char *enc =
            cm_json_dumps_flags(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
        if (enc) {
            fputs(enc, mem);
            free(enc);
        }
        json_decref(obj);
    } else {
        fprintf(mem, "ts=%s level=%s service=%s", ts, level_names[level], log_service);
        if (log_worker >= 0)
            fprintf(mem, " worker=%d", log_worker);
        fprintf(mem, " event=%s", event);
        if (req_id && *req_id)
            fprintf(mem, " req_id=%s", req_id);
        if (fields) {
            const char *key;
            json_t *v;
            json_object_foreach(fields, key, v)
            {
                fprintf(mem, " %s=", key);
                text_append_value(v, mem);
            }
        }
    }
    fputc('\n', mem);
    fclose(mem);
    /* One write per line: lines of different threads never interleave (one
     * write(2) of a line is atomic up to PIPE_BUF on pipes, and stderr's
     * lock orders the writes). */
    fwrite(line, 1, line_len, stderr);
    free(line);
    json_decref(fields);
}

void cm_log_msg(enum cm_log_level level, const char *req_id, const char *event, const char *fmt,
                ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    json_t *fields = json_object();
    json_object_set_new(fields, "msg", json_string(buf));
    if (!json_object_get(fields, "msg")) /* not valid UTF-8: keep a marker */
        json_object_set_new(fields, "msg", json_string("(unprintable)"));
    cm_log_fields(level, req_id, event, fields);
}

static void libevent_log_cb(int severity, const char *msg)
{
    enum cm_log_level level = severity >= EVENT_LOG_ERR    ? CM_LOG_ERROR
                              : severity >= EVENT_LOG_WARN ? CM_LOG_WARN
                              : severity >= EVENT_LOG_MSG  ? CM_LOG_INFO
                                                           : CM_LOG_DEBUG;
    CM_LOGM(level, NULL, "libevent", "%s", msg);
}

void cm_log_capture_libevent(void)
{
    event_set_log_callback(libevent_log_cb);
}

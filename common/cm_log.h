/*
 * cm_log: structured, levelled logging to stderr.
 *
 * One line per event, either logfmt text ("ts=... level=info ...") or one JSON
 * object per line (LOG_FORMAT=json). Every line carries the service name, the
 * event name and, when there is one, the request id. The level is tested
 * before anything is formatted (CM_LOG_* macros), like redis serverLog.
 *
 * Never pass secrets or message bodies at INFO or above: callers log sizes,
 * counts and identifiers only.
 *
 * Not thread-safe for configuration (cm_log_init before threads start);
 * writing is safe from any thread (one fwrite per line: lines never
 * interleave). A worker thread names itself once (cm_log_set_worker) and
 * its lines carry "worker=N".
 */
#ifndef CM_LOG_H
#define CM_LOG_H

#include <jansson.h>

enum cm_log_level { CM_LOG_DEBUG = 0, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR };
enum cm_log_format { CM_LOG_TEXT = 0, CM_LOG_JSON };

extern enum cm_log_level cm_log_min_level;

/* Accepted LOG_LEVEL and LOG_FORMAT values (NULL-terminated), for the
 * services' configuration tables. */
extern const char *const cm_log_level_names[];
extern const char *const cm_log_format_names[];

/* Initialises from LOG_LEVEL/LOG_FORMAT text already validated against the
 * lists above (an unknown name keeps the default: info, text). */
void cm_log_init_names(const char *service, const char *level, const char *format);

/* service: borrowed, must outlive the process (a string literal). */
void cm_log_init(const char *service, enum cm_log_level level, enum cm_log_format format);

/* Tags the calling thread's lines with worker=N (N >= 0; -1 = no tag). */
void cm_log_set_worker(int worker);

/* Returns 0 and sets *out, or -1 for an unknown name. */
int cm_log_parse_level(const char *name, enum cm_log_level *out);
int cm_log_parse_format(const char *name, enum cm_log_format *out);

/*
 * Writes one line. req_id and event are borrowed (req_id may be NULL).
 * fields (may be NULL) is a JSON object of extra fields; the reference is
 * stolen. Use cm_log_fields() through the CM_LOGF macro.
 */
void cm_log_fields(enum cm_log_level level, const char *req_id, const char *event, json_t *fields);

/* Formats msg with printf and writes it as the "msg" field. */
void cm_log_msg(enum cm_log_level level, const char *req_id, const char *event, const char *fmt,
                ...) __attribute__((format(printf, 4, 5)));

/* Route libevent's internal warnings through cm_log (call once). */
void cm_log_capture_libevent(void);

#define CM_LOG_ENABLED(lvl) ((lvl) >= cm_log_min_level)

#define CM_LOGF(lvl, rid, event, fields_expr)                                                      \
    do {                                                                                           \
        if (CM_LOG_ENABLED(lvl))                                                                   \
            cm_log_fields((lvl), (rid), (event), (fields_expr));                                   \
    } while (0)

#define CM_LOGM(lvl, rid, event, ...)                                                              \
    do {                                                                                           \
        if (CM_LOG_ENABLED(lvl))                                                                   \
            cm_log_msg((lvl), (rid), (event), __VA_ARGS__);                                        \
    } while (0)

#define CM_DEBUG(rid, event, ...) CM_LOGM(CM_LOG_DEBUG, rid, event, __VA_ARGS__)
#define CM_INFO(rid, event, ...) CM_LOGM(CM_LOG_INFO, rid, event, __VA_ARGS__)
#define CM_WARN(rid, event, ...) CM_LOGM(CM_LOG_WARN, rid, event, __VA_ARGS__)
#define CM_ERROR(rid, event, ...) CM_LOGM(CM_LOG_ERROR, rid, event, __VA_ARGS__)

#endif

/*
 * cm_json: helpers on jansson shared by both services.
 *
 * Parsing is bounded by the caller (the body size limit); jansson itself
 * bounds nesting depth. Ownership follows jansson: functions returning json_t*
 * return a new reference the caller must json_decref(); "_new" setters steal.
 */
#ifndef CM_JSON_H
#define CM_JSON_H

#include <jansson.h>
#include <stddef.h>

struct evbuffer;

/*
 * Parses exactly one JSON value from buf[0..len). Returns a new reference,
 * or NULL with a short reason (position included) in err.
 */
json_t *cm_json_parse(const char *buf, size_t len, char *err, size_t errlen);

/* Appends the compact encoding of v to out. Returns 0 or -1. */
int cm_json_to_evbuffer(const json_t *v, struct evbuffer *out);

/* Compact encoding; caller frees with free(). NULL only on invalid input.
 * Use these, never json_dumps(): its result comes from jansson's allocator
 * hooks (cm_mem_budget.h: counted in the budget, and from the per-request
 * arena inside a JSON scope), so free() on it is wrong. */
char *cm_json_dumps(const json_t *v);
/* The same with jansson's encoding flags. */
char *cm_json_dumps_flags(const json_t *v, size_t flags);

/* Borrowed string member, or NULL if absent or not a string. */
const char *cm_json_str(const json_t *obj, const char *key);

/* Integer member or def if absent / not an integer. */
long long cm_json_int(const json_t *obj, const char *key, long long def);

/*
 * OpenAI error envelope {"error":{"message","type","param","code"}}.
 * param and code may be NULL (sent as null). Returns a new reference.
 */
json_t *cm_oai_error(const char *message, const char *type, const char *param, const char *code);

/* The OpenAI error type conventionally used with an HTTP status. */
const char *cm_oai_error_type(int status);

#endif

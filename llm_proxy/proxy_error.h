/*
 * proxy_error: the error a translation step reports, turned into an OpenAI
 * error reply by the handler (or an Anthropic one on /v1/messages). Plain value type; no ownership.
 */
#ifndef PROXY_ERROR_H
#define PROXY_ERROR_H

struct proxy_error {
    int status;        /* HTTP status to answer with */
    char message[512]; /* human text */
    char param[128];   /* field path, "" = null */
    const char *code;  /* static string or NULL */
    /* A refusal by the operator's policy: the reason counted in
     * llm_proxy_rejected_requests_total (static string), else NULL. */
    const char *reject_reason;
};

void proxy_error_set(struct proxy_error *e, int status, const char *param, const char *code,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The request's "model" (borrowed), or NULL with err set to the 400 both
 * endpoints give for a missing one. */
struct json_t;
const char *proxy_require_model(const struct json_t *oai, struct proxy_error *err);

/* The Anthropic Messages API's form of an error (POST /v1/messages):
 * its error type for an HTTP status (static string: invalid_request_error,
 * authentication_error, permission_error, not_found_error,
 * request_too_large, rate_limit_error, api_error, overloaded_error), and
 * {"type":"error","error":{"type","message"}} (new reference). */
const char *proxy_error_anthropic_type(int status);
struct json_t *proxy_error_anthropic_json(const struct proxy_error *e);

#endif

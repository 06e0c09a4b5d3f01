/* cm_cors: CORS response headers (see cm_cors.h). */
#include "cm_cors.h"

#include <event2/http.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const fixed_headers[] = {
    "authorization",   "content-type",  "x-request-id", "accept",      "x-api-key",
    "idempotency-key", "cache-control", "user-agent",   "retry-after", NULL};
static const char *const prefixes[] = {"x-stainless-", "openai-", "anthropic-", NULL};

static int token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static int allowed_name(const char *name, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!token_char(name[i]))
            return 0;
    for (const char *const *p = prefixes; *p; p++) {
        size_t pl = strlen(*p);
        if (len > pl && strncasecmp(name, *p, pl) == 0)
            return 1;
    }
    return 0; /* the fixed ones are always listed */
}

void cm_cors_preflight_headers(struct evkeyvalq *out, const char *origin, const char *allow_methods,
                               const char *request_headers)
{
    char list[2048];
    size_t used = 0;
    for (const char *const *h = fixed_headers; *h; h++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", *h);
    /* Requested SDK headers, each a token of at most 64 characters. */
    const char *p = request_headers;
    while (p && *p && used < sizeof list - 80) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        size_t len = (size_t)(p - start);
        if (len && len <= 64 && allowed_name(start, len))
            used += (size_t)snprintf(list + used, sizeof list - used, ", %.*s", (int)len, start);
    }
    evhttp_add_header(out, "Access-Control-Allow-Origin", origin);
    evhttp_add_header(out, "Vary",
                      "Origin, Access-Control-Request-Method, "
                      "Access-Control-Request-Headers");
    evhttp_add_header(out, "Access-Control-Allow-Methods", allow_methods);
    evhttp_add_header(out, "Access-Control-Allow-Headers", list);
    evhttp_add_header(out, "Access-Control-Max-Age", CM_CORS_MAX_AGE);
}

void cm_cors_response_headers(struct evkeyvalq *out, const char *origin)
{
    evhttp_add_header(out, "Access-Control-Allow-Origin", origin);
    evhttp_add_header(out, "Vary", "Origin");
    evhttp_add_header(out, "Access-Control-Expose-Headers", "x-request-id, retry-after");
}

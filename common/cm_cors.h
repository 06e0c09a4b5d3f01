/*
 * cm_cors: the CORS headers (Fetch standard) for origins the policy in
 * cm_origin.h allows. cm_http_server decides *whether* (the Origin is
 * allowed); this module writes *what*:
 *   - a preflight (OPTIONS with Origin and Access-Control-Request-Method)
 *     is answered 204 with Allow-Origin (the Origin echoed), Allow-Methods,
 *     Allow-Headers and Max-Age, before any API-key check (browsers never
 *     send credentials on a preflight);
 *   - every other response to an allowed Origin carries Allow-Origin,
 *     Vary: Origin and Expose-Headers (x-request-id, retry-after).
 * No Allow-Credentials: the API key travels in Authorization, not cookies.
 *
 * Allow-Headers names the request headers the official OpenAI and Anthropic
 * SDKs send: a fixed list plus every requested header with the prefix
 * x-stainless-, openai- or anthropic- (the SDKs add such headers between
 * versions). Other requested headers are left out, so the browser refuses
 * them.
 *
 * Ownership: borrows everything; headers are copied into out.
 */
#ifndef CM_CORS_H
#define CM_CORS_H

struct evkeyvalq;

#define CM_CORS_MAX_AGE "600"

/* allow_methods: "GET, POST" etc. request_headers: the preflight's
 * Access-Control-Request-Headers (NULL = none). */
void cm_cors_preflight_headers(struct evkeyvalq *out, const char *origin, const char *allow_methods,
                               const char *request_headers);
void cm_cors_response_headers(struct evkeyvalq *out, const char *origin);

#endif

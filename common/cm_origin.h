/*
 * cm_origin: which browser origins may call a service (the one parser and
 * the one check behind CORS and the WebSocket Origin check).
 *
 * A policy comes from a comma-separated list (LLM_PROXY_ALLOWED_ORIGINS):
 *   - ""/NULL (the default): pages on this machine only: an Origin whose
 *     host is localhost, 127.0.0.0/8 or [::1] (scheme http/https, any
 *     port), and only while the request's Host header is such a loopback
 *     name as well. Any other Host may be an attacker's domain re-pointed at
 *     127.0.0.1 (DNS rebinding), whose pages would otherwise be "same origin"
 *     with the proxy: every browser request (one carrying an Origin) under
 *     another Host is refused unless the operator lists its origin.
 *   - "*": every origin.
 *   - "https://chat.example.com, http://localhost:3000": exactly these
 *     (scheme, host and port compared case-insensitively; a default port
 *     may be omitted or written). An explicit list replaces the default.
 * A request without an Origin header (not a browser, or a same-origin GET)
 * is always allowed: the policy is about browsers, the API key about
 * everyone.
 *
 * Ownership: cm_origin_policy_new() returns a policy the caller frees with
 * cm_origin_policy_free(); cm_origin_allowed() borrows everything.
 */
#ifndef CM_ORIGIN_H
#define CM_ORIGIN_H

#include <stddef.h>

struct cm_origin_policy;

/* Parses list. Returns NULL with a reason in err when an entry is not an
 * origin ("scheme://host[:port]", no path) nor "*". */
struct cm_origin_policy *cm_origin_policy_new(const char *list, char *err, size_t errlen);
void cm_origin_policy_free(struct cm_origin_policy *p);

/* 1 when a request carrying this Origin header (NULL = none) and this Host
 * header (NULL = none) may be served, else 0. "null" (sandboxed pages,
 * file://) is allowed only by "*". */
int cm_origin_allowed(const struct cm_origin_policy *p, const char *origin, const char *host);

/* 1 when the policy is "*". */
int cm_origin_any(const struct cm_origin_policy *p);

#endif

/*
 * cm_http_framing: refuses requests whose body framing two HTTP parsers
 * could read differently (request smuggling, RFC 9112 §6.1-§6.3).
 *
 * evhttp 2.1 frames a body with the *first* Content-Length header, ignores
 * Content-Length when Transfer-Encoding is "chunked", treats any other
 * Transfer-Encoding as absent, and reads no body for HEAD. A front end that
 * decides otherwise (last Content-Length, "gzip, chunked", ...) would see a
 * different request boundary: the bytes one of them calls a body, the other
 * serves as the next request. Every such request is refused here; the
 * caller answers 400 and closes the connection, so nothing behind the
 * ambiguous head is ever parsed.
 *
 * Ownership: borrows the headers; *code is a static string.
 */
#ifndef CM_HTTP_FRAMING_H
#define CM_HTTP_FRAMING_H

#include <stddef.h>

struct evkeyvalq;

/* method_has_body: 0 for methods that must not carry a body here (GET,
 * HEAD). Returns 0 when the framing is unambiguous, else -1 with an error
 * code ("conflicting_content_length", "invalid_transfer_encoding",
 * "unexpected_body") and a message. */
int cm_http_framing_check(const struct evkeyvalq *headers, int method_has_body, const char **code,
                          char *msg, size_t msglen);

#endif

/*
 * cm_http_framing: the request framing rules of this server, in one place
 * (request smuggling, RFC 9112 §6.1-§6.3, §7.1).
 *
 * evhttp 2.1 frames a body with the *first* Content-Length header (read
 * with strtoll: "+5", " 5" pass), ignores Content-Length when
 * Transfer-Encoding is "chunked", treats any other Transfer-Encoding as
 * absent, reads chunk sizes with strtoll (so "0x41", "+41" and "   " pass)
 * and reads no body for HEAD. A front end that decides otherwise (last
 * Content-Length, "gzip, chunked", ...) would see a different request
 * boundary: the bytes one of them calls a body, the other serves as the next
 * request. So:
 *   - the value parsers below accept exactly the RFC grammar, and
 *     cm_http_track (in front of evhttp) makes evhttp refuse anything else
 *     before it reads a body with it;
 *   - cm_http_framing_check() refuses every ambiguous head once evhttp has
 *     parsed it; the caller answers 400 and closes the connection, so
 *     nothing behind the ambiguous head is ever parsed.
 *
 * Ownership: borrows the headers; *code is a static string. The parsers
 * are plain value types.
 */
#ifndef CM_HTTP_FRAMING_H
#define CM_HTTP_FRAMING_H

#include <stddef.h>

struct evkeyvalq;

/* A Content-Length field value (RFC 9110 §8.6: 1*DIGIT, leading zeros
 * allowed), optionally surrounded by spaces or tabs, fed one byte at a time.
 * Values above CM_HTTP_MAX_LENGTH are invalid. */
#define CM_HTTP_MAX_LENGTH 1000000000000000000LL
struct cm_http_length {
    int state; /* 0 before the digits, 1 in them, 2 after them */
    long long value;
};
void cm_http_length_init(struct cm_http_length *l);
/* 0, or -1 when c cannot continue a valid value. */
int cm_http_length_feed(struct cm_http_length *l, char c);
/* The value once the field ended: 0, or -1 when there was no digit. */
int cm_http_length_end(const struct cm_http_length *l, long long *value);
/* A whole value: 0 with *value, or -1. */
int cm_http_length_parse(const char *s, long long *value);

/* A chunk-size line without its CR LF (RFC 9112 §7.1: 1*HEXDIG, then
 * optional whitespace and chunk extensions, which are not interpreted), fed
 * one byte at a time. Sizes of 2^60 and more are invalid. */
struct cm_http_chunk_size {
    int state; /* 0 before the digits, 1 in them, 2 in the extensions */
    long long value;
};
void cm_http_chunk_size_init(struct cm_http_chunk_size *s);
/* 0, or -1 when c cannot continue a valid line (CR and LF are the
 * caller's: they end the line). */
int cm_http_chunk_size_feed(struct cm_http_chunk_size *s, char c);

/* method_has_body: 0 for methods that must not carry a body here (GET,
 * HEAD); http10: the request is HTTP/1.0. Returns 0 when the framing is
 * unambiguous, else -1 with an error code ("conflicting_content_length",
 * "invalid_content_length", "invalid_transfer_encoding", "unexpected_body")
 * and a message. */
int cm_http_framing_check(const struct evkeyvalq *headers, int method_has_body, int http10,
                          const char **code, char *msg, size_t msglen);

#endif

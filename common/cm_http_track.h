/*
 * cm_http_track: follows the request framing of one connection's input,
 * byte for byte ahead of evhttp, for the one thing evhttp 2.1 gets wrong on
 * input it must accept: chunk extensions (RFC 9112 §7.1.1, "5;name=v").
 * evhttp reads a chunk-size line with strtoll() and refuses anything but a
 * space after the digits, so a legal extension fails the request (413).
 * The tracker turns each ';' of a chunk-size line into a space, which evhttp
 * then skips, before evhttp reads the line. It mirrors evhttp's framing
 * (first Transfer-Encoding and first Content-Length header, no body for
 * HEAD, TRACE and unknown methods, empty lines before a chunk size skipped);
 * on anything it cannot follow with certainty (folded header lines, a
 * framing header too long, an invalid size) it stops for good and changes
 * nothing more on that connection: evhttp then refuses what it refuses.
 *
 * Plain value type embedded in the connection guard; no ownership.
 */
#ifndef CM_HTTP_TRACK_H
#define CM_HTTP_TRACK_H

#include <stddef.h>

struct evbuffer;

enum cm_http_track_state {
    CM_TRACK_HEAD,       /* request line and headers */
    CM_TRACK_FIXED,      /* Content-Length body */
    CM_TRACK_CHUNK_SIZE, /* chunk-size line (or the empty line after data) */
    CM_TRACK_CHUNK_DATA,
    CM_TRACK_TRAILER,
    CM_TRACK_OFF /* stopped (lost track, or the connection was taken over) */
};

/* Longest chunk-size line (size, extensions, CR LF) accepted. evhttp 2.1
 * bounds request heads and trailers but buffers a chunk-size line without
 * end; the caller closes a connection whose line grows past this. */
#define CM_TRACK_MAX_CHUNK_LINE 4096

struct cm_http_track {
    enum cm_http_track_state state;
    int chunk_line_too_long; /* set (with state OFF) when a chunk-size line passed the limit */
    long long left; /* bytes of FIXED / CHUNK_DATA still to come */
    int first_line; /* HEAD: the next line is the request line */
    int has_body;   /* HEAD: the method may carry a body */
    int chunked;
    long long content_length; /* -1 = none */
    int seen_te, seen_cl;
    size_t line_len; /* bytes of the current line so far (kept: at most sizeof line - 1) */
    char line[256];
};

void cm_http_track_init(struct cm_http_track *t);
/* The n bytes just appended at the end of buf (which holds them last). May
 * rewrite bytes of a chunk-size line in place. Returns how many of them are
 * request body (Content-Length body or chunk data). */
size_t cm_http_track_feed(struct cm_http_track *t, struct evbuffer *buf, size_t n);

#endif

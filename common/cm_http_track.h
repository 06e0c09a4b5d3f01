/*
 * cm_http_track: follows the request framing of one connection's input,
 * byte for byte ahead of evhttp, so that every byte evhttp will read as a
 * request body is known (and charged to the memory budget) before evhttp
 * buffers it, and so that evhttp 2.1 never frames a body on input the RFC
 * forbids.
 *
 * It mirrors evhttp's framing (first Transfer-Encoding and first
 * Content-Length header, no body for HEAD, TRACE and unknown methods,
 * empty lines before a chunk size skipped) and never stops following it
 * while a body may still be read. Input it must not let through is made
 * unreadable for evhttp in place, before evhttp sees it, so that evhttp
 * answers its own error (400, or 413 in a body) and closes the connection
 * without reading any body of that request ("refused"):
 *   - in a head (and in trailers): obs-fold continuation lines, NUL, a CR
 *     not followed by LF, whitespace between a field name and its colon, a
 *     Content-Length that is not 1*DIGIT, a Transfer-Encoding other than
 *     "chunked", and a Content-Length body the admit callback refuses (the
 *     memory budget). The byte that shows it (and a run of whitespace after
 *     it) becomes CR, which evhttp rejects in a field line;
 *   - in a chunk-size line: anything but 1*HEXDIG then optional whitespace
 *     and ";" extensions ("0x41", "+41", "   ", ";x"). The byte becomes
 *     'g', which evhttp's strtoll stops at and rejects.
 * What it rewrites for evhttp to accept: ';' (and a tab) after the digits of
 * a chunk-size line become a space (evhttp refuses chunk extensions, legal
 * in RFC 9112 §7.1.1), a tab in a Content-Length or Transfer-Encoding value
 * becomes a space.
 *
 * Plain value type embedded in the connection guard; no ownership.
 */
#ifndef CM_HTTP_TRACK_H
#define CM_HTTP_TRACK_H

#include "cm_http_framing.h"

#include <stddef.h>

struct evbuffer;

/* States; transitions: HEAD -> FIXED | CHUNK_SIZE | HEAD (no body) |
 * REFUSED; FIXED -> HEAD; CHUNK_SIZE -> CHUNK_DATA | TRAILER | REFUSED;
 * CHUNK_DATA -> CHUNK_SIZE; TRAILER -> HEAD | REFUSED. REFUSED is final;
 * OFF is set from outside only (cm_http_track_off). */
enum cm_http_track_state {
    CM_TRACK_HEAD,       /* request line and headers */
    CM_TRACK_FIXED,      /* Content-Length body */
    CM_TRACK_CHUNK_SIZE, /* chunk-size line (or the empty line after data) */
    CM_TRACK_CHUNK_DATA,
    CM_TRACK_TRAILER,
    CM_TRACK_REFUSED, /* evhttp will refuse this request: nothing more is body */
    CM_TRACK_OFF      /* the connection no longer carries HTTP (WebSocket) */
};

/* Why a request was refused (static; status: what the client should get). */
struct cm_http_refusal {
    int status;
    const char *code;
    const char *message;
};
extern const struct cm_http_refusal cm_http_refused_budget; /* 503, "overloaded" */

/* Longest line the tracker lets evhttp buffer where evhttp itself has no
 * limit (a chunk-size line, or the rest of a refused line); the caller
 * closes a connection whose line grows past this. */
#define CM_TRACK_MAX_CHUNK_LINE 4096

/* Called when a head announces a Content-Length body of n > 0 bytes (at the
 * end of that header line): 0 admits it, -1 refuses the request. */
typedef int (*cm_http_track_admit_cb)(void *arg, long long n);

struct cm_http_track {
    enum cm_http_track_state state;
    const struct cm_http_refusal *refused; /* with REFUSED; NULL: evhttp's own reason */
    int chunk_line_too_long;               /* set (with REFUSED) when a line passed the limit */
    long long left;                        /* bytes of FIXED / CHUNK_DATA still to come */
    cm_http_track_admit_cb admit;
    void *admit_arg;
    /* the head being read */
    int first_line; /* the next line is the request line */
    int has_body;   /* the method may carry a body */
    int chunked;
    long long content_length; /* -1 = none */
    int seen_te, seen_cl;
    /* the line being read */
    size_t line_len; /* bytes so far, CR excluded */
    int cr;          /* the last byte was a CR */
    int in_value;    /* past the field name's colon */
    int kind;        /* 0 other field, 1 Content-Length, 2 Transfer-Encoding */
    size_t name_len;
    char name[18];
    char method[8]; /* start of the request line */
    size_t te_matched;
    int te_state; /* 0 before "chunked", 1 in it, 2 after it, -1 invalid */
    struct cm_http_length length;
    struct cm_http_chunk_size size;
    /* REFUSED: the refused line is still arriving; run = CRs at its end */
    int line_open;
    int run;
};

void cm_http_track_init(struct cm_http_track *t);
/* The n bytes just appended at the end of buf (which holds them last). May
 * rewrite them in place (see above). Returns how many of them are request
 * body (Content-Length body or chunk data). */
size_t cm_http_track_feed(struct cm_http_track *t, struct evbuffer *buf, size_t n);
/* The connection was taken over: stop. */
void cm_http_track_off(struct cm_http_track *t);

#endif

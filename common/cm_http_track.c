/* cm_http_track: request framing tracker in front of evhttp (see cm_http_track.h). */
#include "cm_http_track.h"

#include <event2/buffer.h>
#include <string.h>
#include <strings.h>

const struct cm_http_refusal cm_http_refused_budget = {
    503, "overloaded",
    "The server is at its memory limit for request data (LLM_PROXY_MAX_BODY_MEMORY); retry "
    "shortly."};
static const struct cm_http_refusal refused_fold = {
    400, "obsolete_line_folding", "Header lines may not be folded (RFC 9112 section 5.2)."};
static const struct cm_http_refusal refused_nul = {400, "invalid_header",
                                                   "The request head contains a NUL byte."};
static const struct cm_http_refusal refused_cr = {
    400, "invalid_header", "The request head contains a CR that does not end a line."};
static const struct cm_http_refusal refused_name = {
    400, "invalid_header", "A header name is followed by whitespace before its colon."};
static const struct cm_http_refusal refused_length = {
    400, "invalid_content_length", "Content-Length must be a decimal number (digits only)."};
static const struct cm_http_refusal refused_te = {
    400, "invalid_transfer_encoding", "Only a single 'Transfer-Encoding: chunked' is supported."};
static const struct cm_http_refusal refused_chunk = {
    400, "invalid_chunk_size",
    "A chunk size must be hexadecimal digits, optionally followed by extensions."};

static void start_line(struct cm_http_track *t)
{
    t->line_len = 0;
    t->cr = 0;
    t->in_value = 0;
    t->kind = 0;
    t->name_len = 0;
    t->te_matched = 0;
    t->te_state = 0;
    cm_http_length_init(&t->length);
    cm_http_chunk_size_init(&t->size);
}

static void start_head(struct cm_http_track *t)
{
    t->state = CM_TRACK_HEAD;
    t->first_line = 1;
    t->has_body = 0;
    t->chunked = 0;
    t->content_length = -1;
    t->seen_te = t->seen_cl = 0;
    start_line(t);
}

void cm_http_track_init(struct cm_http_track *t)
{
    memset(t, 0, sizeof *t);
    start_head(t);
}

void cm_http_track_off(struct cm_http_track *t)
{
    t->state = CM_TRACK_OFF;
}

/* evhttp 2.1's evhttp_method_may_have_body(); the method ends at a space. */
static int method_has_body(const char *m, size_t len)
{
    static const char *const with_body[] = {"POST",   "PUT",     "PATCH",   "GET",
                                            "DELETE", "OPTIONS", "CONNECT", NULL};
    for (const char *const *w = with_body; *w; w++) {
        size_t wl = strlen(*w);
        if (len > wl && memcmp(m, *w, wl) == 0 && m[wl] == ' ')
            return 1;
    }
    return 0;
}

/*
 * Refuses the request at byte *p, the newest byte of the buffer (evhttp has
 * not read it: it reads whole lines only, and this line is not complete).
 * In a field line *p becomes CR, and so does every space, tab, NUL or LF
 * right after it until the line holds two CRs before its end: evhttp then
 * sees a CR inside the line that neither ends it nor starts a continuation
 * (RFC 7230 folding), and refuses the line whether the CR falls in the name
 * (strchr(key, '\r')) or the value (evhttp_header_is_valid_value). In a
 * chunk-size line *p becomes 'g': evhttp's strtoll stops there and anything
 * but a space or the end after the digits is an error.
 */
static void refuse(struct cm_http_track *t, char *p, const struct cm_http_refusal *why)
{
    int field_line = t->state != CM_TRACK_CHUNK_SIZE;
    t->state = CM_TRACK_REFUSED;
    t->refused = why;
    t->line_open = 1;
    if (field_line) {
        *p = '\r';
        t->run = 1 + t->cr;
    } else {
        *p = 'g';
        t->run = 0;
    }
}

static void refused_byte(struct cm_http_track *t, char *p)
{
    char c = *p;
    if (t->run) {
        if (c == '\r') {
            t->run++;
        } else if (c == ' ' || c == '\t' || c == '\0' || (c == '\n' && t->run < 2)) {
            *p = '\r';
            t->run++;
        } else if (c == '\n') {
            t->line_open = 0;
            return;
        } else {
            t->run = 0;
        }
    } else if (c == '\n') {
        t->line_open = 0;
        return;
    }
    if (++t->line_len > CM_TRACK_MAX_CHUNK_LINE) {
        t->chunk_line_too_long = 1;
        t->line_open = 0;
    }
}

static int name_is(const struct cm_http_track *t, const char *name)
{
    size_t n = strlen(name);
    return t->name_len == n && strncasecmp(t->name, name, n) == 0;
}

/* Transfer-Encoding value, byte by byte: spaces, "chunked", spaces. */
static void te_feed(struct cm_http_track *t, char c)
{
    static const char word[] = "chunked";
    if (c == ' ') {
        if (t->te_state == 1)
            t->te_state = t->te_matched == sizeof word - 1 ? 2 : -1;
        return;
    }
    if (t->te_state == 0)
        t->te_state = 1;
    if (t->te_state != 1 || t->te_matched >= sizeof word - 1 || (c | 0x20) != word[t->te_matched])
        t->te_state = -1;
    else
        t->te_matched++;
}

/* The LF ending a line of the head or trailer (at *p). */
static void field_line_end(struct cm_http_track *t, char *p)
{
    if (t->state == CM_TRACK_HEAD && t->first_line) {
        if (t->line_len > 0) { /* (evhttp refuses empty lines before a request) */
            t->first_line = 0;
            t->has_body = method_has_body(
                t->method, t->line_len < sizeof t->method ? t->line_len : sizeof t->method);
        }
        start_line(t);
        return;
    }
    if (t->line_len == 0) { /* end of the head or trailer */
        if (t->state == CM_TRACK_TRAILER || !t->has_body) {
            start_head(t);
        } else if (t->chunked) {
            t->state = CM_TRACK_CHUNK_SIZE;
            start_line(t);
        } else if (t->content_length > 0) {
            t->state = CM_TRACK_FIXED;
            t->left = t->content_length;
        } else {
            start_head(t);
        }
        return;
    }
    if (!t->in_value) { /* no colon: evhttp refuses the line itself */
        t->state = CM_TRACK_REFUSED;
        return;
    }
    if (t->kind == 1) {
        long long n;
        if (cm_http_length_end(&t->length, &n) != 0) {
            refuse(t, p, &refused_length);
            return;
        }
        if (t->state == CM_TRACK_HEAD && !t->seen_cl++) {
            t->content_length = n;
            if (t->has_body && !t->chunked && n > 0 && t->admit && t->admit(t->admit_arg, n) != 0) {
                refuse(t, p, &cm_http_refused_budget);
                return;
            }
        }
    } else if (t->kind == 2) {
        if (t->te_state != 2 && !(t->te_state == 1 && t->te_matched == 7)) {
            refuse(t, p, &refused_te);
            return;
        }
        if (t->state == CM_TRACK_HEAD && !t->seen_te++)
            t->chunked = 1;
    }
    start_line(t);
}

/* One byte of the head or trailer. */
static void field_byte(struct cm_http_track *t, char *p)
{
    char c = *p;
    if (c == '\n') {
        field_line_end(t, p);
        return;
    }
    int request_line = t->state == CM_TRACK_HEAD && t->first_line;
    if (request_line) { /* evhttp's own checks; only the method matters here */
        if (t->line_len < sizeof t->method)
            t->method[t->line_len] = c;
        t->line_len++;
        return;
    }
    if (t->cr) {
        refuse(t, p, &refused_cr);
        return;
    }
    if (c == '\r') {
        t->cr = 1;
        return;
    }
    if (c == '\0') {
        refuse(t, p, &refused_nul);
        return;
    }
    if (t->line_len == 0 && (c == ' ' || c == '\t')) {
        refuse(t, p, &refused_fold);
        return;
    }
    t->line_len++;
    if (!t->in_value) {
        if (c == ':') {
            t->in_value = 1;
            t->kind = name_is(t, "Content-Length") ? 1 : name_is(t, "Transfer-Encoding") ? 2 : 0;
        } else if (c == ' ' || c == '\t') {
            refuse(t, p, &refused_name);
        } else if (t->name_len < sizeof t->name) {
            t->name[t->name_len++] = c;
        } else {
            t->name_len = sizeof t->name + 1; /* longer than any name of interest */
        }
        return;
    }
    if (t->kind == 0)
        return;
    if (c == '\t')
        c = *p = ' '; /* evhttp strips spaces only */
    if (t->kind == 1) {
        if (cm_http_length_feed(&t->length, c) != 0)
            refuse(t, p, &refused_length);
    } else {
        te_feed(t, c);
        if (t->te_state < 0)
            refuse(t, p, &refused_te);
    }
}

/* One byte of a chunk-size line. */
static void size_byte(struct cm_http_track *t, char *p)
{
    char c = *p;
    if (c == '\n') {
        if (t->size.state == 0) { /* an empty line: the CR LF after chunk data */
            start_line(t);
        } else if (t->size.value == 0) {
            t->state = CM_TRACK_TRAILER;
            start_line(t);
        } else {
            t->state = CM_TRACK_CHUNK_DATA;
            t->left = t->size.value;
        }
        return;
    }
    if (t->cr && t->size.state != 2) { /* "5\rX": evhttp would skip a leading CR */
        refuse(t, p, &refused_chunk);
        return;
    }
    t->cr = c == '\r';
    if (!t->cr) {
        if (t->size.state != 0 && (c == ';' || c == '\t'))
            c = *p = ' '; /* evhttp accepts only a space after the digits */
        if (cm_http_chunk_size_feed(&t->size, c) != 0) {
            refuse(t, p, &refused_chunk);
            return;
        }
    }
    if (++t->line_len > CM_TRACK_MAX_CHUNK_LINE) {
        t->chunk_line_too_long = 1;
        t->state = CM_TRACK_REFUSED;
    }
}

size_t cm_http_track_feed(struct cm_http_track *t, struct evbuffer *buf, size_t n)
{
    size_t total = evbuffer_get_length(buf), body = 0;
    if (t->state == CM_TRACK_OFF || n == 0 || n > total)
        return 0;
    struct evbuffer_ptr pos;
    if (evbuffer_ptr_set(buf, &pos, total - n, EVBUFFER_PTR_SET) != 0)
        return 0;
    size_t done = 0;
    while (done < n) {
        struct evbuffer_iovec v[8];
        int nv = evbuffer_peek(buf, (ev_ssize_t)(n - done), &pos, v, 8);
        if (nv <= 0)
            return body;
        size_t step = 0;
        for (int k = 0; k < nv && k < 8; k++) {
            /* evbuffer_peek hands out the buffer's own memory: bytes are
             * rewritten where they lie. */
            char *p = v[k].iov_base;
            size_t len = v[k].iov_len;
            if (len > n - done - step)
                len = n - done - step;
            size_t i = 0;
            while (i < len) {
                switch (t->state) {
                case CM_TRACK_FIXED:
                case CM_TRACK_CHUNK_DATA: {
                    size_t take = len - i;
                    if ((long long)take > t->left)
                        take = (size_t)t->left;
                    t->left -= (long long)take;
                    i += take;
                    body += take;
                    if (t->left == 0) {
                        if (t->state == CM_TRACK_FIXED) {
                            start_head(t);
                        } else {
                            t->state = CM_TRACK_CHUNK_SIZE;
                            start_line(t);
                        }
                    }
                    continue;
                }
                case CM_TRACK_HEAD:
                case CM_TRACK_TRAILER:
                    field_byte(t, p + i);
                    break;
                case CM_TRACK_CHUNK_SIZE:
                    size_byte(t, p + i);
                    break;
                case CM_TRACK_REFUSED:
                    if (!t->line_open)
                        return body; /* evhttp stops at the refused line */
                    refused_byte(t, p + i);
                    break;
                case CM_TRACK_OFF:
                    return body;
                }
                i++;
            }
            step += len;
        }
        done += step;
        if (done < n && evbuffer_ptr_set(buf, &pos, total - n + done, EVBUFFER_PTR_SET) != 0)
            return body;
    }
    return body;
}

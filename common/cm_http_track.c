/* cm_http_track: request framing tracker for chunk extensions (see cm_http_track.h). */
#include "cm_http_track.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void start_head(struct cm_http_track *t)
{
    t->state = CM_TRACK_HEAD;
    t->first_line = 1;
    t->has_body = 0;
    t->chunked = 0;
    t->content_length = -1;
    t->seen_te = t->seen_cl = 0;
    t->line_len = 0;
}

void cm_http_track_init(struct cm_http_track *t)
{
    memset(t, 0, sizeof *t);
    start_head(t);
}

static void trim(char **s, size_t *len)
{
    while (*len && (**s == ' ' || **s == '\t'))
        (*s)++, (*len)--;
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

/* evhttp 2.1's evhttp_method_may_have_body(). */
static int method_has_body(const char *line, size_t len)
{
    static const char *const with_body[] = {"POST",   "PUT",     "PATCH",   "GET",
                                            "DELETE", "OPTIONS", "CONNECT", NULL};
    for (const char *const *m = with_body; *m; m++) {
        size_t ml = strlen(*m);
        if (len > ml && memcmp(line, *m, ml) == 0 && line[ml] == ' ')
            return 1;
    }
    return 0;
}

/* A complete line of the head (without CR LF). */
static void head_line(struct cm_http_track *t, char *line, size_t len, int truncated)
{
    if (t->first_line) {
        if (len == 0)
            return; /* empty lines before a request */
        t->first_line = 0;
        t->has_body = method_has_body(line, len);
        return;
    }
    if (len == 0) { /* end of the head: the body evhttp will read */
        if (!t->has_body) {
            start_head(t);
        } else if (t->chunked) {
            t->state = CM_TRACK_CHUNK_SIZE;
        } else if (t->content_length > 0) {
            t->state = CM_TRACK_FIXED;
            t->left = t->content_length;
        } else {
            start_head(t);
        }
        return;
    }
    if (line[0] == ' ' || line[0] == '\t') {
        t->state = CM_TRACK_OFF; /* a folded line: not worth following */
        return;
    }
    char *colon = memchr(line, ':', len);
    if (!colon)
        return; /* evhttp refuses the request and closes */
    size_t klen = (size_t)(colon - line);
    char *v = colon + 1;
    size_t vlen = len - klen - 1;
    trim(&v, &vlen);
    int is_te = klen == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0;
    int is_cl = klen == 14 && strncasecmp(line, "Content-Length", 14) == 0;
    if ((is_te || is_cl) && truncated) {
        t->state = CM_TRACK_OFF;
        return;
    }
    if (is_te && !t->seen_te++) /* evhttp uses the first one */
        t->chunked = vlen == 7 && strncasecmp(v, "chunked", 7) == 0;
    if (is_cl && !t->seen_cl++) {
        char buf[32];
        char *end;
        if (vlen == 0 || vlen >= sizeof buf) {
            t->state = CM_TRACK_OFF;
            return;
        }
        memcpy(buf, v, vlen);
        buf[vlen] = '\0';
        long long n = strtoll(buf, &end, 10);
        if (*end || n < 0) {
            t->state = CM_TRACK_OFF; /* evhttp refuses it */
            return;
        }
        t->content_length = n;
    }
}

/* A complete chunk-size line (';' already rewritten). */
static void size_line(struct cm_http_track *t, char *line, size_t len, int truncated)
{
    if (len == 0)
        return; /* the CR LF after chunk data */
    if (truncated) {
        t->state = CM_TRACK_OFF;
        return;
    }
    line[len] = '\0';
    char *end;
    long long n = strtoll(line, &end, 16);
    if (end == line || (*end && *end != ' ') || n < 0) {
        t->state = CM_TRACK_OFF;
        return;
    }
    if (n == 0) {
        t->state = CM_TRACK_TRAILER;
    } else {
        t->state = CM_TRACK_CHUNK_DATA;
        t->left = n;
    }
}

static void end_line(struct cm_http_track *t)
{
    size_t len = t->line_len;
    int truncated = len >= sizeof t->line;
    if (truncated)
        len = sizeof t->line - 1;
    if (len && t->line[len - 1] == '\r')
        len--;
    t->line_len = 0;
    switch (t->state) {
    case CM_TRACK_HEAD:
        head_line(t, t->line, len, truncated);
        break;
    case CM_TRACK_CHUNK_SIZE:
        size_line(t, t->line, len, truncated);
        break;
    case CM_TRACK_TRAILER:
        if (len == 0)
            start_head(t);
        break;
    default:
        break;
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
    while (done < n && t->state != CM_TRACK_OFF) {
        struct evbuffer_iovec v[8];
        int nv = evbuffer_peek(buf, (ev_ssize_t)(n - done), &pos, v, 8);
        if (nv <= 0)
            return body;
        size_t step = 0;
        for (int k = 0; k < nv && k < 8 && t->state != CM_TRACK_OFF; k++) {
            /* evbuffer_peek hands out the buffer's own memory: a chunk-size
             * line's ';' is rewritten where it lies. */
            char *p = v[k].iov_base;
            size_t len = v[k].iov_len;
            if (len > n - done - step)
                len = n - done - step;
            size_t i = 0;
            while (i < len && t->state != CM_TRACK_OFF) {
                if (t->state == CM_TRACK_FIXED || t->state == CM_TRACK_CHUNK_DATA) {
                    size_t take = len - i;
                    if ((long long)take > t->left)
                        take = (size_t)t->left;
                    t->left -= (long long)take;
                    i += take;
                    body += take;
                    if (t->left == 0) {
                        if (t->state == CM_TRACK_FIXED)
                            start_head(t);
                        else
                            t->state = CM_TRACK_CHUNK_SIZE;
                    }
                    continue;
                }
                char c = p[i];
                if (t->state == CM_TRACK_CHUNK_SIZE && c == ';')
                    c = p[i] = ' ';
                i++;
                if (c == '\n') {
                    end_line(t);
                    continue;
                }
                if (t->line_len < sizeof t->line)
                    t->line[t->line_len] = c;
                t->line_len++;
                if (t->state == CM_TRACK_CHUNK_SIZE && t->line_len > CM_TRACK_MAX_CHUNK_LINE) {
                    t->chunk_line_too_long = 1;
                    t->state = CM_TRACK_OFF;
                }
            }
            step += len;
        }
        done += step;
        if (done < n && evbuffer_ptr_set(buf, &pos, total - n + done, EVBUFFER_PTR_SET) != 0)
            return body;
    }
    return body;
}

/* cm_http_framing: unambiguous request framing (see cm_http_framing.h). */
#include "cm_http_framing.h"

#include <sys/queue.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void cm_http_length_init(struct cm_http_length *l)
{
    l->state = 0;
    l->value = 0;
}

int cm_http_length_feed(struct cm_http_length *l, char c)
{
    int ws = c == ' ' || c == '\t';
    if (c >= '0' && c <= '9' && l->state < 2) {
        if (l->value > (CM_HTTP_MAX_LENGTH - (c - '0')) / 10)
            return -1;
        l->value = l->value * 10 + (c - '0');
        l->state = 1;
        return 0;
    }
    if (ws) {
        if (l->state == 1)
            l->state = 2;
        return 0;
    }
    return -1;
}

int cm_http_length_end(const struct cm_http_length *l, long long *value)
{
    if (l->state == 0)
        return -1;
    *value = l->value;
    return 0;
}

int cm_http_length_parse(const char *s, long long *value)
{
    struct cm_http_length l;
    cm_http_length_init(&l);
    for (; *s; s++)
        if (cm_http_length_feed(&l, *s) != 0)
            return -1;
    return cm_http_length_end(&l, value);
}

void cm_http_chunk_size_init(struct cm_http_chunk_size *s)
{
    s->state = 0;
    s->value = 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int cm_http_chunk_size_feed(struct cm_http_chunk_size *s, char c)
{
    if (s->state == 2)
        return 0; /* chunk extensions: ignored */
    int d = hex_value(c);
    if (d >= 0) {
        if (s->value >= (1LL << 56))
            return -1;
        s->value = s->value * 16 + d;
        s->state = 1;
        return 0;
    }
    if (s->state == 1 && (c == ' ' || c == '\t' || c == ';')) {
        s->state = 2;
        return 0;
    }
    return -1;
}

static int refuse(const char **code, const char *c, char *msg, size_t msglen, const char *text)
{
    *code = c;
    snprintf(msg, msglen, "%s", text);
    return -1;
}

int cm_http_framing_check(const struct evkeyvalq *headers, int method_has_body, int http10,
                          const char **code, char *msg, size_t msglen)
{
    const char *cl = NULL, *te = NULL;
    int n_cl = 0, n_te = 0, cl_conflict = 0, cl_invalid = 0;
    const struct evkeyval *h;
    TAILQ_FOREACH(h, headers, next)
    {
        if (strcasecmp(h->key, "Content-Length") == 0) {
            /* Identical repeats are harmless (RFC 9112 §6.3 allows
             * accepting them); "5" and "05" are not identical here. */
            long long v;
            if (cm_http_length_parse(h->value, &v) != 0)
                cl_invalid = 1;
            if (n_cl++ && strcmp(cl, h->value) != 0)
                cl_conflict = 1;
            cl = h->value;
        } else if (strcasecmp(h->key, "Transfer-Encoding") == 0) {
            n_te++;
            te = h->value;
        }
    }
    if (cl_invalid)
        return refuse(code, "invalid_content_length", msg, msglen,
                      "Content-Length must be a decimal number (digits only).");
    if (cl_conflict)
        return refuse(code, "conflicting_content_length", msg, msglen,
                      "The request has several Content-Length headers with different values.");
    if (n_te > 1 || (te && strcasecmp(te, "chunked") != 0))
        return refuse(code, "invalid_transfer_encoding", msg, msglen,
                      "Only a single 'Transfer-Encoding: chunked' is supported.");
    if (te && cl)
        return refuse(code, "invalid_transfer_encoding", msg, msglen,
                      "The request has both Content-Length and Transfer-Encoding.");
    if (te && http10) /* RFC 9112 §6.1: faulty framing */
        return refuse(code, "invalid_transfer_encoding", msg, msglen,
                      "Transfer-Encoding is not allowed in an HTTP/1.0 request.");
    if (!method_has_body && (te || (cl && strcmp(cl, "0") != 0)))
        return refuse(code, "unexpected_body", msg, msglen,
                      "This method does not take a request body.");
    return 0;
}

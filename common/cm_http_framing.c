/* cm_http_framing: unambiguous request framing (see cm_http_framing.h). */
#include "cm_http_framing.h"

#include <sys/queue.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int refuse(const char **code, const char *c, char *msg, size_t msglen, const char *text)
{
    *code = c;
    snprintf(msg, msglen, "%s", text);
    return -1;
}

int cm_http_framing_check(const struct evkeyvalq *headers, int method_has_body, const char **code,
                          char *msg, size_t msglen)
{
    const char *cl = NULL, *te = NULL;
    int n_cl = 0, n_te = 0, cl_conflict = 0;
    const struct evkeyval *h;
    TAILQ_FOREACH(h, headers, next)
    {
        if (strcasecmp(h->key, "Content-Length") == 0) {
            /* evhttp refuses a list ("5, 6") itself; identical repeats are
             * harmless (RFC 9112 §6.3 allows accepting them). */
            if (n_cl++ && strcmp(cl, h->value) != 0)
                cl_conflict = 1;
            cl = h->value;
        } else if (strcasecmp(h->key, "Transfer-Encoding") == 0) {
            n_te++;
            te = h->value;
        }
    }
    if (cl_conflict)
        return refuse(code, "conflicting_content_length", msg, msglen,
                      "The request has several Content-Length headers with different values.");
    if (n_te > 1 || (te && strcasecmp(te, "chunked") != 0))
        return refuse(code, "invalid_transfer_encoding", msg, msglen,
                      "Only a single 'Transfer-Encoding: chunked' is supported.");
    if (te && cl)
        return refuse(code, "invalid_transfer_encoding", msg, msglen,
                      "The request has both Content-Length and Transfer-Encoding.");
    if (!method_has_body && (te || (cl && strcmp(cl, "0") != 0)))
        return refuse(code, "unexpected_body", msg, msglen,
                      "This method does not take a request body.");
    return 0;
}

/* upstream_error: mapping upstream failures to OpenAI errors (see proxy.h). */
#include "proxy.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <string.h>

char *proxy_upstream_url(const struct proxy *px, const char *path)
{
    return upstream_host_url(upstream_pool_host(px->pool, 0), path);
}

static void count(struct proxy *px, const char *route, const char *kind)
{
    const char *labels[] = {route, kind};
    cm_metric_add(px->m_upstream_errors, labels, 1);
}

void proxy_refused_error(struct proxy *px, const char *route, struct proxy_error *out)
{
    count(px, route, "queue_full");
    cm_http_server_count_reject(px->srv, "queue");
    proxy_error_set(out, 429, NULL, "too_many_requests",
                    "Too many requests are waiting for the upstream; retry later.");
}

void proxy_reply_error(struct cm_req *r, const struct proxy_error *e)
{
    if (e->reject_reason)
        cm_req_count_reject(r, e->reject_reason);
    if (e->status == 429 || e->status == 503)
        cm_req_add_header(r, "Retry-After", "1");
    cm_req_reply_error(r, e->status, cm_oai_error_type(e->status), e->message,
                       e->param[0] ? e->param : NULL, e->code);
}

void proxy_upstream_error(struct proxy *px, const char *route, enum cm_hc_result result,
                          long status, struct evbuffer *body, const char *errmsg, const char *model,
                          struct proxy_error *out)
{
    switch (result) {
    case CM_HC_ERR_CONNECT:
        count(px, route, "connect");
        proxy_error_set(out, 502, NULL, "upstream_unreachable",
                        "Could not reach the upstream model server (%.200s).",
                        errmsg ? errmsg : "connection failed");
        return;
    case CM_HC_ERR_TIMEOUT:
        count(px, route, "timeout");
        proxy_error_set(out, 504, NULL, "upstream_timeout",
                        "The upstream model server did not answer in time (%.200s).",
                        errmsg ? errmsg : "timeout");
        return;
    case CM_HC_ERR_TOO_LARGE:
        count(px, route, "too_large");
        proxy_error_set(out, 502, NULL, "upstream_invalid_response",
                        "The upstream model server's response was too large.");
        return;
    case CM_HC_ERR_QUEUE_TIMEOUT:
        count(px, route, "queue_timeout");
        cm_http_server_count_reject(px->srv, "queue");
        proxy_error_set(out, 503, NULL, "overloaded",
                        "All upstream slots stayed busy for LLM_PROXY_QUEUE_TIMEOUT; retry later.");
        return;
    case CM_HC_ERR_IO:
        count(px, route, "io");
        proxy_error_set(out, 502, NULL, "upstream_error",
                        "The connection to the upstream model server failed (%.200s).",
                        errmsg ? errmsg : "I/O error");
        return;
    case CM_HC_OK:
        break;
    }
    /* An HTTP error from Ollama: {"error":"text"} (or a text body). */
    char text[400] = "";
    if (body && evbuffer_get_length(body)) {
        size_t len = evbuffer_get_length(body);
        const char *data = (const char *)evbuffer_pullup(body, -1);
        json_t *j = cm_json_parse(data, len, NULL, 0);
        const char *m = cm_json_str(j, "error");
        if (!m)
            m = cm_json_str(json_object_get(j, "error"), "message");
        if (m)
            snprintf(text, sizeof text, "%s", m);
        else if (!j)
            snprintf(text, sizeof text, "%.*s", (int)(len < 300 ? len : 300), data);
        json_decref(j);
    }
    if (status == 404) {
        count(px, route, "model_not_found");
        proxy_error_set(out, 404, "model", "model_not_found",
                        "The model `%.200s` does not exist or is not installed on the upstream "
                        "server.",
                        model ? model : "");
        return;
    }
    if (status == 403 && !text[0]) {
        /* Ollama's Host guard answers 403 with an empty body. */
        count(px, route, "status_4xx");
        proxy_error_set(out, 502, NULL, "upstream_forbidden",
                        "The upstream model server refused the request (403).");
        return;
    }
    count(px, route, status >= 500 ? "status_5xx" : "status_4xx");
    int st = (status >= 400 && status <= 599) ? (int)status : 502;
    const char *code = st == 503 ? "upstream_overloaded" : st >= 500 ? "upstream_error" : NULL;
    proxy_error_set(out, st, NULL, code, "%s",
                    text[0] ? text : "The upstream model server returned an error.");
}

/* health_handler: /health (liveness), /ready (Ollama reachable), /metrics. */
#include "proxy.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <stdlib.h>

void health_handle_live(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

struct ready_call {
    struct cm_req *r;
    struct cm_hc_req *up;
};

static void ready_abort(struct cm_req *r, void *arg)
{
    struct ready_call *rc = arg;
    (void)r;
    cm_hc_cancel(rc->up);
    free(rc);
}

static void ready_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct ready_call *rc = arg;
    (void)up;
    struct cm_req *r = rc->r;
    free(rc);
    if (result == CM_HC_OK && status == 200) {
        json_t *j = cm_json_parse((const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body), NULL, 0);
        const char *v = cm_json_str(j, "version");
        cm_req_reply_json(
            r, 200,
            json_pack("{s:s, s:s}", "status", "ready", "ollama_version", v ? v : "unknown"));
        json_decref(j);
        return;
    }
    char reason[300];
    if (result != CM_HC_OK)
        snprintf(reason, sizeof reason, "ollama unreachable: %s", errmsg ? errmsg : "error");
    else
        snprintf(reason, sizeof reason, "ollama answered HTTP %ld", status);
    CM_WARN(cm_req_id(r), "not_ready", "%s", reason);
    cm_req_reply_json(r, 503, json_pack("{s:s, s:s}", "status", "not_ready", "reason", reason));
}

void health_handle_ready(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    if (cm_http_server_draining(px->srv)) {
        cm_req_reply_json(
            r, 503, json_pack("{s:s, s:s}", "status", "not_ready", "reason", "shutting down"));
        return;
    }
    struct ready_call *rc = cm_xcalloc(1, sizeof *rc);
    rc->r = r;
    char *url = proxy_upstream_url(px, "/api/version");
    struct cm_hc_opts o = {.method = "GET",
                           .url = url,
                           .request_id = cm_req_id(r),
                           .connect_timeout_s = px->cfg.connect_timeout,
                           .total_timeout_s = px->cfg.connect_timeout + 1,
                           .max_response_bytes = 64 * 1024};
    struct cm_hc_callbacks cbs = {.on_done = ready_done};
    rc->up = cm_hc_start(px->hc, &o, &cbs, rc);
    free(url);
    if (!rc->up) {
        free(rc);
        cm_req_reply_json(r, 503, json_pack("{s:s}", "status", "not_ready"));
        return;
    }
    cm_req_on_abort(r, ready_abort, rc);
}

void health_handle_metrics(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    cm_metric_set(px->m_inflight, NULL, (double)cm_http_server_inflight(px->srv));
    cm_metric_set(px->m_queue, NULL, (double)cm_hc_queued(px->hc));
    struct evbuffer *buf = evbuffer_new();
    cm_metrics_render(px->metrics, buf);
    cm_req_reply_buffer(r, 200, CM_METRICS_CONTENT_TYPE, buf);
    evbuffer_free(buf);
}

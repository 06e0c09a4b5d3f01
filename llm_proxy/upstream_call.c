/* upstream_call: buffered JSON exchange with Ollama (see upstream_call.h). */
#include "upstream_call.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

struct upstream_call {
    struct proxy *px;
    struct cm_req *r;
    struct cm_hc_req *up;
    char *model;
    upstream_ok_cb on_ok;
    void *ctx;
    void (*ctx_free)(void *);
};

static void call_free(struct upstream_call *c)
{
    if (c->ctx_free)
        c->ctx_free(c->ctx);
    free(c->model);
    free(c);
}

static void call_abort(struct cm_req *r, void *arg)
{
    struct upstream_call *c = arg;
    (void)r;
    cm_hc_cancel(c->up);
    call_free(c);
}

static void call_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                      struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_call *c = arg;
    (void)up;
    struct proxy_error err;
    if (result != CM_HC_OK || status != 200) {
        proxy_upstream_error(c->px, cm_req_route(c->r), result, status, body, errmsg, c->model,
                             &err);
        proxy_reply_error(c->r, &err);
        call_free(c);
        return;
    }
    json_t *reply =
        cm_json_parse((const char *)evbuffer_pullup(body, -1), evbuffer_get_length(body), NULL, 0);
    if (!json_is_object(reply)) {
        proxy_error_set(&err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server returned invalid JSON.");
        proxy_reply_error(c->r, &err);
    } else {
        c->on_ok(c->r, reply, c->ctx);
    }
    json_decref(reply);
    call_free(c);
}

void upstream_call_json(struct proxy *px, struct cm_req *r, const struct upstream_call_opts *o,
                        upstream_ok_cb on_ok, void *ctx, void (*ctx_free)(void *))
{
    struct upstream_call *c = cm_xcalloc(1, sizeof *c);
    c->px = px;
    c->r = r;
    c->model = o->model ? cm_xstrdup(o->model) : NULL;
    c->on_ok = on_ok;
    c->ctx = ctx;
    c->ctx_free = ctx_free;
    char *body = o->body ? cm_json_dumps(o->body) : NULL;
    char *url = proxy_upstream_url(px, o->path);
    struct cm_hc_opts ho = {.method = o->method,
                            .url = url,
                            .body = body ? body : o->body_text,
                            .body_len = body           ? strlen(body)
                                        : o->body_text ? o->body_len
                                                       : 0,
                            .request_id = cm_req_id(r),
                            .connect_timeout_s = px->cfg.connect_timeout,
                            .total_timeout_s = o->timeout_s};
    struct cm_hc_callbacks cbs = {.on_done = call_done};
    c->up = cm_hc_start(px->hc, &ho, &cbs, c);
    free(url);
    free(body);
    if (!c->up) {
        struct proxy_error err;
        if (cm_hc_refused(px->hc))
            proxy_refused_error(px, cm_req_route(r), &err);
        else
            proxy_error_set(&err, 500, NULL, NULL, "Could not start the upstream request.");
        proxy_reply_error(r, &err);
        call_free(c);
        return;
    }
    cm_req_on_abort(r, call_abort, c);
}

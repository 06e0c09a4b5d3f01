/* upstream_call: buffered JSON exchange with Ollama (see upstream_call.h). */
#include "upstream_call.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

struct upstream_call {
    struct proxy *px;
    struct cm_req *r;
    struct cm_hc_req *up;
    struct upstream_host *host; /* the host of up */
    int attempts;
    char *model;
    char *method;
    char *path;
    char *body; /* kept for a failover (only with several hosts) */
    size_t body_len;
    double timeout_s;
    int json_scoped;
    upstream_ok_cb on_ok;
    void *ctx;
    void (*ctx_free)(void *);
};

static void call_free(struct upstream_call *c)
{
    if (c->ctx_free)
        c->ctx_free(c->ctx);
    free(c->model);
    free(c->method);
    free(c->path);
    free(c->body);
    free(c);
}

static void call_abort(struct cm_req *r, void *arg)
{
    struct upstream_call *c = arg;
    (void)r;
    cm_hc_cancel(c->up);
    if (c->host)
        upstream_host_release(c->host);
    call_free(c);
}

static void call_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                      struct evbuffer *body, const char *errmsg, void *arg);

/* Starts the exchange on h. -1: not started (refused: cm_hc_refused). */
static int call_start_on(struct upstream_call *c, struct upstream_host *h)
{
    char *url = upstream_host_url(h, c->path);
    /* With no other host to fail over to, the body goes to the client
     * without a copy (and is gone from here, started or not). */
    int give = c->body && upstream_pool_size(c->px->pool) < 2;
    struct cm_hc_opts ho = {.method = c->method,
                            .url = url,
                            .body = c->body,
                            .body_len = c->body_len,
                            .body_given = give,
                            .request_id = cm_req_id(c->r),
                            .connect_timeout_s = c->px->cfg.connect_timeout,
                            .total_timeout_s = c->timeout_s};
    static const struct cm_hc_callbacks cbs = {.on_done = call_done};
    c->up = cm_hc_start(upstream_host_hc(h), &ho, &cbs, c);
    free(url);
    if (give)
        c->body = NULL;
    if (!c->up)
        return -1;
    c->host = h;
    c->attempts++;
    upstream_host_begin(h);
    return 0;
}

/* A failure before any byte reached the client: once more elsewhere. */
static int call_failover(struct upstream_call *c, enum cm_hc_result result, long status)
{
    if (c->attempts > 1 || (c->body_len && !c->body) || !upstream_failover_ok(result, status))
        return 0;
    struct upstream_host *next = upstream_pool_pick(c->px->pool, c->model, c->host);
    if (!next)
        return 0;
    CM_WARN(cm_req_id(c->r), "upstream_failover", "route=%s from=%s to=%s reason=%s/%ld",
            cm_req_route(c->r), upstream_host_label(c->host), upstream_host_label(next),
            cm_hc_result_name(result), status);
    if (call_start_on(c, next) != 0)
        return 0;
    upstream_pool_count_failover(c->px->pool);
    return 1;
}

static void call_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                      struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_call *c = arg;
    (void)up;
    c->up = NULL;
    upstream_host_end(c->host, cm_req_route(c->r), result, status);
    struct proxy_error err;
    if (result != CM_HC_OK || status != 200) {
        if (call_failover(c, result, status))
            return;
        proxy_upstream_error(c->px, cm_req_route(c->r), result, status, body, errmsg, c->model,
                             &err);
        cm_req_on_abort(c->r, NULL, NULL);
        proxy_reply_error(c->r, &err);
        call_free(c);
        return;
    }
    cm_req_on_abort(c->r, NULL, NULL);
    int scoped = c->json_scoped;
    if (scoped)
        cm_json_scope_begin();
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
    if (scoped)
        cm_json_scope_end();
}

void upstream_call_json(struct proxy *px, struct cm_req *r, const struct upstream_call_opts *o,
                        upstream_ok_cb on_ok, void *ctx, void (*ctx_free)(void *))
{
    struct upstream_call *c = cm_xcalloc(1, sizeof *c);
    c->px = px;
    c->r = r;
    c->model = o->model ? cm_xstrdup(o->model) : NULL;
    c->method = cm_xstrdup(o->method);
    c->path = cm_xstrdup(o->path);
    c->timeout_s = o->timeout_s;
    c->json_scoped = o->json_scoped;
    c->on_ok = on_ok;
    c->ctx = ctx;
    c->ctx_free = ctx_free;
    if (o->body_take) {
        c->body = o->body_take;
        c->body_len = o->body_len;
    } else if (o->body) {
        c->body = cm_json_dumps(o->body);
        c->body_len = strlen(c->body);
    } else if (o->body_text) {
        c->body = cm_xmalloc(o->body_len + 1);
        memcpy(c->body, o->body_text, o->body_len);
        c->body[o->body_len] = '\0';
        c->body_len = o->body_len;
    }
    struct upstream_host *h = upstream_pool_pick(px->pool, c->model, NULL);
    int started = call_start_on(c, h) == 0;
    if (!started && cm_hc_refused(upstream_host_hc(h))) {
        /* This host's queue is full: another eligible host may have room. */
        struct upstream_host *next = upstream_pool_pick(px->pool, c->model, h);
        started = next && call_start_on(c, next) == 0;
    }
    if (!started) {
        struct proxy_error err;
        if (cm_hc_refused(upstream_host_hc(h)))
            proxy_refused_error(px, cm_req_route(r), &err);
        else
            proxy_error_set(&err, 500, NULL, NULL, "Could not start the upstream request.");
        proxy_reply_error(r, &err);
        call_free(c);
        return;
    }
    if (upstream_pool_size(px->pool) < 2) {
        free(c->body); /* no other host to fail over to: curl has its copy */
        c->body = NULL;
    }
    cm_req_on_abort(r, call_abort, c);
}

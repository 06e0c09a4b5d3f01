/* embed_handler: POST /v1/embeddings -> POST /api/embed. */
#include "embed_translate.h"
#include "proxy.h"
#include "upstream_call.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_mem_budget.h"

#include <stdlib.h>
#include <string.h>

struct embed_ctx {
    struct proxy *px;
    struct embed_request req;
};

static void embed_ctx_free(void *arg)
{
    struct embed_ctx *e = arg;
    embed_request_deinit(&e->req);
    free(e);
}

static void embed_ok(struct cm_req *r, const json_t *reply, void *arg)
{
    struct embed_ctx *e = arg;
    struct proxy_error err;
    long long tokens = 0;
    json_t *out = embed_response_translate(reply, &e->req, &tokens, &err);
    if (!out) {
        proxy_reply_error(r, &err);
        return;
    }
    const char *labels[] = {"prompt"};
    cm_metric_add(e->px->m_tokens, labels, (double)tokens);
    cm_req_reply_json(r, 200, out);
}

/* In one JSON scope (cm_mem_budget.h): the request's JSON is parsed,
 * translated and written out as text before this returns. */
static void embed_handle_scoped(struct cm_req *r, struct proxy *px)
{
    json_t *body = cm_req_parse_json_object(r);
    if (!body)
        return;
    struct embed_ctx *e = cm_xcalloc(1, sizeof *e);
    e->px = px;
    struct proxy_error err;
    int rc = embed_request_translate(body, &e->req, &err);
    json_decref(body);
    if (rc != 0) {
        proxy_reply_error(r, &err);
        embed_ctx_free(e);
        return;
    }
    char *native = cm_json_dumps(e->req.native);
    json_decref(e->req.native);
    e->req.native = NULL;
    struct upstream_call_opts o = {.method = "POST",
                                   .path = "/api/embed",
                                   .body_take = native,
                                   .body_len = strlen(native),
                                   .timeout_s = px->cfg.embeddings_timeout,
                                   .model = e->req.model,
                                   .json_scoped = 1};
    upstream_call_json(px, r, &o, embed_ok, e, embed_ctx_free);
}

void embed_handle(struct cm_req *r, void *arg)
{
    cm_json_scope_begin();
    embed_handle_scoped(r, arg);
    cm_json_scope_end();
}

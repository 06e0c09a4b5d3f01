/* models_handler: GET /v1/models and /v1/models/{id} from GET /api/tags. */
#include "models_translate.h"
#include "proxy.h"
#include "upstream_call.h"

#include "cm_alloc.h"

#include <stdio.h>
#include <stdlib.h>

static void list_ok(struct cm_req *r, const json_t *tags, void *ctx)
{
    (void)ctx;
    cm_req_reply_json(r, 200, models_list_translate(tags));
}

static void get_ok(struct cm_req *r, const json_t *tags, void *ctx)
{
    (void)ctx;
    const char *id = cm_req_path_tail(r);
    json_t *m = models_find_translate(tags, id);
    if (!m) {
        char msg[400];
        snprintf(msg, sizeof msg, "The model `%.300s` does not exist.", id);
        cm_req_reply_error(r, 404, "invalid_request_error", msg, "model", "model_not_found");
        return;
    }
    cm_req_reply_json(r, 200, m);
}

static void fetch_tags(struct cm_req *r, struct proxy *px, upstream_ok_cb cb)
{
    struct upstream_call_opts o = {.method = "GET",
                                   .path = "/api/tags",
                                   .timeout_s =
                                       px->cfg.connect_timeout + px->cfg.embeddings_timeout};
    upstream_call_json(px, r, &o, cb, NULL, NULL);
}

void models_handle_list(struct cm_req *r, void *arg)
{
    fetch_tags(r, arg, list_ok);
}

void models_handle_get(struct cm_req *r, void *arg)
{
    fetch_tags(r, arg, get_ok);
}

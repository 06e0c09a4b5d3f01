/*
 * models_handler: GET /v1/models and /v1/models/{id} from GET /api/tags of
 * every healthy host (all hosts when none is), merged by model name: the
 * union, first host in OLLAMA_URL_INTERNAL order wins a duplicate; names
 * that are not usable model names are dropped, at most UPSTREAM_MODELS_MAX
 * entries per host are read. When no
 * host answers, the first host's failure is the reply (as with one host).
 */
#include "models_translate.h"
#include "proxy.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef void (*models_ok_cb)(struct cm_req *r, const json_t *tags);

struct models_part {
    struct models_fan *fan;
    struct upstream_host *h;
    struct cm_hc_req *up;
    json_t *tags; /* reply, owned */
    enum cm_hc_result result;
    long status;
    struct evbuffer *err_body; /* a failure's body, owned */
    char *errmsg;
};

struct models_fan {
    struct proxy *px;
    struct cm_req *r;
    models_ok_cb ok;
    struct models_part *parts;
    size_t n;
    unsigned pending;
};

static void fan_free(struct models_fan *f)
{
    for (size_t i = 0; i < f->n; i++) {
        struct models_part *pt = &f->parts[i];
        if (pt->up) {
            cm_hc_cancel(pt->up);
            upstream_host_release(pt->h);
        }
        json_decref(pt->tags);
        if (pt->err_body)
            evbuffer_free(pt->err_body);
        free(pt->errmsg);
    }
    free(f->parts);
    free(f);
}

static void fan_abort(struct cm_req *r, void *arg)
{
    (void)r;
    fan_free(arg);
}

static const char *entry_name(const json_t *m)
{
    const char *n = cm_json_str(m, "model");
    return n ? n : cm_json_str(m, "name");
}

/* Union of the answers; NULL when none answered. */
static json_t *merge(const struct models_fan *f)
{
    json_t *all = NULL;
    for (size_t i = 0; i < f->n; i++) {
        json_t *models = json_object_get(f->parts[i].tags, "models");
        if (!json_is_array(models))
            continue;
        if (!all)
            all = json_array();
        size_t k;
        json_t *m;
        json_array_foreach(models, k, m)
        {
            if (k >= UPSTREAM_MODELS_MAX)
                break;
            const char *name = entry_name(m);
            if (!upstream_model_name_ok(name))
                continue; /* hostile or broken entry */
            int dup = 0;
            size_t j;
            json_t *o;
            json_array_foreach(all, j, o) if (strcasecmp(entry_name(o), name) == 0) dup = 1;
            if (!dup && json_array_size(all) < UPSTREAM_MODELS_MAX * 4)
                json_array_append(all, m);
        }
    }
    return all ? json_pack("{s:o}", "models", all) : NULL;
}

static void fan_finish(struct models_fan *f)
{
    cm_req_on_abort(f->r, NULL, NULL);
    json_t *tags = merge(f);
    if (tags) {
        f->ok(f->r, tags);
        json_decref(tags);
    } else {
        const struct models_part *pt = &f->parts[0];
        struct proxy_error err;
        if (pt->result == CM_HC_OK && pt->status == 200)
            proxy_error_set(&err, 502, NULL, "upstream_invalid_response",
                            "The upstream model server returned invalid JSON.");
        else
            proxy_upstream_error(f->px, cm_req_route(f->r), pt->result, pt->status, pt->err_body,
                                 pt->errmsg, NULL, &err);
        proxy_reply_error(f->r, &err);
    }
    fan_free(f);
}

static void part_done(struct cm_hc_req *up, enum cm_hc_result result, long status,
                      struct evbuffer *body, const char *errmsg, void *arg)
{
    struct models_part *pt = arg;
    struct models_fan *f = pt->fan;
    (void)up;
    pt->up = NULL;
    upstream_host_end(pt->h, cm_req_route(f->r), result, status);
    pt->result = result;
    pt->status = status;
    if (result == CM_HC_OK && status == 200) {
        json_t *j = cm_json_parse((const char *)evbuffer_pullup(body, -1),
                                  evbuffer_get_length(body), NULL, 0);
        if (json_is_object(j))
            pt->tags = j;
        else
            json_decref(j);
    } else {
        pt->errmsg = errmsg ? cm_xstrdup(errmsg) : NULL;
        if (body) {
            pt->err_body = evbuffer_new();
            evbuffer_add_buffer(pt->err_body, body);
        }
    }
    if (--f->pending == 0)
        fan_finish(f);
}

static void fetch_tags(struct cm_req *r, struct proxy *px, models_ok_cb cb)
{
    struct models_fan *f = cm_xcalloc(1, sizeof *f);
    f->px = px;
    f->r = r;
    f->ok = cb;
    size_t n = upstream_pool_size(px->pool);
    int any_healthy = upstream_pool_healthy(px->pool) > 0;
    f->parts = cm_xcalloc(n, sizeof *f->parts);
    for (size_t i = 0; i < n; i++) {
        struct upstream_host *h = upstream_pool_host(px->pool, i);
        if (any_healthy && upstream_host_state(h) != UPSTREAM_HEALTHY)
            continue;
        struct models_part *pt = &f->parts[f->n++];
        pt->fan = f;
        pt->h = h;
        char *url = upstream_host_url(h, "/api/tags");
        struct cm_hc_opts o = {.method = "GET",
                               .url = url,
                               .request_id = cm_req_id(r),
                               .connect_timeout_s = px->cfg.connect_timeout,
                               .total_timeout_s =
                                   px->cfg.connect_timeout + px->cfg.embeddings_timeout,
                               .max_response_bytes = UPSTREAM_MODELS_MAX_BYTES};
        static const struct cm_hc_callbacks cbs = {.on_done = part_done};
        pt->up = cm_hc_start(upstream_host_hc(h), &o, &cbs, pt);
        free(url);
        if (pt->up) {
            upstream_host_begin(h);
            f->pending++;
        } else {
            pt->result = CM_HC_ERR_IO;
            pt->errmsg = cm_xstrdup("could not start the request");
        }
    }
    if (f->pending == 0) {
        struct proxy_error err;
        if (f->n && cm_hc_refused(upstream_host_hc(f->parts[0].h)))
            proxy_refused_error(px, cm_req_route(r), &err);
        else
            proxy_error_set(&err, 500, NULL, NULL, "Could not start the upstream request.");
        proxy_reply_error(r, &err);
        fan_free(f);
        return;
    }
    cm_req_on_abort(r, fan_abort, f);
}

static void list_ok(struct cm_req *r, const json_t *tags)
{
    cm_req_reply_json(r, 200, models_list_translate(tags));
}

static void get_ok(struct cm_req *r, const json_t *tags)
{
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

void models_handle_list(struct cm_req *r, void *arg)
{
    fetch_tags(r, arg, list_ok);
}

void models_handle_get(struct cm_req *r, void *arg)
{
    fetch_tags(r, arg, get_ok);
}

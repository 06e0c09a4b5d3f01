/* memory_api: the memories API (see memory_api.h). */
#include "memory_api.h"

#include "cm_alloc.h"
#include "cm_http_client.h"
#include "cm_http_server.h"
#include "cm_json.h"
#include "cm_log.h"
#include "llm_client.h"
#include "memory_db.h"
#include "memory_query.h"
#include "redis_claim.h"
#include "store.h"
#include "user_id.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum job_kind { JOB_SEARCH, JOB_LIST, JOB_GET, JOB_DELETE, JOB_ERASE };
enum job_state { JOB_EMBEDDING, JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct api_job {
    struct memory_api *api;
    struct cm_req *r; /* NULL once the client has gone */
    enum job_kind kind;
    enum job_state state;
    struct event *done;
    struct api_job *next;
    struct cm_hc_req *embed; /* EMBEDDING only */
    /* request */
    struct mq_search search;
    struct mq_list list;
    long long id;
    char *user_id; /* GET/DELETE ?user_id=, erasure's user */
    size_t user_len;
    float *vec; /* the query's embedding; NULL: text only */
    int degraded;
    /* result */
    int status;
    json_t *result;
};

struct memory_api {
    struct event_base *base;
    const struct worker_config *cfg;
    struct pipeline *p;
    memory_api_allowed_cb allowed;
    void *allowed_arg;
    struct cm_hc *hc;
    pthread_t *threads;
    size_t nthreads;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct api_job *head, *tail; /* FIFO of QUEUED jobs */
    size_t queued;
    int stopping;
    size_t pending; /* jobs not yet finished (loop thread) */
};

/* ------------------------------------------------------------ API threads */

struct api_conn {
    struct store *st;
    struct memory_db *db;
    struct rclient *rc;
};

static int conn_pg(struct memory_api *api, struct api_conn *c, char *err, size_t errlen)
{
    if (c->st)
        return 0;
    char *ci = worker_config_pg_conninfo(api->cfg);
    c->st = store_connect(ci, err, errlen);
    free(ci);
    if (!c->st)
        return -1;
    c->db = memory_db_new(c->st, (int)api->cfg->search_ef_search);
    return 0;
}

static void conn_pg_drop(struct api_conn *c)
{
    memory_db_free(c->db);
    store_free(c->st);
    c->db = NULL;
    c->st = NULL;
}

static json_t *unavailable(const char *what, const char *err)
{
    char msg[600];
    snprintf(msg, sizeof msg, "%s is unavailable: %s", what, err);
    return cm_oai_error(msg, "server_error", NULL, "store_unavailable");
}

/* The PostgreSQL result code to a reply (the connection is dropped when it
 * failed, and made again for the next job). */
static void store_failed(struct api_job *j, struct api_conn *c, int code, const char *err)
{
    if (code == STORE_DOWN)
        conn_pg_drop(c);
    j->status = 503;
    j->result = unavailable("PostgreSQL", err);
}

static void run_erase(struct memory_api *api, struct api_job *j, struct api_conn *c)
{
    char err[400] = "";
    /* Redis first: the claim keys go (a worker holding the claim is
     * fenced), then PostgreSQL bumps the user's erasure epoch, so a claim
     * taken before the erasure is refused when it is persisted; see
     * README "Erasure". */
    if (!c->rc || rclient_ping(c->rc) != 0) {
        rclient_free(c->rc);
        c->rc = rclient_connect(api->cfg->redis_url, 5, err, sizeof err);
    }
    long long keys = 0;
    struct redis_user u = {j->user_id, j->user_len};
    if (!c->rc || redis_claim_erase(c->rc, &u, &keys) != 0) {
        j->status = 503;
        j->result = unavailable("Redis", c->rc ? rclient_last_error(c->rc) : err);
        rclient_free(c->rc);
        c->rc = NULL;
        return;
    }
    struct store_erased e;
    int rc = conn_pg(api, c, err, sizeof err) != 0 ? STORE_DOWN
                                                   : store_erase_user(c->st, j->user_id, &e);
    if (rc != STORE_OK) {
        store_failed(j, c, rc, c->st ? store_last_error(c->st) : err);
        return;
    }
    char *esc = user_id_escape(j->user_id, j->user_len);
    CM_INFO(NULL, "user_erased",
            "user=%s memories=%lld chunks=%lld dead_messages=%lld message_ids=%lld redis_keys=%lld",
            esc, e.memories, e.chunks, e.dead_messages, e.message_ids, keys);
    free(esc);
    j->status = 200;
    j->result =
        json_pack("{s:s, s:s, s:b, s:{s:I, s:I, s:I, s:I, s:I}}", "object", "user.erased",
                  "user_id", j->user_id, "erased", 1, "counts", "memories", (json_int_t)e.memories,
                  "chunks", (json_int_t)e.chunks, "dead_messages", (json_int_t)e.dead_messages,
                  "message_ids", (json_int_t)e.message_ids, "redis_keys", (json_int_t)keys);
}

static void not_found(struct api_job *j)
{
    char msg[120];
    snprintf(msg, sizeof msg, "No memory with id %lld.", j->id);
    j->status = 404;
    j->result = cm_oai_error(msg, "invalid_request_error", "id", "memory_not_found");
}

static void run_job(struct memory_api *api, struct api_job *j, struct api_conn *c)
{
    char err[600] = "";
    if (j->kind == JOB_ERASE) {
        run_erase(api, j, c);
        return;
    }
    if (conn_pg(api, c, err, sizeof err) != 0) {
        j->status = 503;
        j->result = unavailable("PostgreSQL", err);
        return;
    }
    int rc = STORE_OK;
    switch (j->kind) {
    case JOB_SEARCH: {
        json_t *data;
        rc = memory_db_search(c->db, &j->search, j->vec, (size_t)api->cfg->embedding_dim,
                              api->cfg->fts_config, &data, err, sizeof err);
        if (rc == STORE_OK) {
            j->status = 200;
            j->result = json_pack("{s:s, s:o, s:s}", "object", "list", "data", data, "mode",
                                  mq_mode_name(j->search.mode));
            if (j->degraded)
                json_object_set_new(j->result, "degraded", json_string("vector"));
        }
        break;
    }
    case JOB_LIST: {
        json_t *data;
        char *next;
        rc = memory_db_list(c->db, &j->list, &data, &next, err, sizeof err);
        if (rc == STORE_OK) {
            j->status = 200;
            j->result =
                json_pack("{s:s, s:o, s:b, s:o}", "object", "list", "data", data, "has_more",
                          next != NULL, "next_cursor", next ? json_string(next) : json_null());
            free(next);
        }
        break;
    }
    case JOB_GET: {
        json_t *row;
        rc = memory_db_get(c->db, j->id, j->user_id, &row, err, sizeof err);
        if (rc == STORE_OK && row) {
            j->status = 200;
            j->result = row;
        } else if (rc == STORE_OK) {
            not_found(j);
        }
        break;
    }
    case JOB_DELETE: {
        int deleted;
        rc = memory_db_delete(c->db, j->id, j->user_id, &deleted, err, sizeof err);
        if (rc == STORE_OK && deleted) {
            j->status = 200;
            j->result = json_pack("{s:I, s:s, s:b}", "id", (json_int_t)j->id, "object",
                                  "memory.deleted", "deleted", 1);
        } else if (rc == STORE_OK) {
            not_found(j);
        }
        break;
    }
    case JOB_ERASE:
        break;
    }
    if (rc != STORE_OK)
        store_failed(j, c, rc, err);
}

static void *api_thread_main(void *arg)
{
    struct memory_api *api = arg;
    struct api_conn c = {0};
    for (;;) {
        pthread_mutex_lock(&api->mu);
        while (!api->head && !api->stopping)
            pthread_cond_wait(&api->cond, &api->mu);
        struct api_job *j = api->head;
        if (!j) { /* stopping and nothing left */
            pthread_mutex_unlock(&api->mu);
            break;
        }
        api->head = j->next;
        if (!api->head)
            api->tail = NULL;
        api->queued--;
        j->state = JOB_RUNNING;
        pthread_mutex_unlock(&api->mu);
        run_job(api, j, &c);
        event_active(j->done, EV_TIMEOUT, 0);
    }
    conn_pg_drop(&c);
    rclient_free(c.rc);
    return NULL;
}

/* ------------------------------------------------------------ loop side */

static void job_free(struct api_job *j)
{
    if (j->done)
        event_free(j->done);
    mq_search_free(&j->search);
    mq_list_free(&j->list);
    free(j->user_id);
    free(j->vec);
    json_decref(j->result);
    j->api->pending--;
    free(j);
}

static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct api_job *j = arg;
    (void)fd;
    (void)what;
    j->state = JOB_DONE;
    if (j->r) {
        cm_req_on_abort(j->r, NULL, NULL);
        cm_req_reply_json(j->r, j->status, j->result);
        j->result = NULL;
    }
    job_free(j);
}

static void job_abort(struct cm_req *r, void *arg)
{
    struct api_job *j = arg;
    (void)r;
    j->r = NULL;
    /* j->embed is loop-thread state (j->state is also written by the API
     * thread that runs the job). */
    if (j->embed) {
        cm_hc_cancel(j->embed);
        job_free(j);
    }
    /* QUEUED or RUNNING: the result is dropped when it comes. */
}

static struct api_job *job_new(struct memory_api *api, struct cm_req *r, enum job_kind kind)
{
    struct api_job *j = cm_xcalloc(1, sizeof *j);
    j->api = api;
    j->r = r;
    j->kind = kind;
    j->done = event_new(api->base, -1, 0, job_done_cb, j);
    api->pending++;
    cm_req_on_abort(r, job_abort, j);
    return j;
}

/* Hands the job to the API threads, or answers 429 when the queue is full. */
static void job_enqueue(struct api_job *j)
{
    struct memory_api *api = j->api;
    pthread_mutex_lock(&api->mu);
    int full = api->queued >= (size_t)api->cfg->api_queue;
    if (!full) {
        j->state = JOB_QUEUED;
        if (api->tail)
            api->tail->next = j;
        else
            api->head = j;
        api->tail = j;
        api->queued++;
        pthread_cond_signal(&api->cond);
    }
    pthread_mutex_unlock(&api->mu);
    if (!full)
        return;
    if (j->r) {
        cm_req_on_abort(j->r, NULL, NULL);
        cm_req_count_reject(j->r, "api_queue_full");
        cm_req_add_header(j->r, "Retry-After", "1");
        cm_req_reply_error(j->r, 429, "rate_limit_error",
                           "Too many memories API requests are waiting (MEMORY_API_QUEUE).", NULL,
                           "busy");
    }
    job_free(j);
}

static void bad_request(struct cm_req *r, const char *param, const char *msg)
{
    cm_req_reply_error(r, 400, "invalid_request_error", msg, param, "invalid_value");
}

/* The embedding of a search query arrived (or not). */
static void embed_done(struct cm_hc_req *req, enum cm_hc_result result, long status,
                       struct evbuffer *body, const char *errmsg, void *arg)
{
    struct api_job *j = arg;
    struct memory_api *api = j->api;
    (void)req;
    j->embed = NULL;
    char err[400] = "";
    if (result != CM_HC_OK) {
        snprintf(err, sizeof err, "llm_proxy %s: %s", cm_hc_result_name(result),
                 errmsg ? errmsg : "");
    } else if (status != 200) {
        snprintf(err, sizeof err, "llm_proxy answered %ld", status);
    } else {
        size_t len = evbuffer_get_length(body);
        json_t *reply = json_loadb((const char *)evbuffer_pullup(body, -1), len, 0, NULL);
        if (!reply ||
            llm_embeddings_parse(reply, 1, (size_t)api->cfg->embedding_dim,
                                 api->cfg->embedding_model, &j->vec, err, sizeof err) != LLM_OK) {
            if (!err[0])
                snprintf(err, sizeof err, "llm_proxy's embeddings reply is not JSON");
            free(j->vec);
            j->vec = NULL;
        }
        json_decref(reply);
    }
    if (!j->vec) {
        if (j->search.mode == MQ_VECTOR) {
            CM_WARN(cm_req_id(j->r), "search_failed", "query embedding failed: %s", err);
            char msg[500];
            snprintf(msg, sizeof msg, "The query could not be embedded: %s", err);
            cm_req_on_abort(j->r, NULL, NULL);
            cm_req_reply_error(j->r, 503, "server_error", msg, NULL, "embedding_unavailable");
            job_free(j);
            return;
        }
        CM_WARN(cm_req_id(j->r), "search_degraded", "full text only: query embedding failed: %s",
                err);
        j->degraded = 1;
    }
    job_enqueue(j);
}

static void embed_start(struct api_job *j)
{
    struct memory_api *api = j->api;
    json_t *req =
        json_pack("{s:s, s:s}", "model", api->cfg->embedding_model, "input", j->search.query);
    char *body = cm_json_dumps(req);
    json_decref(req);
    char *url = cm_xasprintf("%s/v1/embeddings", api->cfg->llm_proxy_url);
    double t = api->cfg->search_embed_timeout;
    struct cm_hc_opts o = {.method = "POST",
                           .url = url,
                           .body = body,
                           .body_len = strlen(body),
                           .request_id = cm_req_id(j->r),
                           .bearer = api->cfg->llm_proxy_api_key,
                           .connect_timeout_s = t < 2 ? t : 2,
                           .total_timeout_s = t,
                           .max_response_bytes = 16 * 1024 * 1024};
    static const struct cm_hc_callbacks cbs = {.on_done = embed_done};
    j->state = JOB_EMBEDDING;
    j->embed = cm_hc_start(api->hc, &o, &cbs, j);
    free(url);
    free(body);
    if (!j->embed) {
        /* Refused at once (overload): the same as llm_proxy failing. */
        j->state = JOB_QUEUED;
        embed_done(NULL, CM_HC_ERR_QUEUE_TIMEOUT, 0, NULL, "too many embeddings in flight", j);
    }
}

static void handle_search(struct cm_req *r, void *arg)
{
    struct memory_api *api = arg;
    if (!api->allowed(r, api->allowed_arg))
        return;
    json_t *body = cm_req_parse_json_object(r);
    if (!body)
        return;
    struct mq_search q;
    const char *param = NULL;
    char msg[300];
    int rc = mq_parse_search(body, &q, &param, msg, sizeof msg);
    json_decref(body);
    if (rc != 0) {
        bad_request(r, param, msg);
        return;
    }
    struct api_job *j = job_new(api, r, JOB_SEARCH);
    j->search = q;
    char schema[512];
    if (q.mode == MQ_TEXT) {
        job_enqueue(j);
        return;
    }
    if (pipeline_schema_error(api->p, schema, sizeof schema)) {
        /* The stored vectors do not match EMBEDDING_DIM: no vector search. */
        if (q.mode == MQ_VECTOR) {
            cm_req_on_abort(r, NULL, NULL);
            cm_req_reply_error(r, 503, "server_error", schema, NULL, "config_error");
            job_free(j);
            return;
        }
        j->degraded = 1;
        job_enqueue(j);
        return;
    }
    embed_start(j);
}

static void handle_list(struct cm_req *r, void *arg)
{
    struct memory_api *api = arg;
    if (!api->allowed(r, api->allowed_arg))
        return;
    struct mq_list q;
    const char *param = NULL;
    char msg[300];
    if (mq_parse_list(cm_req_query(r, "user_id"), cm_req_query(r, "room_id"),
                      cm_req_query(r, "limit"), cm_req_query(r, "before"), &q, &param, msg,
                      sizeof msg) != 0) {
        bad_request(r, param, msg);
        return;
    }
    struct api_job *j = job_new(api, r, JOB_LIST);
    j->list = q;
    job_enqueue(j);
}

/* The raw (still percent-encoded) path after prefix, decoded; NULL with
 * *len = 0 when it does not decode. */
static char *path_param(struct cm_req *r, const char *prefix, size_t *len)
{
    const char *raw = cm_req_path(r) + strlen(prefix);
    *len = 0;
    size_t n = 0;
    char *dec = evhttp_uridecode(raw, 0, &n);
    if (!dec)
        return NULL;
    *len = n;
    return dec;
}

static void handle_one(struct cm_req *r, void *arg)
{
    struct memory_api *api = arg;
    if (!api->allowed(r, api->allowed_arg))
        return;
    size_t len;
    char *ids = path_param(r, "/v1/memories/", &len);
    long long id;
    int ok = ids && strlen(ids) == len && mq_parse_id(ids, &id) == 0;
    free(ids);
    if (!ok) {
        bad_request(r, "id", "The memory id must be a positive integer.");
        return;
    }
    const char *user = cm_req_query(r, "user_id");
    if (user && mq_user_id_problem(user, strlen(user))) {
        bad_request(r, "user_id", "'user_id' is not a usable user id.");
        return;
    }
    int del = strcmp(cm_req_method_name(r), "DELETE") == 0;
    struct api_job *j = job_new(api, r, del ? JOB_DELETE : JOB_GET);
    j->id = id;
    j->user_id = user ? cm_xstrdup(user) : NULL;
    job_enqueue(j);
}

static void handle_erase(struct cm_req *r, void *arg)
{
    struct memory_api *api = arg;
    if (!api->allowed(r, api->allowed_arg))
        return;
    size_t len;
    char *user = path_param(r, "/v1/users/", &len);
    const char *why = !user ? "not a valid percent-encoded path" : mq_user_id_problem(user, len);
    if (why) {
        char msg[200];
        snprintf(msg, sizeof msg, "The user id in the path is not usable: %s.", why);
        free(user);
        bad_request(r, "user_id", msg);
        return;
    }
    struct api_job *j = job_new(api, r, JOB_ERASE);
    j->user_id = user;
    j->user_len = len;
    job_enqueue(j);
}

/* ------------------------------------------------------------ lifecycle */

struct memory_api *memory_api_new(struct event_base *base, const struct worker_config *cfg,
                                  struct pipeline *p, memory_api_allowed_cb allowed,
                                  void *allowed_arg)
{
    struct memory_api *api = cm_xcalloc(1, sizeof *api);
    api->base = base;
    api->cfg = cfg;
    api->p = p;
    api->allowed = allowed;
    api->allowed_arg = allowed_arg;
    api->hc = cm_hc_new(base);
    /* Embeddings of queries in flight at once, and waiting. */
    cm_hc_set_limits(api->hc, 64, (unsigned)cfg->api_queue, cfg->search_embed_timeout);
    pthread_mutex_init(&api->mu, NULL);
    pthread_cond_init(&api->cond, NULL);
    api->nthreads = (size_t)cfg->api_threads;
    api->threads = cm_xcalloc(api->nthreads, sizeof *api->threads);
    for (size_t i = 0; i < api->nthreads; i++)
        pthread_create(&api->threads[i], NULL, api_thread_main, api);
    return api;
}

void memory_api_routes(struct memory_api *api, struct cm_http_server *srv)
{
    cm_http_server_route(srv, CM_POST, "/v1/memories/search", CM_ROUTE_AUTH, "memories_search",
                         handle_search, api);
    cm_http_server_route(srv, CM_GET, "/v1/memories", CM_ROUTE_AUTH, "memories_list", handle_list,
                         api);
    cm_http_server_route(srv, CM_GET | CM_DELETE, "/v1/memories/", CM_ROUTE_PREFIX | CM_ROUTE_AUTH,
                         "memory", handle_one, api);
    cm_http_server_route(srv, CM_DELETE, "/v1/users/", CM_ROUTE_PREFIX | CM_ROUTE_AUTH,
                         "user_erase", handle_erase, api);
}

void memory_api_free(struct memory_api *api)
{
    if (!api)
        return;
    pthread_mutex_lock(&api->mu);
    api->stopping = 1;
    pthread_cond_broadcast(&api->cond);
    pthread_mutex_unlock(&api->mu);
    for (size_t i = 0; i < api->nthreads; i++)
        pthread_join(api->threads[i], NULL);
    /* Every job has posted its event (threads drain the queue first);
     * embeddings still in flight end with their clients (aborted when the
     * server was freed) or here. */
    while (api->pending > 0 && event_base_loop(api->base, EVLOOP_ONCE) == 0) {
    }
    cm_hc_free(api->hc);
    pthread_mutex_destroy(&api->mu);
    pthread_cond_destroy(&api->cond);
    free(api->threads);
    free(api);
}

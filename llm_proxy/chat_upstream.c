/* chat_upstream: streaming /api/chat relay core (see chat_upstream.h). */
#include "chat_upstream.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STREAM_MAX_LINE (8 * 1024 * 1024)

struct upstream_chat {
    struct proxy *px;
    struct cm_hc_req *up;
    const struct chat_sink_ops *ops;
    void *sink;
    char *route;
    struct chat_request req;
    struct chat_stream st;
    struct evbuffer *pending; /* bytes not yet split into lines */
    struct event *resume;
    struct timespec start;
    int first_line_seen;
    struct upstream_host *host; /* the host of up */
    int attempts;
    int answered; /* the upstream said 200: never replayed from here on */
    char *body;   /* the request, kept for a failover until answered (2+ hosts) */
    size_t body_len;
    char *request_id;
    int json_per_line; /* each line in its own JSON scope */
};

static void uc_free(struct upstream_chat *uc)
{
    if (uc->resume)
        event_free(uc->resume);
    evbuffer_free(uc->pending);
    chat_request_deinit(&uc->req);
    chat_stream_deinit(&uc->st);
    free(uc->route);
    free(uc->body);
    free(uc->request_id);
    free(uc);
}

/* The transfer on uc->host ended without a report (cancelled). */
static void uc_release(struct upstream_chat *uc)
{
    if (uc->up && uc->host)
        upstream_host_release(uc->host);
}

static void uc_fail(struct upstream_chat *uc, const struct proxy_error *e)
{
    uc_release(uc);
    cm_hc_cancel(uc->up);
    uc->up = NULL;
    const struct chat_sink_ops *ops = uc->ops;
    void *sink = uc->sink;
    struct proxy_error copy = *e;
    uc_free(uc);
    ops->fail(sink, &copy);
}

static void uc_done(struct upstream_chat *uc)
{
    if (uc->up && uc->host) /* the final line came before the transfer's end */
        upstream_host_end(uc->host, uc->route, CM_HC_OK, 200);
    /* Usually only the chunked terminator is left: let it arrive, so that
     * the upstream connection is reused (cancelling here closed it). */
    cm_hc_release(uc->up);
    uc->up = NULL;
    chat_count_tokens(uc->px->m_tokens, &uc->st.usage);
    const struct chat_sink_ops *ops = uc->ops;
    void *sink = uc->sink;
    struct chat_usage usage = uc->st.usage;
    const char *finish = uc->st.finish_reason;
    uc_free(uc);
    ops->done(sink, finish, &usage);
}

static double since(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

/* One NDJSON line. Returns 1 when uc was freed. line is only read before
 * anything that may free uc. */
static int uc_line_json(struct upstream_chat *uc, const char *line, size_t len)
{
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (len == 0)
        return 0;
    struct proxy_error err;
    json_t *j = cm_json_parse(line, len, NULL, 0);
    if (!json_is_object(j)) {
        json_decref(j);
        proxy_error_set(&err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server sent an invalid stream line.");
        uc_fail(uc, &err);
        return 1;
    }
    if (!uc->first_line_seen) {
        uc->first_line_seen = 1;
        const char *labels[] = {uc->route};
        cm_metric_observe(uc->px->m_ttft, labels, since(&uc->start));
    }
    json_t *chunks = json_array();
    int rc = chat_stream_line(&uc->st, j, chunks, &err);
    json_decref(j);
    if (rc == CHAT_STREAM_ERROR) {
        json_decref(chunks);
        uc_fail(uc, &err);
        return 1;
    }
    size_t i;
    json_t *c;
    json_array_foreach(chunks, i, c) uc->ops->chunk(uc->sink, c);
    json_decref(chunks);
    if (rc == CHAT_STREAM_DONE) {
        uc_done(uc);
        return 1;
    }
    return 0;
}

static int uc_line(struct upstream_chat *uc, const char *line, size_t len)
{
    if (!uc->json_per_line)
        return uc_line_json(uc, line, len);
    cm_json_scope_begin();
    int freed = uc_line_json(uc, line, len);
    cm_json_scope_end();
    return freed;
}

/* Splits pending bytes into lines. Returns 1 when uc was freed. */
static int uc_drain_lines(struct upstream_chat *uc, int at_eof)
{
    for (;;) {
        struct evbuffer_ptr eol = evbuffer_search_eol(uc->pending, NULL, NULL, EVBUFFER_EOL_LF);
        size_t line_len;
        if (eol.pos < 0) {
            line_len = evbuffer_get_length(uc->pending);
            if (!at_eof || line_len == 0)
                return 0;
        } else {
            line_len = (size_t)eol.pos;
        }
        /* Parsed in place (usually one chunk already: no copy); uc_line reads
         * it before anything that may free uc and its buffer. */
        const char *line = (const char *)evbuffer_pullup(uc->pending, (ev_ssize_t)line_len);
        if (uc_line(uc, line ? line : "", line_len))
            return 1;
        evbuffer_drain(uc->pending, line_len + (eol.pos < 0 ? 0 : 1));
    }
}

static int uc_failover(struct upstream_chat *uc, enum cm_hc_result result, long status);

static void uc_headers(struct cm_hc_req *up, long status, void *arg)
{
    struct upstream_chat *uc = arg;
    (void)up;
    if (status != 200)
        return;
    uc->answered = 1;
    free(uc->body);
    uc->body = NULL;
    if (uc->ops->headers_ok)
        uc->ops->headers_ok(uc->sink);
}

static int uc_data(struct cm_hc_req *up, const char *data, size_t len, void *arg)
{
    struct upstream_chat *uc = arg;
    (void)up;
    if (uc->ops->backlog(uc->sink) > CHAT_UPSTREAM_HIGH_WATER)
        return CM_HC_PAUSE; /* the same bytes come again after resume */
    evbuffer_add(uc->pending, data, len);
    if (evbuffer_get_length(uc->pending) > STREAM_MAX_LINE) {
        struct proxy_error err;
        proxy_error_set(&err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server sent a stream line over %d bytes.",
                        STREAM_MAX_LINE);
        uc_fail(uc, &err);
        return CM_HC_CONSUMED;
    }
    uc_drain_lines(uc, 0);
    return CM_HC_CONSUMED;
}

static void uc_finished(struct cm_hc_req *up, enum cm_hc_result result, long status,
                        struct evbuffer *body, const char *errmsg, void *arg)
{
    struct upstream_chat *uc = arg;
    (void)up;
    uc->up = NULL; /* freed by the client after this callback */
    upstream_host_end(uc->host, uc->route, result, status);
    struct proxy_error err;
    if (!uc->answered && uc_failover(uc, result, status))
        return;
    if (result == CM_HC_OK && status == 200) {
        if (uc_drain_lines(uc, 1))
            return; /* the last line had no newline but completed the stream */
        proxy_error_set(&err, 502, NULL, "upstream_incomplete",
                        "The upstream model server ended the stream before its final message.");
        const char *labels[] = {uc->route, "incomplete_stream"};
        cm_metric_add(uc->px->m_upstream_errors, labels, 1);
    } else {
        proxy_upstream_error(uc->px, uc->route, result, status, body, errmsg, uc->req.model, &err);
    }
    uc_fail(uc, &err);
}

static int uc_start_on(struct upstream_chat *uc, struct upstream_host *h)
{
    char *url = upstream_host_url(h, "/api/chat");
    struct proxy *px = uc->px;
    /* With no other host to fail over to, the body goes to the client
     * without a copy (and is gone from here, started or not). */
    int give = uc->body && upstream_pool_size(px->pool) < 2;
    struct cm_hc_opts o = {.method = "POST",
                           .url = url,
                           .body = uc->body,
                           .body_len = uc->body_len,
                           .body_given = give,
                           .request_id = uc->request_id,
                           .connect_timeout_s = px->cfg.connect_timeout,
                           .first_byte_timeout_s = px->cfg.chat_timeout,
                           .idle_timeout_s = px->cfg.chat_timeout,
                           .stream = 1};
    static const struct cm_hc_callbacks cbs = {
        .on_headers = uc_headers, .on_data = uc_data, .on_done = uc_finished};
    uc->up = cm_hc_start(upstream_host_hc(h), &o, &cbs, uc);
    free(url);
    if (give)
        uc->body = NULL;
    if (!uc->up)
        return -1;
    uc->host = h;
    uc->attempts++;
    upstream_host_begin(h);
    return 0;
}

/* Nothing was relayed yet: once more on another host. */
static int uc_failover(struct upstream_chat *uc, enum cm_hc_result result, long status)
{
    if (uc->attempts > 1 || !uc->body || !upstream_failover_ok(result, status))
        return 0;
    struct upstream_host *next = upstream_pool_pick(uc->px->pool, uc->req.model, uc->host);
    if (!next)
        return 0;
    CM_WARN(uc->request_id, "upstream_failover", "route=%s from=%s to=%s reason=%s/%ld", uc->route,
            upstream_host_label(uc->host), upstream_host_label(next), cm_hc_result_name(result),
            status);
    if (uc_start_on(uc, next) != 0)
        return 0;
    upstream_pool_count_failover(uc->px->pool);
    return 1;
}

static void uc_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_chat *uc = arg;
    (void)fd;
    (void)what;
    cm_hc_resume(uc->up); /* may deliver data (and finish uc) before returning */
}

struct upstream_chat *upstream_chat_start(struct proxy *px, const char *request_id,
                                          const char *route, struct chat_request *req,
                                          const struct chat_sink_ops *ops, void *sink,
                                          struct proxy_error *err)
{
    struct upstream_chat *uc = cm_xcalloc(1, sizeof *uc);
    uc->px = px;
    uc->ops = ops;
    uc->sink = sink;
    uc->route = cm_xstrdup(route);
    uc->req = *req;
    memset(req, 0, sizeof *req);
    uc->pending = evbuffer_new();
    uc->resume = evtimer_new(px->base, uc_resume_cb, uc);
    clock_gettime(CLOCK_MONOTONIC, &uc->start);
    char id[48];
    chat_new_id(id, sizeof id);
    chat_stream_init(&uc->st, uc->req.model, id, (long long)time(NULL), uc->req.include_usage);

    uc->request_id = request_id ? cm_xstrdup(request_id) : NULL;
    uc->body = chat_request_body(&uc->req, &uc->body_len);
    chat_request_drop_native(&uc->req); /* uc->body is the copy we keep */
    struct upstream_host *h = upstream_pool_pick(px->pool, uc->req.model, NULL);
    int started = uc_start_on(uc, h) == 0;
    if (!started && cm_hc_refused(upstream_host_hc(h))) {
        /* This host's queue is full: another eligible host may have room. */
        struct upstream_host *next = upstream_pool_pick(px->pool, uc->req.model, h);
        started = next && uc_start_on(uc, next) == 0;
    }
    if (!started) {
        if (cm_hc_refused(upstream_host_hc(h)))
            proxy_refused_error(px, route, err);
        else
            proxy_error_set(err, 500, NULL, NULL, "Could not start the upstream request.");
        uc_free(uc);
        return NULL;
    }
    if (upstream_pool_size(px->pool) < 2) {
        free(uc->body); /* no other host to fail over to: curl has its copy */
        uc->body = NULL;
    }
    return uc;
}

void upstream_chat_cancel(struct upstream_chat *uc)
{
    if (!uc)
        return;
    uc_release(uc);
    cm_hc_cancel(uc->up);
    uc->up = NULL;
    uc_free(uc);
}

void upstream_chat_json_per_line(struct upstream_chat *uc, int on)
{
    uc->json_per_line = on;
}

void upstream_chat_resume(struct upstream_chat *uc)
{
    /* From a fresh loop iteration, never from inside the sink's writer. */
    struct timeval zero = {0, 0};
    event_add(uc->resume, &zero);
}

struct chat_usage upstream_chat_usage(const struct upstream_chat *uc)
{
    return uc->st.usage;
}

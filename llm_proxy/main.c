/*
 * llm_proxy: OpenAI-compatible HTTP gateway in front of Ollama.
 *
 * main wires configuration, logging, the event loop, the HTTP server and the
 * upstream client together, and runs the shutdown sequence:
 *   SIGTERM/SIGINT -> stop accepting, /ready 503 -> wait for in-flight
 *   requests (at most SHUTDOWN_GRACE) -> close everything -> exit 0.
 * A second signal exits at once.
 */
#include "api_handlers.h"
#include "chat_policy.h"
#include "proxy.h"

#include "cm_mem_budget.h"

#include "cm_alloc.h"
#include "cm_http_probe.h"
#include "cm_log.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const double duration_buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                          1,     2.5,   5,    10,    30,   60,  120};

struct app {
    struct proxy px;
    struct event *sigterm, *sigint, *drain_timer, *grace_timer;
    int signals;
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: llm_proxy [--help] [--version] [--healthcheck]\n"
            "\n"
            "OpenAI-compatible HTTP gateway in front of Ollama: /v1/chat/completions (JSON and\n"
            "SSE), /v1/embeddings, /v1/models, WebSocket chat on /ws/chat, /health, /ready,\n"
            "/metrics.\n"
            "\n"
            "Options:\n"
            "  --help         show this help and exit\n"
            "  --version      print the version and exit\n"
            "  --healthcheck  GET /health on the configured port; exit 0 when healthy\n"
            "\n");
    proxy_config_help(out);
    fprintf(out, "\nExit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad "
                 "configuration.\n");
}

static void record_done(const struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    char status[16];
    snprintf(status, sizeof status, "%d", cm_req_status(r));
    const char *labels[] = {cm_req_route(r), cm_req_method_name(r), status};
    cm_metric_add(px->m_requests, labels, 1);
    const char *route[] = {cm_req_route(r)};
    cm_metric_observe(px->m_duration, route, cm_req_elapsed(r));
}

static void record_reject(const char *reason, void *arg)
{
    struct proxy *px = arg;
    const char *labels[] = {reason};
    cm_metric_add(px->m_rejected, labels, 1);
}

static void drain_check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    (void)fd;
    (void)what;
    if (cm_http_server_inflight(app->px.srv) == 0 && app->px.ws_count == 0) {
        CM_INFO(NULL, "shutdown", "all requests finished");
        event_base_loopexit(app->px.base, NULL);
    }
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    (void)fd;
    (void)what;
    CM_WARN(NULL, "shutdown", "grace period over; closing %u request(s)",
            cm_http_server_inflight(app->px.srv));
    event_base_loopexit(app->px.base, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)what;
    if (++app->signals > 1) {
        CM_WARN(NULL, "shutdown", "second signal; exiting now");
        event_base_loopbreak(app->px.base);
        return;
    }
    CM_INFO(NULL, "shutdown", "signal %d: draining %u request(s), grace %.1fs", (int)sig,
            cm_http_server_inflight(app->px.srv), app->px.cfg.shutdown_grace);
    cm_http_server_drain(app->px.srv);
    health_ready_drain(&app->px);
    ws_drain_all(&app->px);
    struct timeval poll = {0, 20000};
    app->drain_timer = event_new(app->px.base, -1, EV_PERSIST, drain_check_cb, app);
    event_add(app->drain_timer, &poll);
    double g = app->px.cfg.shutdown_grace;
    struct timeval gt = {(time_t)g, (suseconds_t)((g - (double)(time_t)g) * 1e6)};
    app->grace_timer = evtimer_new(app->px.base, grace_cb, app);
    evtimer_add(app->grace_timer, &gt);
}

static void setup_metrics(struct proxy *px)
{
    px->metrics = cm_metrics_new();
    px->m_requests =
        cm_metrics_counter(px->metrics, "llm_proxy_http_requests_total",
                           "HTTP requests by route, method and status.", "route,method,status");
    px->m_duration = cm_metrics_histogram(px->metrics, "llm_proxy_http_request_duration_seconds",
                                          "Time from request to the end of the reply.", "route",
                                          duration_buckets,
                                          sizeof duration_buckets / sizeof duration_buckets[0]);
    px->m_ttft = cm_metrics_histogram(px->metrics, "llm_proxy_time_to_first_token_seconds",
                                      "Streams: time from request to the first upstream message.",
                                      "route", duration_buckets,
                                      sizeof duration_buckets / sizeof duration_buckets[0]);
    px->m_inflight = cm_metrics_gauge(px->metrics, "llm_proxy_http_requests_in_flight",
                                      "Requests being processed.", NULL);
    px->m_upstream_errors =
        cm_metrics_counter(px->metrics, "llm_proxy_upstream_errors_total",
                           "Failed upstream exchanges by route and kind.", "route,kind");
    px->m_tokens = cm_metrics_counter(px->metrics, "llm_proxy_tokens_total",
                                      "Tokens reported by the upstream, by type.", "type");
    px->m_ws_connections = cm_metrics_gauge(px->metrics, "llm_proxy_websocket_connections",
                                            "Open WebSocket connections.", NULL);
    px->m_queue = cm_metrics_gauge(px->metrics, "llm_proxy_upstream_queue_depth",
                                   "Requests waiting for an upstream slot.", NULL);
    px->m_rejected = cm_metrics_counter(
        px->metrics, "llm_proxy_rejected_requests_total",
        "Requests refused before reaching the upstream, by reason (body_budget, queue, auth, "
        "origin, limits, too_large, malformed, shutting_down).",
        "reason");
    px->m_body_memory = cm_metrics_gauge(px->metrics, "llm_proxy_body_memory_bytes",
                                         "Request bodies and JSON held in memory now.", NULL);
    px->m_up_requests = cm_metrics_counter(
        px->metrics, "llm_proxy_upstream_requests_total",
        "Upstream exchanges by Ollama host, route and status (HTTP status or failure kind).",
        "host,route,status");
    px->m_up_in_flight =
        cm_metrics_gauge(px->metrics, "llm_proxy_upstream_in_flight",
                         "Requests running or queued on each Ollama host.", "host");
    px->m_up_healthy = cm_metrics_gauge(px->metrics, "llm_proxy_upstream_healthy",
                                        "1 while an Ollama host is healthy, 0 while down.", "host");
    px->m_up_failovers = cm_metrics_counter(
        px->metrics, "llm_proxy_upstream_failovers_total",
        "Requests retried on another Ollama host after a failure before any byte reached the "
        "client.",
        NULL);
}

static void setup_pool(struct proxy *px)
{
    const struct proxy_config *c = &px->cfg;
    struct upstream_pool_opts o = {.refresh_interval_s = c->upstream_refresh_interval,
                                   .fail_threshold = (unsigned)c->upstream_fail_threshold,
                                   .backoff_min_s = c->upstream_backoff_min,
                                   .backoff_max_s = c->upstream_backoff_max,
                                   .connect_timeout_s = c->connect_timeout,
                                   .max_upstream = (unsigned)c->max_upstream,
                                   .queue_size = (unsigned)c->queue_size,
                                   .queue_timeout_s = c->queue_timeout,
                                   .m_requests = px->m_up_requests,
                                   .m_in_flight = px->m_up_in_flight,
                                   .m_healthy = px->m_up_healthy,
                                   .m_failovers = px->m_up_failovers};
    px->pool = upstream_pool_new(px->base, c->upstream_urls, c->n_upstreams, &o);
}

static void setup_routes(struct proxy *px)
{
    struct cm_http_server *s = px->srv;
    cm_http_server_route(s, CM_POST, "/v1/chat/completions", CM_ROUTE_AUTH, "chat_completions",
                         chat_handle, px);
    cm_http_server_route(s, CM_POST, "/v1/responses", CM_ROUTE_AUTH, "responses", responses_handle,
                         px);
    cm_http_server_route(s, CM_POST, "/v1/messages",
                         CM_ROUTE_AUTH | CM_ROUTE_AUTH_XKEY | CM_ROUTE_ANTHROPIC, "messages",
                         messages_handle, px);
    cm_http_server_route(s, CM_POST, "/v1/embeddings", CM_ROUTE_AUTH, "embeddings", embed_handle,
                         px);
    cm_http_server_route(s, CM_GET, "/v1/models", CM_ROUTE_AUTH, "models", models_handle_list, px);
    cm_http_server_route(s, CM_GET, "/v1/models/", CM_ROUTE_AUTH | CM_ROUTE_PREFIX, "model",
                         models_handle_get, px);
    cm_http_server_route(s, CM_GET, "/ws/chat",
                         CM_ROUTE_AUTH | CM_ROUTE_AUTH_QUERY | CM_ROUTE_STRICT_ORIGIN, "ws_chat",
                         ws_handle_upgrade, px);
    cm_http_server_route(s, CM_GET, "/health", CM_ROUTE_DRAIN_OK, "health", health_handle_live, px);
    cm_http_server_route(s, CM_GET, "/ready", CM_ROUTE_DRAIN_OK, "ready", health_handle_ready, px);
    cm_http_server_route(s, CM_GET, "/metrics", CM_ROUTE_DRAIN_OK, "metrics", health_handle_metrics,
                         px);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"help", no_argument, NULL, 'h'},
                                             {"version", no_argument, NULL, 'V'},
                                             {"healthcheck", no_argument, NULL, 'H'},
                                             {NULL, 0, NULL, 0}};
    int do_healthcheck = 0, opt;
    while ((opt = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("llm_proxy %s\n", PROJECT_VERSION);
            return 0;
        case 'H':
            do_healthcheck = 1;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llm_proxy: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    /* Before any JSON value exists: every one is counted from now on. */
    cm_mem_budget_install();
    static struct app app;
    struct proxy *px = &app.px;
    char err[512];
    if (proxy_config_load(&px->cfg, NULL, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "llm_proxy: configuration error: %s\n", err);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (do_healthcheck) {
        int rc = cm_http_probe_healthcheck(px->cfg.host, px->cfg.port);
        proxy_config_free(&px->cfg);
        curl_global_cleanup();
        return rc;
    }
    cm_log_init_names("llm_proxy", px->cfg.log_level, px->cfg.log_format);
    cm_mem_budget_set_limit((size_t)px->cfg.max_body_memory);
    chat_policy_set(px->cfg.allowed_options, px->cfg.max_num_ctx, px->cfg.keep_alive_max);
    cm_log_capture_libevent();
    signal(SIGPIPE, SIG_IGN);
    /* Each connection is a file descriptor: allow as many as the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* The changelist merges the many add/del of one loop pass into one
     * epoll_ctl per fd (we never dup() fds handed to the loop). */
    struct event_config *ecfg = event_config_new();
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    px->base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    setup_metrics(px);
    setup_pool(px);
    struct cm_http_server_opts so = {.host = px->cfg.host,
                                     .port = (int)px->cfg.port,
                                     .max_body_bytes = px->cfg.max_body_bytes,
                                     .max_header_bytes = px->cfg.max_header_bytes,
                                     .idle_timeout_s = px->cfg.idle_timeout,
                                     .api_key = px->cfg.api_key,
                                     .max_connections = (unsigned)px->cfg.max_connections,
                                     .request_read_timeout_s = px->cfg.request_read_timeout,
                                     .origins = px->cfg.origins};
    px->srv = cm_http_server_new(px->base, &so);
    cm_http_server_on_done(px->srv, record_done, px);
    cm_http_server_on_reject(px->srv, record_reject, px);
    setup_routes(px);
    int rc = 0;
    if (cm_http_server_start(px->srv, err, sizeof err) != 0) {
        CM_ERROR(NULL, "startup_failed", "%s", err);
        rc = 1;
        goto out;
    }
    proxy_config_log(&px->cfg);
    CM_INFO(NULL, "listening", "host=%s port=%d upstream=%s hosts=%zu version=%s", px->cfg.host,
            cm_http_server_port(px->srv), upstream_host_label(upstream_pool_host(px->pool, 0)),
            upstream_pool_size(px->pool), PROJECT_VERSION);
    if (px->cfg.port_file && cm_http_server_write_port_file(px->srv, px->cfg.port_file)) {
        CM_ERROR(NULL, "startup_failed", "cannot write LLM_PROXY_PORT_FILE %s", px->cfg.port_file);
        rc = 1;
        goto out;
    }
    upstream_pool_start(px->pool);
    app.sigterm = evsignal_new(px->base, SIGTERM, signal_cb, &app);
    app.sigint = evsignal_new(px->base, SIGINT, signal_cb, &app);
    event_add(app.sigterm, NULL);
    event_add(app.sigint, NULL);

    event_base_dispatch(px->base);
    CM_INFO(NULL, "stopped", "exiting");

out:
    cm_http_server_free(px->srv);
    if (app.sigterm)
        event_free(app.sigterm);
    if (app.sigint)
        event_free(app.sigint);
    if (app.drain_timer)
        event_free(app.drain_timer);
    if (app.grace_timer)
        event_free(app.grace_timer);
    health_ready_free(px);
    upstream_pool_free(px->pool);
    cm_metrics_free(px->metrics);
    event_base_free(px->base);
    proxy_config_free(&px->cfg);
    chat_policy_reset();
    curl_global_cleanup();
    return rc;
}

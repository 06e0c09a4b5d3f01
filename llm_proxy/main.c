/*
 * llm_proxy: OpenAI-compatible HTTP gateway in front of Ollama.
 *
 * main wires configuration, logging, the metrics, the shared upstream hosts
 * and the connection cap together, starts LLM_PROXY_WORKERS event-loop
 * threads (proxy_workers.h: each its own loop, HTTP server on the shared
 * port and upstream clients), and runs the shutdown sequence on its own
 * loop, which only waits for signals and for the workers to end:
 *   SIGTERM/SIGINT -> every worker stops accepting work, /ready 503 -> each
 *   waits for its in-flight requests (at most SHUTDOWN_GRACE) -> the loops
 *   end -> main joins the threads, closes everything -> exit 0.
 * A second signal stops every loop at once.
 */
#include "chat_policy.h"
#include "proxy.h"
#include "proxy_workers.h"

#include "cm_mem_budget.h"

#include "cm_alloc.h"
#include "cm_conn_guard.h"
#include "cm_http_probe.h"
#include "cm_log.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>
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
    struct proxy px;         /* the template each worker copies (cfg, metrics) */
    struct event_base *base; /* the main thread's loop: signals, workers' end */
    struct proxy_workers *workers;
    struct event *sigterm, *sigint, *done;
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

static void workers_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct app *app = arg;
    (void)fd;
    (void)what;
    event_base_loopexit(app->base, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct app *app = arg;
    (void)what;
    if (++app->signals > 1) {
        CM_WARN(NULL, "shutdown", "second signal; exiting now");
        proxy_workers_stop_now(app->workers);
        return;
    }
    struct proxy_totals t;
    proxy_workers_totals(app->workers, &t);
    CM_INFO(NULL, "signal", "signal %d: draining %u request(s) on %u worker(s)", (int)sig,
            t.inflight, proxy_workers_count(app->workers));
    proxy_workers_drain(app->workers);
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
    px->m_ready_waiting =
        cm_metrics_gauge(px->metrics, "llm_proxy_ready_waiting",
                         "/ready requests waiting for a probe round (no result yet).", NULL);
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
    px->m_worker_requests = cm_metrics_counter(
        px->metrics, "llm_proxy_worker_requests_total",
        "HTTP requests finished by each worker thread (LLM_PROXY_WORKERS).", "worker");
}

static struct upstream_hosts *setup_hosts(struct proxy *px)
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
    return upstream_hosts_new(c->upstream_urls, c->n_upstreams, &o);
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

    /* Before any loop or thread exists: libevent's locks, jansson's hash
     * seed (computed once, not raced by the first objects of two threads). */
    evthread_use_pthreads();
    json_object_seed(0);
    unsigned nworkers =
        px->cfg.workers > 0 ? (unsigned)px->cfg.workers : proxy_workers_default_count();
    setup_metrics(px);
    struct upstream_hosts *hosts = setup_hosts(px);
    struct cm_conn_cap *cap = cm_conn_cap_new((unsigned)px->cfg.max_connections);
    struct health_ready *ready = health_ready_shared_new(px->cfg.n_upstreams);
    app.workers = proxy_workers_new(px, nworkers, hosts, cap, ready);
    app.base = event_base_new();
    int rc = 0;
    if (proxy_workers_listen(app.workers, err, sizeof err) != 0) {
        CM_ERROR(NULL, "startup_failed", "%s", err);
        rc = 1;
        goto out;
    }
    /* Signals are handled and the port file is written before the
     * "listening" line: whoever waits for that line may use both at once. */
    app.sigterm = evsignal_new(app.base, SIGTERM, signal_cb, &app);
    app.sigint = evsignal_new(app.base, SIGINT, signal_cb, &app);
    event_add(app.sigterm, NULL);
    event_add(app.sigint, NULL);
    struct proxy *first = proxy_workers_first(app.workers);
    if (px->cfg.port_file && cm_http_server_write_port_file(first->srv, px->cfg.port_file)) {
        CM_ERROR(NULL, "startup_failed", "cannot write LLM_PROXY_PORT_FILE %s", px->cfg.port_file);
        rc = 1;
        goto out;
    }
    cm_metric_set(cm_metrics_gauge(px->metrics, "llm_proxy_workers",
                                   "Event-loop threads serving requests (LLM_PROXY_WORKERS).",
                                   NULL),
                  NULL, nworkers);
    proxy_config_log(&px->cfg);
    CM_INFO(NULL, "listening", "host=%s port=%d upstream=%s hosts=%zu workers=%u version=%s",
            px->cfg.host, proxy_workers_port(app.workers),
            upstream_host_label(upstream_pool_host(first->pool, 0)),
            upstream_pool_size(first->pool), nworkers, PROJECT_VERSION);
    app.done = event_new(app.base, -1, 0, workers_done_cb, &app);
    if (proxy_workers_start(app.workers, app.done) != 0)
        rc = 1;
    event_base_dispatch(app.base);
    CM_INFO(NULL, "stopped", "exiting");

out:
    proxy_workers_free(app.workers); /* joins the threads first */
    if (app.sigterm)
        event_free(app.sigterm);
    if (app.sigint)
        event_free(app.sigint);
    if (app.done)
        event_free(app.done);
    event_base_free(app.base);
    upstream_hosts_free(hosts);
    cm_conn_cap_free(cap);
    health_ready_shared_free(ready);
    cm_metrics_free(px->metrics);
    proxy_config_free(&px->cfg);
    chat_policy_reset();
    curl_global_cleanup();
    return rc;
}

/*
 * memory_worker: durable summarise-and-embed pipeline from Redis to
 * PostgreSQL through llm_proxy.
 *
 * Threads: the main thread runs the HTTP endpoint (health, readiness,
 * metrics, on-demand passes) on a libevent loop; WORKER_CONCURRENCY worker
 * threads run the pipeline with their own Redis, PostgreSQL and HTTP
 * connections; one monitor thread keeps readiness current.
 * SIGTERM/SIGINT: stop claiming, finish the chunk in progress, give back
 * leased chunks not started, exit 0.
 */
#include "cm_alloc.h"
#include "cm_http_probe.h"
#include "cm_log.h"
#include "pipeline.h"
#include "store.h"
#include "worker_config.h"
#include "worker_http.h"
#include "worker_metrics.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(
        out,
        "Usage: memory_worker [--help] [--version] [--healthcheck]\n"
        "       memory_worker --replay-dead [--user ID]\n"
        "\n"
        "Takes each user's chat messages from the Redis list user:{user_id}:messages, stores\n"
        "them in PostgreSQL as chunks, asks llm_proxy for a summary and an embedding of each\n"
        "chunk and stores both as a memory. HTTP: /health, /ready, /metrics, POST /v1/process,\n"
        "POST /v1/replay-dead[?user=ID].\n"
        "\n"
        "Options:\n"
        "  --help          show this help and exit\n"
        "  --version       print the version and exit\n"
        "  --healthcheck   GET /health on MEMORY_WORKER_PORT; exit 0 when healthy\n"
        "  --replay-dead   put dead chunks back to pending (all, or --user ID), then exit\n"
        "  --user ID       restrict --replay-dead to one user\n"
        "\n");
    worker_config_help(out);
    fprintf(out, "\nExit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad "
                 "configuration.\n");
}

static int replay_dead(const struct worker_config *cfg, const char *user)
{
    char err[300];
    char *ci = worker_config_pg_conninfo(cfg);
    struct store *st = store_connect(ci, err, sizeof err);
    free(ci);
    if (!st) {
        fprintf(stderr, "memory_worker: %s\n", err);
        return 1;
    }
    int rc = 1;
    if (store_migrate(st, cfg->embedding_dim, cfg->fts_config, err, sizeof err) != 0) {
        fprintf(stderr, "memory_worker: %s\n", err);
    } else {
        long long n = store_replay_dead(st, user);
        if (n >= 0) {
            printf("replayed %lld dead chunk(s)%s%s\n", n, user ? " of user " : "",
                   user ? user : "");
            rc = 0;
        }
    }
    store_free(st);
    return rc;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    CM_INFO(NULL, "shutdown", "signal %d: finishing chunks in progress", (int)sig);
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},        {"version", no_argument, NULL, 'V'},
        {"healthcheck", no_argument, NULL, 'H'}, {"replay-dead", no_argument, NULL, 'R'},
        {"user", required_argument, NULL, 'u'},  {NULL, 0, NULL, 0}};
    int opt, do_health = 0, do_replay = 0;
    const char *user = NULL;
    while ((opt = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("memory_worker %s\n", PROJECT_VERSION);
            return 0;
        case 'H':
            do_health = 1;
            break;
        case 'R':
            do_replay = 1;
            break;
        case 'u':
            user = optarg;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || (user && !do_replay)) {
        fprintf(stderr, "memory_worker: unexpected arguments (see --help)\n");
        return 2;
    }
    static struct worker_config cfg;
    char err[512];
    if (worker_config_load(&cfg, NULL, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "memory_worker: configuration error: %s\n", err);
        return 2;
    }
    cm_log_init_names("memory_worker", cfg.log_level, cfg.log_format);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = 0;
    if (do_health || do_replay) {
        rc = do_health ? cm_http_probe_healthcheck(cfg.host, cfg.port) : replay_dead(&cfg, user);
        worker_config_free(&cfg);
        curl_global_cleanup();
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    cm_log_capture_libevent();
    worker_config_log(&cfg);

    /* Schema first: nothing is claimed before the tables exist. */
    char *ci = worker_config_pg_conninfo(&cfg);
    struct store *st = NULL;
    for (int tries = 0; !(st = store_connect(ci, err, sizeof err)); tries++) {
        if (tries >= 30)
            break;
        CM_WARN(NULL, "postgres_waiting", "%s; retrying", err);
        sleep(1);
    }
    free(ci);
    if (!st || store_migrate(st, cfg.embedding_dim, cfg.fts_config, err, sizeof err) != 0) {
        CM_ERROR(NULL, "startup_failed", "%s", err);
        store_free(st);
        worker_config_free(&cfg);
        curl_global_cleanup();
        return 1;
    }
    /* The stored vectors' dimension must be EMBEDDING_DIM: otherwise no
     * memory could be stored or searched. The worker still serves (/ready
     * 503 with the reason, claiming goes on) so the mistake is visible. */
    char schema_err[512] = "";
    long long stored_dim = -1;
    if (store_embedding_dim(st, &stored_dim) != 0) {
        snprintf(schema_err, sizeof schema_err, "cannot read the dimension of memories.embedding");
    } else if (stored_dim != cfg.embedding_dim) {
        snprintf(schema_err, sizeof schema_err,
                 "EMBEDDING_DIM=%lld but memories.embedding is vector(%lld): set EMBEDDING_DIM to "
                 "%lld (the model the memories were made with), or migrate the column (README, "
                 "\"Changing the embedding model\")",
                 cfg.embedding_dim, stored_dim, stored_dim);
        CM_ERROR(NULL, "config_error", "%s; /ready is 503 and no chunk is processed", schema_err);
    }
    store_free(st);

    wm_init();
    struct event_base *base = event_base_new();
    static struct pipeline p;
    pipeline_init(&p, &cfg);
    if (schema_err[0])
        pipeline_set_schema_error(&p, schema_err);
    struct worker_http *wh = worker_http_new(base, &p, &cfg, err, sizeof err);
    if (!wh) {
        CM_ERROR(NULL, "startup_failed", "%s", err);
        rc = 1;
        goto out;
    }
    if (cfg.port_file && worker_http_write_port_file(wh, cfg.port_file) != 0) {
        CM_ERROR(NULL, "startup_failed", "cannot write MEMORY_WORKER_PORT_FILE %s", cfg.port_file);
        rc = 1;
        goto out;
    }
    /* Before "listening": a SIGTERM sent as soon as we answer is handled. */
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    pthread_t *threads = cm_xcalloc((size_t)cfg.concurrency, sizeof *threads);
    for (long long i = 0; i < cfg.concurrency; i++)
        pthread_create(&threads[i], NULL, pipeline_thread_main, &p);
    CM_INFO(NULL, "listening", "host=%s port=%d threads=%lld llm_proxy=%s version=%s", cfg.host,
            worker_http_port(wh), cfg.concurrency, cfg.llm_proxy_url, PROJECT_VERSION);

    event_base_dispatch(base);

    pipeline_stop(&p);
    for (long long i = 0; i < cfg.concurrency; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    event_free(sigterm);
    event_free(sigint);
    CM_INFO(NULL, "stopped", "all chunks finished or released");
out:
    worker_http_free(wh);
    pipeline_deinit(&p);
    event_base_free(base);
    wm_free();
    worker_config_free(&cfg);
    curl_global_cleanup();
    libevent_global_shutdown();
    return rc;
}

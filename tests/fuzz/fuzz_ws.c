/* libFuzzer: the real WebSocket session code (ws_conn transport + ws_chat
 * protocol, the same objects llm_proxy runs) over a socketpair on a
 * libevent loop. The input is what a client sends after the handshake,
 * written in two pieces (the first byte picks the cut, so frames and
 * messages straddle reads) with the loop run in between; the server's
 * output is read and discarded; then the client goes away and everything
 * is torn down. Chat requests start real upstream transfers against a
 * closed port and are cancelled at teardown. */
#include "ws_chat.h"

#include "cm_log.h"

#include <curl/curl.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct proxy px;

static const char *fuzz_env(const char *name, void *ctx)
{
    (void)ctx;
    if (strcmp(name, "OLLAMA_URL_INTERNAL") == 0)
        return "http://127.0.0.1:9";
    if (strcmp(name, "WS_MAX_MESSAGE_BYTES") == 0)
        return "64KiB";
    if (strcmp(name, "LOG_LEVEL") == 0)
        return "error";
    return NULL;
}

static void setup(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char err[256];
    if (proxy_config_load(&px.cfg, fuzz_env, NULL, err, sizeof err) != 0)
        abort();
    cm_log_init("fuzz_ws", CM_LOG_ERROR, CM_LOG_TEXT);
    px.base = event_base_new();
    static const double buckets[] = {0.1, 1};
    px.metrics = cm_metrics_new();
    /* A pool of one host nobody listens on: a chat that gets this far fails
     * as an upstream connect error, the session's own failure path. */
    struct upstream_pool_opts po = {
        .refresh_interval_s = 3600,
        .fail_threshold = 1000000,
        .backoff_min_s = 3600,
        .backoff_max_s = 3600,
        .connect_timeout_s = 1,
        .max_upstream = 4,
        .queue_size = 4,
        .queue_timeout_s = 1,
        .m_requests = cm_metrics_counter(px.metrics, "up_requests", "", "host,route,status"),
        .m_in_flight = cm_metrics_gauge(px.metrics, "up_in_flight", "", "host"),
        .m_healthy = cm_metrics_gauge(px.metrics, "up_healthy", "", "host"),
        .m_failovers = cm_metrics_counter(px.metrics, "up_failovers", "", NULL)};
    px.pool = upstream_pool_new(
        px.base, upstream_hosts_new(px.cfg.upstream_urls, px.cfg.n_upstreams, &po), 0);
    px.m_ttft = cm_metrics_histogram(px.metrics, "ttft", "", "route", buckets, 2);
    px.m_upstream_errors = cm_metrics_counter(px.metrics, "upstream_errors", "", "route,kind");
    px.m_tokens = cm_metrics_counter(px.metrics, "tokens", "", "type");
    px.m_ws_connections = cm_metrics_gauge(px.metrics, "ws", "", NULL);
    px.m_queue = cm_metrics_gauge(px.metrics, "queue", "", NULL);
}

static void release(void *arg)
{
    bufferevent_free(arg);
}

/* Runs the loop a few rounds, discarding what the server wrote. */
static void pump(int peer)
{
    char sink[65536];
    for (int i = 0; i < 6; i++) {
        event_base_loop(px.base, EVLOOP_NONBLOCK);
        while (read(peer, sink, sizeof sink) > 0)
            ;
    }
}

/* Writes what the server takes; gives up when it stops reading (closing). */
static void write_all(int peer, const uint8_t *p, size_t n)
{
    int stuck = 0;
    while (n > 0 && stuck < 4) {
        ssize_t w = send(peer, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            stuck++;
            pump(peer); /* socket buffer full: let the server read */
            continue;
        }
        stuck = 0;
        p += w;
        n -= (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!px.base)
        setup();
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        return 0;
    evutil_make_socket_nonblocking(fds[0]);
    evutil_make_socket_nonblocking(fds[1]);
    struct bufferevent *bev = bufferevent_socket_new(px.base, fds[0], BEV_OPT_CLOSE_ON_FREE);
    ws_chat_attach(&px, bev, release, bev);
    size_t cut = size ? data[0] % (size + 1) : 0;
    write_all(fds[1], data, cut);
    pump(fds[1]);
    write_all(fds[1], data + cut, size - cut);
    pump(fds[1]);
    close(fds[1]); /* the client goes away */
    pump(-1);
    ws_chat_abort_all(&px);
    pump(-1);
    if (px.ws_sessions || px.ws_count)
        abort(); /* a session outlived its connection */
    return 0;
}

/* proxy_config: llm_proxy's configuration table (see proxy_config.h). */
#include "proxy_config.h"

#include "cm_alloc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TABLE(cfg)                                                                                 \
    {                                                                                              \
        {"LLM_PROXY_HOST", CM_CFG_STRING,         "0.0.0.0", 0, 0, NULL, 0,                        \
         &(cfg)->host,     "Address to listen on"},                                                \
            {"LLM_PROXY_PORT",                                                                     \
             CM_CFG_INT,                                                                           \
             "8000",                                                                               \
             0,                                                                                    \
             65535,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->port,                                                                         \
             "TCP port (0 = any free port)"},                                                      \
            {"LLM_PROXY_PORT_FILE",                                                                \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->port_file,                                                                    \
             "Write the bound port to this file once listening"},                                  \
            {"LLM_PROXY_WORKERS",                                                                  \
             CM_CFG_INT,                                                                           \
             "0",                                                                                  \
             0,                                                                                    \
             PROXY_MAX_WORKERS,                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->workers,                                                                      \
             "Event-loop threads, each serving the port (SO_REUSEPORT) with its own upstream "     \
             "clients (0 = one per CPU available to the process)"},                                \
            {"OLLAMA_URL_INTERNAL",                                                                \
             CM_CFG_URL,                                                                           \
             "http://ollama:11434",                                                                \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ollama_url,                                                                   \
             "Base URL of the Ollama server, or a comma-separated list of them (requests are "     \
             "routed by model, load and health)"},                                                 \
            {"CHAT_TIMEOUT",                                                                       \
             CM_CFG_SECONDS,                                                                       \
             "60",                                                                                 \
             0.001,                                                                                \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->chat_timeout,                                                                 \
             "Chat: whole non-stream request; streams: first byte and each gap (seconds)"},        \
            {"EMBEDDINGS_TIMEOUT",                                                                 \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0.001,                                                                                \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->embeddings_timeout,                                                           \
             "Whole embeddings request (seconds)"},                                                \
            {"CONNECT_TIMEOUT",                                                                    \
             CM_CFG_SECONDS,                                                                       \
             "5",                                                                                  \
             0.001,                                                                                \
             600,                                                                                  \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->connect_timeout,                                                              \
             "Connecting to Ollama (seconds)"},                                                    \
            {"LLM_PROXY_IDLE_TIMEOUT",                                                             \
             CM_CFG_SECONDS,                                                                       \
             "60",                                                                                 \
             0.001,                                                                                \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->idle_timeout,                                                                 \
             "Client connection read/write inactivity limit (seconds)"},                           \
            {"SSE_KEEPALIVE_INTERVAL",                                                             \
             CM_CFG_SECONDS,                                                                       \
             "15",                                                                                 \
             0.01,                                                                                 \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->sse_keepalive,                                                                \
             "SSE comment sent while the upstream is silent (seconds)"},                           \
            {"SHUTDOWN_GRACE",                                                                     \
             CM_CFG_SECONDS,                                                                       \
             "10",                                                                                 \
             0,                                                                                    \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->shutdown_grace,                                                               \
             "On SIGTERM, time in-flight requests get to finish (seconds)"},                       \
            {"MAX_BODY_BYTES",                                                                     \
             CM_CFG_BYTES,                                                                         \
             "16MiB",                                                                              \
             1024,                                                                                 \
             1073741824.0,                                                                         \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->max_body_bytes,                                                               \
             "Largest accepted request body (413 above)"},                                         \
            {"LLM_PROXY_MAX_HEADER_BYTES",                                                         \
             CM_CFG_BYTES,                                                                         \
             "64KiB",                                                                              \
             1024,                                                                                 \
             16777216,                                                                             \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->max_header_bytes,                                                             \
             "Largest request line plus headers"},                                                 \
            {"LLM_PROXY_API_KEY",                                                                  \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             1,                                                                                    \
             &(cfg)->api_key,                                                                      \
             "When set, /v1/* requires Authorization: Bearer <key>"},                              \
            {"LLM_PROXY_ALLOWED_ORIGINS",                                                          \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->allowed_origins,                                                              \
             "Browser origins allowed (CORS, WebSocket): comma list or *; unset = loopback "       \
             "pages only, and only while the proxy is addressed as localhost/127.x/[::1] (DNS "    \
             "rebinding)"},                                                                        \
            {"LLM_PROXY_MAX_CONNECTIONS",                                                          \
             CM_CFG_INT,                                                                           \
             "16384",                                                                              \
             0,                                                                                    \
             10000000,                                                                             \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->max_connections,                                                              \
             "Open client connections at most, all workers together (0 = no cap)"},                \
            {"LLM_PROXY_REQUEST_READ_TIMEOUT",                                                     \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0.01,                                                                                 \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->request_read_timeout,                                                         \
             "A request's line, headers and body must all arrive within this (seconds)"},          \
            {"LLM_PROXY_MAX_UPSTREAM",                                                             \
             CM_CFG_INT,                                                                           \
             "64",                                                                                 \
             1,                                                                                    \
             100000,                                                                               \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->max_upstream,                                                                 \
             "Upstream requests running at once, per Ollama host and worker; more wait in a "      \
             "queue"},                                                                             \
            {"LLM_PROXY_QUEUE_SIZE",                                                               \
             CM_CFG_INT,                                                                           \
             "256",                                                                                \
             0,                                                                                    \
             1000000,                                                                              \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->queue_size,                                                                   \
             "Requests that may wait for an upstream slot (per host and worker); beyond it 429, "  \
             "Retry-After"},                                                                       \
            {"LLM_PROXY_QUEUE_TIMEOUT",                                                            \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0.001,                                                                                \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->queue_timeout,                                                                \
             "Longest wait for an upstream slot; then 503 with Retry-After"},                      \
            {"WS_MAX_INFLIGHT",                                                                    \
             CM_CFG_INT,                                                                           \
             "4",                                                                                  \
             1,                                                                                    \
             1024,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ws_max_inflight,                                                              \
             "WebSocket: chat requests in flight per connection"},                                 \
            {"WS_PING_INTERVAL",                                                                   \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0.01,                                                                                 \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ws_ping_interval,                                                             \
             "WebSocket: ping idle connections this often; no pong by the next ping closes"},      \
            {"WS_MAX_MESSAGE_BYTES",                                                               \
             CM_CFG_BYTES,                                                                         \
             "1MiB",                                                                               \
             1024,                                                                                 \
             268435456,                                                                            \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ws_max_message_bytes,                                                         \
             "WebSocket: largest message accepted (close 1009 above)"},                            \
            {"WS_SEND_TIMEOUT",                                                                    \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0.01,                                                                                 \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ws_send_timeout,                                                              \
             "WebSocket: a client with a full output queue that reads nothing this long: 1008"},   \
            {"LOG_LEVEL",                                                                          \
             CM_CFG_ENUM,                                                                          \
             "info",                                                                               \
             0,                                                                                    \
             0,                                                                                    \
             cm_log_level_names,                                                                   \
             0,                                                                                    \
             &(cfg)->log_level,                                                                    \
             "debug, info, warn or error"},                                                        \
            {"LOG_FORMAT",                                                                         \
             CM_CFG_ENUM,                                                                          \
             "text",                                                                               \
             0,                                                                                    \
             0,                                                                                    \
             cm_log_format_names,                                                                  \
             0,                                                                                    \
             &(cfg)->log_format,                                                                   \
             "text (logfmt) or json"},                                                             \
            {"LLM_PROXY_MAX_BODY_MEMORY",                                                          \
             CM_CFG_BYTES,                                                                         \
             "256MiB",                                                                             \
             4096,                                                                                 \
             68719476736.0,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->max_body_memory,                                                              \
             "Request bodies, WebSocket messages and their parsed/translated forms in memory at "  \
             "once, all requests together (503 overloaded / close 1013 above)"},                   \
            {"READY_CACHE_TTL",                                                                    \
             CM_CFG_SECONDS,                                                                       \
             "1",                                                                                  \
             0,                                                                                    \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ready_cache_ttl,                                                              \
             "/ready reuses one upstream probe result this long (seconds)"},                       \
            {"READY_WAIT_MAX",                                                                     \
             CM_CFG_SECONDS,                                                                       \
             "1",                                                                                  \
             0,                                                                                    \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->ready_wait_max,                                                               \
             "/ready with no probe result yet waits this long for the probe (seconds), then 503"}, \
            {"LLM_PROXY_ALLOWED_OPTIONS",                                                          \
             CM_CFG_STRING,                                                                        \
             PROXY_DEFAULT_ALLOWED_OPTIONS,                                                        \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->allowed_options,                                                              \
             "Ollama 'options' keys clients may set (comma list, * = any); others 400"},           \
            {"LLM_PROXY_MAX_NUM_CTX",                                                              \
             CM_CFG_INT,                                                                           \
             "32768",                                                                              \
             1,                                                                                    \
             100000000,                                                                            \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->max_num_ctx,                                                                  \
             "Largest options.num_ctx a client may ask for (400 above)"},                          \
            {"LLM_PROXY_KEEP_ALIVE_MAX",                                                           \
             CM_CFG_SECONDS,                                                                       \
             "30m",                                                                                \
             0,                                                                                    \
             31536000,                                                                             \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->keep_alive_max,                                                               \
             "Longest keep_alive passed upstream; longer or negative (forever) is lowered to "     \
             "this "                                                                               \
             "(seconds)"},                                                                         \
            {"UPSTREAM_REFRESH_INTERVAL",                                                          \
             CM_CFG_SECONDS,                                                                       \
             "10",                                                                                 \
             0.05,                                                                                 \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->upstream_refresh_interval,                                                    \
             "How often each Ollama host's installed (/api/tags) and loaded (/api/ps) models are " \
             "refreshed (seconds)"},                                                               \
            {"UPSTREAM_FAIL_THRESHOLD",                                                            \
             CM_CFG_INT,                                                                           \
             "3",                                                                                  \
             1,                                                                                    \
             1000,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->upstream_fail_threshold,                                                      \
             "Consecutive failures (connect, timeout, 5xx) that mark an Ollama host down"},        \
            {"UPSTREAM_BACKOFF_MIN",                                                               \
             CM_CFG_SECONDS,                                                                       \
             "1",                                                                                  \
             0.01,                                                                                 \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->upstream_backoff_min,                                                         \
             "First wait before a down host is probed (GET /api/version); doubles per failed "     \
             "probe (seconds)"},                                                                   \
            {"UPSTREAM_BACKOFF_MAX",                                                               \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0.01,                                                                                 \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(cfg)->upstream_backoff_max,                                                         \
             "Longest wait between two probes of a down host (seconds)"},                          \
    }

static void free_upstreams(struct proxy_config *cfg)
{
    for (size_t i = 0; i < cfg->n_upstreams; i++)
        free(cfg->upstream_urls[i]);
    free(cfg->upstream_urls);
    cfg->upstream_urls = NULL;
    cfg->n_upstreams = 0;
}

/* OLLAMA_URL_INTERNAL: one URL or a comma-separated list (blanks around
 * items ignored); each http(s)://, no blanks inside, no duplicates. */
static int split_upstreams(struct proxy_config *cfg, char *err, size_t errlen)
{
    const char *s = cfg->ollama_url;
    cfg->upstream_urls = cm_xcalloc(PROXY_MAX_UPSTREAM_HOSTS, sizeof *cfg->upstream_urls);
    while (s && *s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        while (len && isspace((unsigned char)*s))
            s++, len--;
        while (len && isspace((unsigned char)s[len - 1]))
            len--;
        while (len > 8 && s[len - 1] == '/')
            len--;
        char *u = cm_xstrndup(s, len);
        const char *why = NULL;
        if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
            why = "must start with http:// or https://";
        else if (strlen(u) <= 8 || strpbrk(u, " \t\r\n"))
            why = "is not a URL";
        else if (cfg->n_upstreams >= PROXY_MAX_UPSTREAM_HOSTS)
            why = "is one host too many (at most 64)";
        for (size_t i = 0; !why && i < cfg->n_upstreams; i++)
            if (strcasecmp(cfg->upstream_urls[i], u) == 0)
                why = "is listed twice";
        if (why) {
            snprintf(err, errlen, "OLLAMA_URL_INTERNAL: \"%.200s\" %s", u, why);
            free(u);
            return -1;
        }
        cfg->upstream_urls[cfg->n_upstreams++] = u;
        s = end ? end + 1 : NULL;
    }
    if (cfg->n_upstreams == 0) {
        snprintf(err, errlen, "OLLAMA_URL_INTERNAL: no URL");
        return -1;
    }
    if (cfg->upstream_backoff_max < cfg->upstream_backoff_min) {
        snprintf(err, errlen, "UPSTREAM_BACKOFF_MAX: below UPSTREAM_BACKOFF_MIN");
        return -1;
    }
    return 0;
}

int proxy_config_load(struct proxy_config *cfg, cm_cfg_getenv_cb getenv_fn, void *ctx, char *err,
                      size_t errlen)
{
    const struct cm_cfg table[] = TABLE(cfg);
    if (cm_cfg_load(table, sizeof table / sizeof table[0], getenv_fn, ctx, err, errlen) != 0)
        return -1;
    char why[200];
    cfg->origins = cm_origin_policy_new(cfg->allowed_origins, why, sizeof why);
    if (!cfg->origins) {
        snprintf(err, errlen, "LLM_PROXY_ALLOWED_ORIGINS: %s", why);
        proxy_config_free(cfg);
        return -1;
    }
    if (split_upstreams(cfg, err, errlen) != 0) {
        proxy_config_free(cfg);
        return -1;
    }
    return 0;
}

void proxy_config_free(struct proxy_config *cfg)
{
    const struct cm_cfg table[] = TABLE(cfg);
    cm_cfg_free(table, sizeof table / sizeof table[0]);
    cm_origin_policy_free(cfg->origins);
    cfg->origins = NULL;
    free_upstreams(cfg);
}

void proxy_config_help(FILE *out)
{
    struct proxy_config dummy;
    memset(&dummy, 0, sizeof dummy);
    const struct cm_cfg table[] = TABLE(&dummy);
    cm_cfg_print_help(out, table, sizeof table / sizeof table[0]);
}

void proxy_config_log(struct proxy_config *cfg)
{
    const struct cm_cfg table[] = TABLE(cfg);
    cm_cfg_log_effective(table, sizeof table / sizeof table[0]);
}

/*
 * proxy_config: llm_proxy's settings, one table (see cm_config.h).
 * Ownership: strings and the origin policy belong to the struct; free with proxy_config_free().
 */
#ifndef PROXY_CONFIG_H
#define PROXY_CONFIG_H

#include "cm_config.h"
#include "cm_log.h"
#include "cm_origin.h"

/* Ollama "options" keys clients may set unless LLM_PROXY_ALLOWED_OPTIONS
 * says otherwise: sampling, the output length and the context size. */
#define PROXY_DEFAULT_ALLOWED_OPTIONS                                                              \
    "temperature,top_k,top_p,min_p,typical_p,repeat_last_n,repeat_penalty,presence_penalty,"       \
    "frequency_penalty,seed,stop,num_predict,num_ctx"

struct proxy_config {
    char *host;
    long long port;
    char *port_file;
    long long workers; /* LLM_PROXY_WORKERS; 0 = one per CPU available */
    char *ollama_url;
    double chat_timeout;
    double embeddings_timeout;
    double connect_timeout;
    double idle_timeout;
    double sse_keepalive;
    double shutdown_grace;
    long long max_body_bytes;
    long long max_header_bytes;
    char *api_key;
    char *allowed_origins;
    struct cm_origin_policy *origins; /* parsed allowed_origins, owned */
    long long max_connections;
    double request_read_timeout;
    long long max_upstream;
    long long queue_size;
    double queue_timeout;
    long long ws_max_inflight;
    double ws_ping_interval;
    long long ws_max_message_bytes;
    double ws_send_timeout;
    char *log_level;
    char *log_format;
    long long max_body_memory;
    double ready_cache_ttl;
    double ready_wait_max;
    char *allowed_options;
    long long max_num_ctx;
    double keep_alive_max;
    double upstream_refresh_interval;
    long long upstream_fail_threshold;
    double upstream_backoff_min;
    double upstream_backoff_max;
    char **upstream_urls; /* OLLAMA_URL_INTERNAL split on commas, owned */
    size_t n_upstreams;
};

#define PROXY_MAX_UPSTREAM_HOSTS 64
#define PROXY_MAX_WORKERS 256

/* Returns 0, or -1 with a reason naming the variable. getenv_fn NULL = getenv. */
int proxy_config_load(struct proxy_config *cfg, cm_cfg_getenv_cb getenv_fn, void *ctx, char *err,
                      size_t errlen);
void proxy_config_free(struct proxy_config *cfg);
void proxy_config_help(FILE *out);
void proxy_config_log(struct proxy_config *cfg);

#endif

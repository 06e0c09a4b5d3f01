/*
 * worker_config: memory_worker's settings, one table (see cm_config.h).
 * Ownership: strings belong to the struct; free with worker_config_free().
 */
#ifndef WORKER_CONFIG_H
#define WORKER_CONFIG_H

#include "cm_config.h"

struct worker_config {
    char *llm_proxy_url;
    char *llm_proxy_api_key;
    char *summary_model;
    char *embedding_model;
    long long embedding_dim;
    char *summary_prompt;
    double api_timeout;
    char *redis_url;
    char *database_url;
    char *pg_host;
    long long pg_port;
    char *pg_db;
    char *pg_user;
    char *pg_password;
    double poll_interval;
    long long concurrency;
    long long embed_batch;
    long long chunk_max_messages;
    long long chunk_max_chars;
    long long max_message_bytes;
    double retry_base;
    double retry_max;
    long long max_attempts;
    double lease_timeout;
    long long circuit_5xx_threshold;
    long long num_ctx_min;
    long long num_ctx_max;
    char *host;
    char *api_key;
    char *fts_config;
    long long api_threads;
    long long api_queue;
    double search_embed_timeout;
    long long search_ef_search;
    long long port;
    char *port_file;
    double shutdown_grace;
    char *log_level;
    char *log_format;
    char *worker_id;
};

int worker_config_load(struct worker_config *cfg, cm_cfg_getenv_cb getenv_fn, void *ctx, char *err,
                       size_t errlen);
void worker_config_free(struct worker_config *cfg);
void worker_config_help(FILE *out);
void worker_config_log(struct worker_config *cfg);

/* libpq connection string from DATABASE_URL or POSTGRES_*; caller frees. */
char *worker_config_pg_conninfo(const struct worker_config *cfg);

#endif

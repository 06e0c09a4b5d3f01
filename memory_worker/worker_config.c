/* worker_config: memory_worker's configuration table (see worker_config.h). */
#include "worker_config.h"

#include "cm_alloc.h"
#include "cm_log.h"
#include "store.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TABLE(c)                                                                                   \
    {                                                                                              \
        {"LLM_PROXY_URL",                                                                          \
         CM_CFG_URL,                                                                               \
         "http://llm_proxy:8000",                                                                  \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         0,                                                                                        \
         &(c)->llm_proxy_url,                                                                      \
         "Base URL of llm_proxy"},                                                                 \
            {"LLM_PROXY_API_KEY",                                                                  \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             1,                                                                                    \
             &(c)->llm_proxy_api_key,                                                              \
             "Bearer key for llm_proxy, if it requires one"},                                      \
            {"SUMMARY_MODEL",                                                                      \
             CM_CFG_STRING,                                                                        \
             "qwen3:32b",                                                                          \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->summary_model,                                                                  \
             "Chat model that writes the summaries"},                                              \
            {"EMBEDDING_MODEL",     CM_CFG_STRING,    "bge-m3", 0, 0, NULL, 0,                     \
             &(c)->embedding_model, "Embedding model"},                                            \
            {"EMBEDDING_DIM",                                                                      \
             CM_CFG_INT,                                                                           \
             "1024",                                                                               \
             1,                                                                                    \
             65536,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->embedding_dim,                                                                  \
             "Expected embedding size; another size is a configuration error"},                    \
            {"SUMMARY_PROMPT",                                                                     \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->summary_prompt,                                                                 \
             "System prompt for summaries (a built-in prompt when unset)"},                        \
            {"API_TIMEOUT",                                                                        \
             CM_CFG_SECONDS,                                                                       \
             "30.0",                                                                               \
             0.01,                                                                                 \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->api_timeout,                                                                    \
             "Limit for each llm_proxy call (seconds)"},                                           \
            {"REDIS_URL",                                                                          \
             CM_CFG_STRING,                                                                        \
             "redis://redis:6379/0",                                                               \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             1,                                                                                    \
             &(c)->redis_url,                                                                      \
             "Redis holding user:{user_id}:messages lists"},                                       \
            {"DATABASE_URL",                                                                       \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             1,                                                                                    \
             &(c)->database_url,                                                                   \
             "PostgreSQL URL; when set, POSTGRES_* are ignored"},                                  \
            {"POSTGRES_HOST", CM_CFG_STRING,    "postgres", 0, 0, NULL, 0,                         \
             &(c)->pg_host,   "PostgreSQL host"},                                                  \
            {"POSTGRES_PORT", CM_CFG_INT,       "5432", 1, 65535, NULL, 0,                         \
             &(c)->pg_port,   "PostgreSQL port"},                                                  \
            {"POSTGRES_DB", CM_CFG_STRING, "memory", 0, 0, NULL, 0, &(c)->pg_db, "Database name"}, \
            {"POSTGRES_USER", CM_CFG_STRING,  "memory", 0, 0, NULL, 0,                             \
             &(c)->pg_user,   "Database user"},                                                    \
            {"POSTGRES_PASSWORD", CM_CFG_STRING,      NULL, 0, 0, NULL, 1,                         \
             &(c)->pg_password,   "Database password"},                                            \
            {"POLL_INTERVAL",                                                                      \
             CM_CFG_SECONDS,                                                                       \
             "5",                                                                                  \
             0.01,                                                                                 \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->poll_interval,                                                                  \
             "Idle wait between passes over Redis (seconds)"},                                     \
            {"WORKER_CONCURRENCY",                                                                 \
             CM_CFG_INT,                                                                           \
             "4",                                                                                  \
             0,                                                                                    \
             256,                                                                                  \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->concurrency,                                                                    \
             "Chunks processed at once (threads; 0 = only on POST /v1/process)"},                  \
            {"EMBED_BATCH",                                                                        \
             CM_CFG_INT,                                                                           \
             "8",                                                                                  \
             1,                                                                                    \
             256,                                                                                  \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->embed_batch,                                                                    \
             "Chunks a thread leases at once; their summaries share one embeddings call"},         \
            {"CHUNK_MAX_MESSAGES",                                                                 \
             CM_CFG_INT,                                                                           \
             "20",                                                                                 \
             1,                                                                                    \
             10000,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->chunk_max_messages,                                                             \
             "Most messages in one chunk"},                                                        \
            {"CHUNK_MAX_CHARS",                                                                    \
             CM_CFG_INT,                                                                           \
             "12000",                                                                              \
             100,                                                                                  \
             10000000,                                                                             \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->chunk_max_chars,                                                                \
             "Most characters of content in one chunk (a longer message is a chunk alone)"},       \
            {"MAX_MESSAGE_BYTES",                                                                  \
             CM_CFG_BYTES,                                                                         \
             "1MiB",                                                                               \
             1024,                                                                                 \
             268435456,                                                                            \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->max_message_bytes,                                                              \
             "Larger Redis elements are kept as dead messages"},                                   \
            {"RETRY_BASE",                                                                         \
             CM_CFG_SECONDS,                                                                       \
             "5",                                                                                  \
             0.001,                                                                                \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->retry_base,                                                                     \
             "First retry delay; doubles per attempt, with jitter (seconds)"},                     \
            {"RETRY_MAX", CM_CFG_SECONDS,  "600",                                                  \
             0.001,       86400,           NULL,                                                   \
             0,           &(c)->retry_max, "Longest retry delay (seconds)"},                       \
            {"MAX_ATTEMPTS",                                                                       \
             CM_CFG_INT,                                                                           \
             "5",                                                                                  \
             1,                                                                                    \
             1000,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->max_attempts,                                                                   \
             "Failed attempts before a chunk is dead"},                                            \
            {"CIRCUIT_5XX_THRESHOLD",                                                              \
             CM_CFG_INT,                                                                           \
             "5",                                                                                  \
             1,                                                                                    \
             1000,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->circuit_5xx_threshold,                                                          \
             "Consecutive upstream 5xx that open the circuit breaker (an outage: no attempts "     \
             "spent)"},                                                                            \
            {"LEASE_TIMEOUT",                                                                      \
             CM_CFG_SECONDS,                                                                       \
             "300",                                                                                \
             1,                                                                                    \
             86400,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->lease_timeout,                                                                  \
             "A leased chunk or Redis claim is taken over after this (seconds)"},                  \
            {"SUMMARY_NUM_CTX_MIN",                                                                \
             CM_CFG_INT,                                                                           \
             "4096",                                                                               \
             512,                                                                                  \
             1048576,                                                                              \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->num_ctx_min,                                                                    \
             "Smallest options.num_ctx sent with a summary request"},                              \
            {"SUMMARY_NUM_CTX_MAX",                                                                \
             CM_CFG_INT,                                                                           \
             "32768",                                                                              \
             512,                                                                                  \
             1048576,                                                                              \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->num_ctx_max,                                                                    \
             "Largest options.num_ctx sent with a summary request"},                               \
            {"MEMORY_WORKER_HOST",          CM_CFG_STRING, "0.0.0.0", 0, 0, NULL, 0, &(c)->host,   \
             "Address of the HTTP endpoint"},                                                      \
            {"MEMORY_WORKER_API_KEY",                                                              \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             1,                                                                                    \
             &(c)->api_key,                                                                        \
             "Bearer key for the /v1/ endpoints (memories API, /v1/process, /v1/replay-dead; "     \
             "unset: loopback clients only)"},                                                     \
            {"MEMORY_FTS_CONFIG",                                                                  \
             CM_CFG_STRING,                                                                        \
             "simple",                                                                             \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->fts_config,                                                                     \
             "PostgreSQL text search configuration of the memories' full-text index (simple, "     \
             "english, ...; a change rebuilds the index at start)"},                               \
            {"MEMORY_API_THREADS",                                                                 \
             CM_CFG_INT,                                                                           \
             "2",                                                                                  \
             1,                                                                                    \
             64,                                                                                   \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->api_threads,                                                                    \
             "Threads (each with its own PostgreSQL connection) serving the memories API"},        \
            {"MEMORY_API_QUEUE",                                                                   \
             CM_CFG_INT,                                                                           \
             "256",                                                                                \
             1,                                                                                    \
             100000,                                                                               \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->api_queue,                                                                      \
             "Memories API requests waiting for a thread; beyond, 429 with Retry-After"},          \
            {"MEMORY_SEARCH_EF_SEARCH",                                                            \
             CM_CFG_INT,                                                                           \
             "100",                                                                                \
             10,                                                                                   \
             1000,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->search_ef_search,                                                               \
             "Smallest hnsw.ef_search of a vector search (more: better recall, slower)"},          \
            {"MEMORY_SEARCH_EMBED_TIMEOUT",                                                        \
             CM_CFG_SECONDS,                                                                       \
             "10",                                                                                 \
             0.01,                                                                                 \
             600,                                                                                  \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->search_embed_timeout,                                                           \
             "Limit for embedding a search query through llm_proxy (seconds; hybrid searches "     \
             "then fall back to full text)"},                                                      \
            {"MEMORY_WORKER_PORT",                                                                 \
             CM_CFG_INT,                                                                           \
             "8001",                                                                               \
             0,                                                                                    \
             65535,                                                                                \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->port,                                                                           \
             "Port of the HTTP endpoint (0 = any free port)"},                                     \
            {"MEMORY_WORKER_PORT_FILE",                                                            \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->port_file,                                                                      \
             "Write the bound port to this file once listening"},                                  \
            {"SHUTDOWN_GRACE",                                                                     \
             CM_CFG_SECONDS,                                                                       \
             "30",                                                                                 \
             0,                                                                                    \
             3600,                                                                                 \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->shutdown_grace,                                                                 \
             "On SIGTERM, time to finish chunks in progress (seconds)"},                           \
            {"LOG_LEVEL",                                                                          \
             CM_CFG_ENUM,                                                                          \
             "info",                                                                               \
             0,                                                                                    \
             0,                                                                                    \
             cm_log_level_names,                                                                   \
             0,                                                                                    \
             &(c)->log_level,                                                                      \
             "debug, info, warn or error"},                                                        \
            {"LOG_FORMAT",                                                                         \
             CM_CFG_ENUM,                                                                          \
             "text",                                                                               \
             0,                                                                                    \
             0,                                                                                    \
             cm_log_format_names,                                                                  \
             0,                                                                                    \
             &(c)->log_format,                                                                     \
             "text (logfmt) or json"},                                                             \
            {"WORKER_ID",                                                                          \
             CM_CFG_STRING,                                                                        \
             NULL,                                                                                 \
             0,                                                                                    \
             0,                                                                                    \
             NULL,                                                                                 \
             0,                                                                                    \
             &(c)->worker_id,                                                                      \
             "Name of this replica in leases (hostname-pid when unset)"},                          \
    }

int worker_config_load(struct worker_config *cfg, cm_cfg_getenv_cb getenv_fn, void *ctx, char *err,
                       size_t errlen)
{
    const struct cm_cfg table[] = TABLE(cfg);
    if (cm_cfg_load(table, sizeof table / sizeof table[0], getenv_fn, ctx, err, errlen) != 0)
        return -1;
    if (cfg->num_ctx_min > cfg->num_ctx_max) {
        snprintf(err, errlen, "SUMMARY_NUM_CTX_MIN: %lld is above SUMMARY_NUM_CTX_MAX %lld",
                 cfg->num_ctx_min, cfg->num_ctx_max);
        return -1;
    }
    if (cfg->retry_base > cfg->retry_max) {
        snprintf(err, errlen, "RETRY_BASE: %g s is above RETRY_MAX %g s", cfg->retry_base,
                 cfg->retry_max);
        return -1;
    }
    if (strncmp(cfg->redis_url, "redis://", 8) != 0) {
        snprintf(err, errlen, "REDIS_URL: must start with redis://");
        return -1;
    }
    if (!store_fts_config_ok(cfg->fts_config)) {
        snprintf(err, errlen,
                 "MEMORY_FTS_CONFIG: must be the name of a text search configuration (letters, "
                 "digits, _), e.g. simple or english");
        return -1;
    }
    if (!cfg->worker_id || !*cfg->worker_id) {
        char host[128] = "worker";
        gethostname(host, sizeof host - 1);
        free(cfg->worker_id);
        cfg->worker_id = cm_xasprintf("%s-%d", host, (int)getpid());
    }
    return 0;
}

void worker_config_free(struct worker_config *cfg)
{
    const struct cm_cfg table[] = TABLE(cfg);
    cm_cfg_free(table, sizeof table / sizeof table[0]);
}

void worker_config_help(FILE *out)
{
    struct worker_config dummy;
    memset(&dummy, 0, sizeof dummy);
    const struct cm_cfg table[] = TABLE(&dummy);
    cm_cfg_print_help(out, table, sizeof table / sizeof table[0]);
}

void worker_config_log(struct worker_config *cfg)
{
    const struct cm_cfg table[] = TABLE(cfg);
    cm_cfg_log_effective(table, sizeof table / sizeof table[0]);
}

/* Quotes a value for a libpq keyword=value string. */
static void append_kv(char **out, const char *key, const char *value)
{
    if (!value)
        return;
    size_t len = strlen(*out);
    size_t need = len + strlen(key) + 2 * strlen(value) + 6;
    *out = cm_xrealloc(*out, need);
    char *p = *out + len;
    p += snprintf(p, need - len, "%s%s='", len ? " " : "", key);
    for (const char *v = value; *v; v++) {
        if (*v == '\'' || *v == '\\')
            *p++ = '\\';
        *p++ = *v;
    }
    *p++ = '\'';
    *p = '\0';
}

char *worker_config_pg_conninfo(const struct worker_config *cfg)
{
    if (cfg->database_url && *cfg->database_url)
        return cm_xstrdup(cfg->database_url);
    char *out = cm_xstrdup("");
    char port[16];
    snprintf(port, sizeof port, "%lld", cfg->pg_port);
    append_kv(&out, "host", cfg->pg_host);
    append_kv(&out, "port", port);
    append_kv(&out, "dbname", cfg->pg_db);
    append_kv(&out, "user", cfg->pg_user);
    append_kv(&out, "password", cfg->pg_password);
    append_kv(&out, "application_name", "memory_worker");
    append_kv(&out, "connect_timeout", "5");
    return out;
}

/*
 * chat_policy: the operator's limits on the Ollama controls clients pass
 * through (chat and embeddings): which "options" keys they may set
 * (LLM_PROXY_ALLOWED_OPTIONS), the largest num_ctx (LLM_PROXY_MAX_NUM_CTX)
 * and the longest keep_alive (LLM_PROXY_KEEP_ALIVE_MAX; longer or negative
 * values are lowered to it). One tenant must not be able to set, for
 * everyone on the shared Ollama host, a huge context, GPU placement or a
 * model pinned in memory forever.
 *
 * One process-wide policy, set once at start (chat_policy_set) before any
 * request and read by the translators of every transport (HTTP, WebSocket).
 * Ownership: the policy copies the key list; chat_policy_reset() frees it.
 */
#ifndef CHAT_POLICY_H
#define CHAT_POLICY_H

#include "proxy_error.h"

#include <jansson.h>

/* allowed: comma list of keys, "*" = any, NULL = PROXY_DEFAULT_ALLOWED_OPTIONS.
 * max_num_ctx: 0 = no limit. keep_alive_max_s < 0 = no limit. */
void chat_policy_set(const char *allowed, long long max_num_ctx, double keep_alive_max_s);
void chat_policy_reset(void);

/* 0, or -1 with a 400 in err naming the first refused key (param
 * "options.<key>"). options must be an object. */
int chat_policy_check_options(const json_t *options, struct proxy_error *err);

/* The keep_alive to send upstream for a client's value (number of seconds
 * or a duration string such as "5m", "1h30m", "-1"): new reference, lowered
 * to the maximum when longer or negative. NULL with a 400 in err when the
 * value is neither. */
json_t *chat_policy_keep_alive(const json_t *keep_alive, struct proxy_error *err);

#endif

/*
 * llm_client: memory_worker's calls to llm_proxy over HTTP (sync libcurl,
 * one client per thread, keep-alive reused): a summary per chunk through
 * /v1/chat/completions and one /v1/embeddings call per batch of summaries.
 *
 * Every failure is classified so the pipeline can react without looping:
 *   LLM_OUTAGE     llm_proxy (or Ollama behind it) is down for everyone:
 *                  connection refused, 502 upstream_unreachable, 503.
 *                  No attempt is spent; the circuit breaker opens.
 *   LLM_TRANSIENT  this call failed (timeout, 429, 5xx, empty or malformed
 *                  answer): retry with backoff, spending an attempt.
 *   LLM_CONFIG     the deployment is wrong (unknown model, 401/403, wrong
 *                  embedding size): loud log, /ready 503, slow retry.
 *
 * Ownership: *summary and *vectors are malloc'd; the caller frees them.
 */
#ifndef LLM_CLIENT_H
#define LLM_CLIENT_H

#include "worker_config.h"

#include <stddef.h>

enum llm_result { LLM_OK = 0, LLM_OUTAGE, LLM_TRANSIENT, LLM_CONFIG };

struct llm_client;

struct llm_client *llm_client_new(const struct worker_config *cfg);
void llm_client_free(struct llm_client *lc);

/* Builds the prompt from the chunk's messages (a JSON array text) and asks
 * for a summary with thinking off; thinking residue is stripped. */
enum llm_result llm_summarize(struct llm_client *lc, const char *request_id,
                              const char *messages_json, char **summary, double *seconds, char *err,
                              size_t errlen);

/* One call for n texts; *vectors receives n * EMBEDDING_DIM floats. */
enum llm_result llm_embed(struct llm_client *lc, const char *request_id, const char *const *texts,
                          size_t n, float **vectors, double *seconds, char *err, size_t errlen);

/* num_ctx for a prompt of chars characters: estimated tokens plus room for
 * the answer, rounded up to a power of two, clamped to [min, max]. */
long long llm_num_ctx(size_t chars, long long min, long long max);

/* The default summary system prompt. */
extern const char LLM_DEFAULT_SUMMARY_PROMPT[];

const char *llm_result_name(enum llm_result r);

#endif

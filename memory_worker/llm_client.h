/*
 * llm_client: memory_worker's calls to llm_proxy over HTTP (sync libcurl,
 * one client per thread, keep-alive reused): a summary per chunk through
 * /v1/chat/completions and one /v1/embeddings call per batch of summaries.
 *
 * Every failure is classified so the pipeline can react without looping:
 *   LLM_OUTAGE     llm_proxy (or Ollama behind it) is down for everyone:
 *                  connection refused, 502 upstream_unreachable, 503.
 *                  No attempt is spent; the circuit breaker opens.
 *   LLM_SERVER_ERROR  any other 5xx: like LLM_TRANSIENT, but the pipeline
 *                  counts consecutive ones (CIRCUIT_5XX_THRESHOLD) to
 *                  recognise an outage (a crash-looping Ollama answers 500).
 *   LLM_TRANSIENT  this call failed (timeout, 429, empty or malformed
 *                  answer, an invalid embeddings reply): retry with backoff,
 *                  spending an attempt.
 *   LLM_CONFIG     the deployment is wrong (unknown model, 401/403, wrong
 *                  embedding size): loud log, /ready 503, slow retry.
 *
 * Ownership: *summary and *vectors are malloc'd; the caller frees them.
 */
#ifndef LLM_CLIENT_H
#define LLM_CLIENT_H

#include "message.h"
#include "worker_config.h"

#include <jansson.h>
#include <stddef.h>

enum llm_result { LLM_OK = 0, LLM_OUTAGE, LLM_SERVER_ERROR, LLM_TRANSIENT, LLM_CONFIG };

struct llm_client;

struct llm_client *llm_client_new(const struct worker_config *cfg);
void llm_client_free(struct llm_client *lc);

/* Builds the prompt from the chunk's messages and asks for a summary with
 * thinking off; thinking residue is stripped. The transcript is a JSON
 * array (one object per message: role, name, content), so no content can
 * pass itself off as another turn. */
enum llm_result llm_summarize(struct llm_client *lc, const char *request_id,
                              const struct message *msgs, size_t n, char **summary, double *seconds,
                              char *err, size_t errlen);
/* The transcript as sent (exposed for the unit tests); caller frees. */
char *llm_transcript(const struct message *msgs, size_t n);

/* One call for n texts; *vectors receives n * EMBEDDING_DIM floats. The
 * reply must hold each index 0..n-1 exactly once, with finite numbers. */
enum llm_result llm_embed(struct llm_client *lc, const char *request_id, const char *const *texts,
                          size_t n, float **vectors, double *seconds, char *err, size_t errlen);

/* Validates an embeddings reply: n vectors of dim finite numbers, each
 * index 0..n-1 exactly once (absent index = position). LLM_OK with
 * *vectors (caller frees), LLM_CONFIG for another size, else LLM_TRANSIENT. */
enum llm_result llm_embeddings_parse(const json_t *reply, size_t n, size_t dim, const char *model,
                                     float **vectors, char *err, size_t errlen);

/* num_ctx for a prompt of chars characters: estimated tokens plus room for
 * the answer, rounded up to a power of two, clamped to [min, max]. */
long long llm_num_ctx(size_t chars, long long min, long long max);

/* The default summary system prompt. */
extern const char LLM_DEFAULT_SUMMARY_PROMPT[];

const char *llm_result_name(enum llm_result r);

#endif

/*
 * responses_stream: chat.completion.chunk objects (the core's stream, see
 * chat_translate.h) -> Responses API stream events with sequence_number,
 * and the response object they build up (the non-stream reply and the one
 * in response.completed). Items: reasoning (summary_text), message
 * (output_text), function_call, in the order the model produced them.
 *
 * Pure, no I/O. Ownership: the struct owns its state (responses_stream_free);
 * echo is copied; events arrays are borrowed and receive new objects;
 * responses_stream_result returns a new reference.
 */
#ifndef RESPONSES_STREAM_H
#define RESPONSES_STREAM_H

#include "chat_translate.h"

struct responses_stream;

/* echo: the request fields repeated in the response object (may be NULL). */
struct responses_stream *responses_stream_new(const char *model, const json_t *echo,
                                              long long created_at);
void responses_stream_free(struct responses_stream *rs);

/* response.created, response.in_progress. */
void responses_stream_start(struct responses_stream *rs, json_t *events);
void responses_stream_chunk(struct responses_stream *rs, const json_t *chunk, json_t *events);
/* Closes the open item; response.completed (or response.incomplete after
 * finish_reason "length"). */
void responses_stream_done(struct responses_stream *rs, const char *finish_reason,
                           const struct chat_usage *usage, json_t *events);
/* response.failed with the error. */
void responses_stream_fail(struct responses_stream *rs, const struct proxy_error *e,
                           json_t *events);
/* The response object as it stands. */
json_t *responses_stream_result(struct responses_stream *rs);

#endif

/*
 * messages_stream: chat.completion.chunk objects (the core's stream, see
 * chat_translate.h) -> Anthropic Messages stream events (message_start,
 * content_block_start/delta/stop, message_delta, message_stop), and the
 * message object they build up (the non-stream reply). Blocks: thinking,
 * text, tool_use, in the order the model produced them.
 *
 * Pure, no I/O. Ownership: the struct owns its state (messages_stream_free);
 * events arrays are borrowed and receive new objects; returned json_t are
 * new references.
 */
#ifndef MESSAGES_STREAM_H
#define MESSAGES_STREAM_H

#include "chat_translate.h"

struct messages_stream;

struct messages_stream *messages_stream_new(const char *model);
void messages_stream_free(struct messages_stream *ms);

void messages_stream_start(struct messages_stream *ms, json_t *events);
void messages_stream_chunk(struct messages_stream *ms, const json_t *chunk, json_t *events);
void messages_stream_done(struct messages_stream *ms, const char *finish_reason,
                          const struct chat_usage *usage, json_t *events);
/* The message object as it stands. */
json_t *messages_stream_result(struct messages_stream *ms);

#endif

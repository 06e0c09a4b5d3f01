/*
 * chat_translate: OpenAI chat completions <-> Ollama native /api/chat.
 *
 * This is the one translation core: the Responses API (responses_translate.c)
 * and the Messages API (messages_translate.c) rewrite their requests into
 * this chat-completions form and their replies from its chunks.
 *
 * Pure functions on jansson values, no I/O (unit-tested directly). Field
 * mappings follow ../shared/upstream-api.md §1-§2 and are summarised in
 * README.md. Thinking never lands in content: native message.thinking and a
 * leading inline <think> block both become reasoning_content.
 *
 * Ownership: functions returning json_t* return a new reference; inputs are
 * borrowed. struct chat_request's strings are owned by it
 * (chat_request_deinit). struct chat_stream owns its state
 * (chat_stream_deinit).
 */
#ifndef CHAT_TRANSLATE_H
#define CHAT_TRANSLATE_H

#include "cm_think.h"
#include "proxy_error.h"

#include <jansson.h>

struct evbuffer;

struct chat_request {
    char *model;       /* as the client sent it */
    int stream;        /* stream:true */
    int include_usage; /* stream_options.include_usage */
    json_t *native;    /* the /api/chat body (without "messages" when native_messages is set) */
    struct evbuffer *native_messages; /* owned; the native messages as comma-separated JSON
                                         text, or NULL (they are in native) */
};

/* Returns 0, or -1 with err filled (400). */
int chat_request_translate(const json_t *oai, struct chat_request *out, struct proxy_error *err);
/*
 * The same from the request's JSON text, without parsing it whole: the
 * messages are parsed, translated and written out one at a time (memory
 * stays near the size of the text; see chat_translate.c). Same results and
 * 400s; also 503 "overloaded" (err->reject_reason "body_budget") when a
 * value's parsed form does not fit in the memory budget (cm_mem_budget.h).
 */
int chat_request_translate_text(const char *text, size_t len, struct chat_request *out,
                                struct proxy_error *err);
/*
 * The request body text parsed whole (for the Responses and Messages APIs,
 * whose translators take a json_t): new reference, or NULL with err set
 * (400 not JSON / not an object; 503 "overloaded" when its parsed form does
 * not fit in the memory budget, as above).
 */
json_t *chat_parse_body(const char *text, size_t len, struct proxy_error *err);
/* The native /api/chat body as JSON text (*len bytes, NUL-terminated);
 * caller frees. */
char *chat_request_body(const struct chat_request *req, size_t *len);
/* Frees the native body (once it has been sent) and keeps the rest. */
void chat_request_drop_native(struct chat_request *req);
void chat_request_deinit(struct chat_request *req);

/* "chatcmpl-" + 24 random characters; buf >= 40 bytes. */
void chat_new_id(char *buf, size_t len);
/* prefix + 24 random characters ("resp_", "msg_", "toolu_"...). */
void chat_new_prefixed_id(char *buf, size_t len, const char *prefix);

struct chat_usage {
    long long prompt_tokens;
    long long completion_tokens;
};

/* Adds a reply's token counts to the tokens metric (a struct cm_metric *
 * counter labelled by type). */
struct cm_metric;
void chat_count_tokens(struct cm_metric *tokens, const struct chat_usage *u);

/* Native non-stream reply -> chat.completion. NULL + err (502) if malformed. */
json_t *chat_response_translate(const json_t *native, const char *model, const char *id,
                                long long created, struct chat_usage *usage,
                                struct proxy_error *err);

/* Streaming: one native NDJSON line at a time. */
struct chat_stream {
    char id[48];
    char *model;
    long long created;
    int include_usage;
    int role_sent;
    int tool_calls; /* tool calls emitted so far */
    int done;
    const char *finish_reason; /* static string, set with the final line */
    struct cm_think_splitter think;
    struct chat_usage usage;
};

void chat_stream_init(struct chat_stream *st, const char *model, const char *id, long long created,
                      int include_usage);
void chat_stream_deinit(struct chat_stream *st);

enum { CHAT_STREAM_MORE = 0, CHAT_STREAM_DONE = 1, CHAT_STREAM_ERROR = -1 };
/*
 * Translates one parsed line into zero or more chunk objects appended to
 * chunks (a JSON array). Returns CHAT_STREAM_DONE after the final line
 * (finish chunk and, if asked, the usage chunk appended), or
 * CHAT_STREAM_ERROR with err filled when the line reports an upstream
 * failure or is malformed.
 */
int chat_stream_line(struct chat_stream *st, const json_t *line, json_t *chunks,
                     struct proxy_error *err);

#endif

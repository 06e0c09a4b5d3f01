/*
 * chat_upstream: one streaming /api/chat transfer, translated line by line
 * into chat.completion.chunk objects and handed to a sink (SSE response or
 * WebSocket session). Shared by chat_handler.c and ws_chat.c.
 *
 *   start -> [headers_ok] -> chunk* -> done        (final line seen)
 *                                   \-> fail       (upstream error, timeout,
 *                                                   stream cut short)
 * Exactly one of done/fail is called, unless upstream_chat_cancel() came
 * first; after either, the struct is freed and must not be used.
 *
 * Backpressure: before consuming upstream bytes, the core asks the sink for
 * its backlog; above CHAT_UPSTREAM_HIGH_WATER the transfer pauses until the
 * sink calls upstream_chat_resume().
 *
 * Ownership: the chat_request given to start is taken over (zeroed in the
 * caller). Chunks passed to the sink are borrowed for the call.
 */
#ifndef CHAT_UPSTREAM_H
#define CHAT_UPSTREAM_H

#include "chat_translate.h"
#include "proxy.h"

#define CHAT_UPSTREAM_HIGH_WATER (1024 * 1024)

struct chat_sink_ops {
    void (*headers_ok)(void *sink);                 /* upstream answered 200; optional */
    void (*chunk)(void *sink, const json_t *chunk); /* one chat.completion.chunk */
    void (*done)(void *sink, const char *finish_reason, const struct chat_usage *usage);
    void (*fail)(void *sink, const struct proxy_error *err);
    size_t (*backlog)(void *sink); /* bytes queued toward the client */
};

struct upstream_chat;

/* NULL when the transfer could not start (err filled). route labels metrics. */
struct upstream_chat *upstream_chat_start(struct proxy *px, const char *request_id,
                                          const char *route, struct chat_request *req,
                                          const struct chat_sink_ops *ops, void *sink,
                                          struct proxy_error *err);
/* Stops the transfer; no sink callback runs afterwards. Frees. */
void upstream_chat_cancel(struct upstream_chat *uc);
/* on = 1: the sink keeps no JSON from one line to the next; each line is
 * parsed, translated and released in one JSON scope (cm_mem_budget.h). */
void upstream_chat_json_per_line(struct upstream_chat *uc, int on);
/* The sink has drained: continue a paused transfer (callbacks may run now). */
void upstream_chat_resume(struct upstream_chat *uc);
/* Tokens so far (for a cancelled request's report). */
struct chat_usage upstream_chat_usage(const struct upstream_chat *uc);

#endif

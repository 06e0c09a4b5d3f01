/*
 * api_relay: the chat_upstream SSE/JSON sink shared by the HTTP handlers of
 * chat completions (streams), the Responses API and the Messages API. The upstream transfer's
 * chat.completion.chunk objects go to a wire-format converter (responses_stream.c,
 * messages_stream.c), which turns them into that API's events; the relay
 * writes the events as SSE ("event: <type>\ndata: <json>") when the client
 * asked for a stream, or replies with the converter's final object once the
 * transfer is done when it did not.
 *
 *   non-stream: chunks -> converter ... done -> 200 result | fail -> error reply
 *   stream:     (upstream 200 or keepalive tick) -> start events, then
 *               events per chunk, keepalive pings while silent
 *               -> done events -> end | fail -> failure events -> end
 *   any --client gone--> upstream cancelled
 *
 * Limits, metrics (route label), request ids and backpressure are those of
 * chat_upstream.c, as for chat completions.
 *
 * Ownership: api_relay_start takes over the chat_request (zeroed) and the
 * converter (freed with ops->free when the relay ends, also on failure to
 * start). Event arrays passed to the ops are borrowed; the ops append new
 * objects to them.
 */
#ifndef API_RELAY_H
#define API_RELAY_H

#include "chat_translate.h"
#include "proxy.h"

struct api_relay_ops {
    /* The first events of a stream (response.created, message_start). */
    void (*start)(void *conv, json_t *events);
    void (*chunk)(void *conv, const json_t *chunk, json_t *events);
    void (*done)(void *conv, const char *finish_reason, const struct chat_usage *usage,
                 json_t *events);
    /* A failure after the stream began: its failure events. */
    void (*fail)(void *conv, const struct proxy_error *e, json_t *events);
    /* The non-stream reply after done: new reference. */
    json_t *(*result)(void *conv);
    /* A failure before any byte of the reply: the API's error reply. */
    void (*reply_error)(struct cm_req *r, const struct proxy_error *e);
    void (*free)(void *conv);
    /* What a keepalive tick writes while the upstream is silent: an SSE
     * event object (new reference) or NULL for an SSE comment. */
    json_t *(*ping)(void *conv);
    /* 1: each event is "event: <its type>\ndata: <json>"; 0: "data: <json>"
     * only (chat completions). */
    int named_events;
    /* 1: chunk/done/fail keep no JSON between upstream lines, so each line is
     * handled in its own JSON scope (cm_mem_budget.h, per-request arena). */
    int json_per_line;
    /* Written after the done events, or NULL ("data: [DONE]\n\n" for chat). */
    const char *end_marker;
};

/* Starts the upstream transfer for req and relays it to r. */
void api_relay_start(struct proxy *px, struct cm_req *r, struct chat_request *req,
                     const struct api_relay_ops *ops, void *conv);

#endif

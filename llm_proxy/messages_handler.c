/*
 * messages_handler: POST /v1/messages (Anthropic Messages API) ->
 * POST /api/chat through the translation core (messages_translate.c), the
 * streaming relay (api_relay.c, chat_upstream.c) and the Messages event
 * converter (messages_stream.c). Errors are in Anthropic's shape; a stream
 * pings while the upstream is silent. The key may come as x-api-key
 * (CM_ROUTE_AUTH_XKEY); anthropic-version is accepted and not checked.
 */
#include "api_handlers.h"
#include "api_relay.h"
#include "messages_stream.h"
#include "messages_translate.h"

#include <event2/buffer.h>

static void messages_reply_error(struct cm_req *r, const struct proxy_error *e)
{
    if (e->reject_reason)
        cm_req_count_reject(r, e->reject_reason);
    if (e->status == 429 || e->status == 503)
        cm_req_add_header(r, "Retry-After", "1");
    cm_req_reply_json(r, e->status, proxy_error_anthropic_json(e));
}

static void conv_start(void *conv, json_t *events)
{
    messages_stream_start(conv, events);
}

static void conv_chunk(void *conv, const json_t *chunk, json_t *events)
{
    messages_stream_chunk(conv, chunk, events);
}

static void conv_done(void *conv, const char *finish, const struct chat_usage *u, json_t *events)
{
    messages_stream_done(conv, finish, u, events);
}

static void conv_fail(void *conv, const struct proxy_error *e, json_t *events)
{
    (void)conv;
    json_array_append_new(events, proxy_error_anthropic_json(e));
}

static json_t *conv_result(void *conv)
{
    return messages_stream_result(conv);
}

static void conv_free(void *conv)
{
    messages_stream_free(conv);
}

static json_t *conv_ping(void *conv)
{
    (void)conv;
    return json_pack("{s:s}", "type", "ping");
}

static const struct api_relay_ops messages_ops = {.start = conv_start,
                                                  .chunk = conv_chunk,
                                                  .done = conv_done,
                                                  .fail = conv_fail,
                                                  .result = conv_result,
                                                  .reply_error = messages_reply_error,
                                                  .free = conv_free,
                                                  .ping = conv_ping,
                                                  .named_events = 1};

void messages_handle(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    /* Anthropic's clients read the request id from "request-id". */
    cm_req_add_header(r, "request-id", cm_req_id(r));
    struct evbuffer *body = cm_req_body(r);
    size_t len = evbuffer_get_length(body);
    struct proxy_error err;
    json_t *req = chat_parse_body((const char *)evbuffer_pullup(body, -1), len, &err);
    evbuffer_drain(body, len);
    if (!req) {
        messages_reply_error(r, &err);
        return;
    }
    struct chat_request creq;
    int rc = messages_request_translate(req, &creq, &err);
    json_decref(req);
    if (rc != 0) {
        messages_reply_error(r, &err);
        return;
    }
    struct messages_stream *ms = messages_stream_new(creq.model);
    api_relay_start(px, r, &creq, &messages_ops, ms);
}

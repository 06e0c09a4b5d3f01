/*
 * responses_handler: POST /v1/responses (stateless Responses API) ->
 * POST /api/chat through the translation core (responses_translate.c), the
 * streaming relay (api_relay.c, chat_upstream.c) and the Responses event
 * converter (responses_stream.c). Errors are OpenAI errors.
 */
#include "api_handlers.h"
#include "api_relay.h"
#include "proxy.h"
#include "responses_stream.h"
#include "responses_translate.h"

#include <event2/buffer.h>
#include <time.h>

static void conv_start(void *conv, json_t *events)
{
    responses_stream_start(conv, events);
}

static void conv_chunk(void *conv, const json_t *chunk, json_t *events)
{
    responses_stream_chunk(conv, chunk, events);
}

static void conv_done(void *conv, const char *finish, const struct chat_usage *u, json_t *events)
{
    responses_stream_done(conv, finish, u, events);
}

static void conv_fail(void *conv, const struct proxy_error *e, json_t *events)
{
    responses_stream_fail(conv, e, events);
}

static json_t *conv_result(void *conv)
{
    return responses_stream_result(conv);
}

static void conv_free(void *conv)
{
    responses_stream_free(conv);
}

static const struct api_relay_ops responses_ops = {.start = conv_start,
                                                   .chunk = conv_chunk,
                                                   .done = conv_done,
                                                   .fail = conv_fail,
                                                   .result = conv_result,
                                                   .reply_error = proxy_reply_error,
                                                   .free = conv_free,
                                                   .ping = NULL,
                                                   .named_events = 1};

void responses_handle(struct cm_req *r, void *arg)
{
    struct proxy *px = arg;
    struct evbuffer *body = cm_req_body(r);
    size_t len = evbuffer_get_length(body);
    struct proxy_error err;
    json_t *req = chat_parse_body((const char *)evbuffer_pullup(body, -1), len, &err);
    evbuffer_drain(body, len);
    if (!req) {
        proxy_reply_error(r, &err);
        return;
    }
    struct chat_request creq;
    json_t *echo = NULL;
    int rc = responses_request_translate(req, &creq, &echo, &err);
    json_decref(req);
    if (rc != 0) {
        proxy_reply_error(r, &err);
        return;
    }
    struct responses_stream *rs = responses_stream_new(creq.model, echo, (long long)time(NULL));
    json_decref(echo);
    api_relay_start(px, r, &creq, &responses_ops, rs);
}

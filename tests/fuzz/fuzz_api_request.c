/* libFuzzer: Responses API and Messages API requests -> native /api/chat
 * translation (responses_translate.c, messages_translate.c), on the same
 * bytes, plus the event converters fed the bytes as one chat chunk. Any
 * accepted request must produce a native body that is a JSON object. */
#include "chat_translate.h"
#include "cm_json.h"
#include "messages_stream.h"
#include "messages_translate.h"
#include "responses_stream.h"
#include "responses_translate.h"

#include <stdint.h>
#include <stdlib.h>

static void check_body(struct chat_request *req)
{
    size_t len;
    char *s = chat_request_body(req, &len);
    json_t *v = cm_json_parse(s, len, NULL, 0);
    if (!json_is_object(v))
        abort();
    json_decref(v);
    free(s);
    chat_request_deinit(req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_error err;
    json_t *v = chat_parse_body((const char *)data, size, &err);
    if (!v)
        return 0;
    struct chat_request req;
    json_t *echo = NULL;
    if (responses_request_translate(v, &req, &echo, &err) == 0)
        check_body(&req);
    else if (err.status != 400)
        abort();
    if (messages_request_translate(v, &req, &err) == 0)
        check_body(&req);
    else if (err.status != 400)
        abort();

    struct chat_usage u = {1, 2};
    json_t *events = json_array();
    struct responses_stream *rs = responses_stream_new("m", echo, 1);
    responses_stream_start(rs, events);
    responses_stream_chunk(rs, v, events);
    responses_stream_done(rs, "stop", &u, events);
    json_decref(responses_stream_result(rs));
    responses_stream_free(rs);
    struct messages_stream *ms = messages_stream_new("m");
    messages_stream_start(ms, events);
    messages_stream_chunk(ms, v, events);
    messages_stream_done(ms, "length", &u, events);
    json_decref(messages_stream_result(ms));
    messages_stream_free(ms);
    json_decref(events);
    json_decref(echo);
    json_decref(v);
    return 0;
}

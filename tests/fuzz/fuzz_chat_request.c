/* libFuzzer: OpenAI chat request -> native /api/chat translation, from the
 * parsed JSON (WebSocket path) and from the raw text, message by message
 * (HTTP path): what the first accepts the second must accept with the same
 * native body. Also the non-stream response translation on the same bytes. */
#include "chat_translate.h"
#include "cm_json.h"

#include <stdint.h>
#include <stdlib.h>

static json_t *body_of(const struct chat_request *req)
{
    size_t len;
    char *s = chat_request_body(req, &len);
    json_t *v = cm_json_parse(s, len, NULL, 0);
    free(s);
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct chat_request text_req;
    struct proxy_error text_err;
    int text_rc = chat_request_translate_text((const char *)data, size, &text_req, &text_err);
    json_t *v = cm_json_parse((const char *)data, size, NULL, 0);
    struct chat_request req;
    struct proxy_error err;
    int rc = json_is_object(v) ? chat_request_translate(v, &req, &err) : -1;
    /* Whatever the JSON path accepts, the text path accepts the same way
     * (the text path alone may refuse extreme nesting, which jansson counts
     * from the document's top). */
    if (rc == 0 && text_rc != 0)
        abort();
    if (rc != 0 && text_rc == 0)
        chat_request_deinit(&text_req);
    if (rc == 0) {
        json_t *a = body_of(&req), *b = body_of(&text_req);
        if (!json_equal(a, b))
            abort();
        json_decref(a);
        json_decref(b);
        chat_request_deinit(&req);
        chat_request_deinit(&text_req);
    }
    if (v) {
        struct chat_usage u;
        json_t *out = chat_response_translate(v, "m", "chatcmpl-x", 1, &u, &err);
        json_decref(out);
        json_decref(v);
    }
    return 0;
}

/* libFuzzer: OpenAI chat request (JSON) -> native /api/chat translation,
 * and the non-stream response translation on the same bytes. */
#include "chat_translate.h"
#include "cm_json.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *v = cm_json_parse((const char *)data, size, NULL, 0);
    if (!v)
        return 0;
    struct chat_request req;
    struct proxy_error err;
    if (json_is_object(v) && chat_request_translate(v, &req, &err) == 0) {
        char *s = cm_json_dumps(req.native);
        free(s);
        chat_request_deinit(&req);
    }
    struct chat_usage u;
    json_t *out = chat_response_translate(v, "m", "chatcmpl-x", 1, &u, &err);
    json_decref(out);
    json_decref(v);
    return 0;
}

/* libFuzzer: native NDJSON stream -> chat.completion.chunks (SSE payloads),
 * line by line, as chat_upstream feeds them; and inline-thinking
 * separation on the same bytes cut into pieces. */
#include "chat_translate.h"
#include "cm_json.h"
#include "cm_think.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct chat_stream st;
    chat_stream_init(&st, "m", "chatcmpl-x", 1, size > 0 && (data[0] & 1));
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        json_t *line = cm_json_parse(p, len, NULL, 0);
        if (line) {
            json_t *chunks = json_array();
            struct proxy_error err;
            int rc = chat_stream_line(&st, line, chunks, &err);
            char *s = cm_json_dumps(chunks);
            free(s);
            json_decref(chunks);
            json_decref(line);
            if (rc != CHAT_STREAM_MORE)
                break;
        }
        p += len + 1;
    }
    chat_stream_deinit(&st);

    struct cm_think_splitter sp;
    struct cm_think_out out = {0};
    cm_think_init(&sp);
    size_t step = size ? (size_t)data[0] % 7 + 1 : 1;
    for (size_t off = 0; off < size; off += step)
        cm_think_feed(&sp, (const char *)data + off, off + step > size ? size - off : step, &out);
    cm_think_finish(&sp, &out);
    cm_think_out_deinit(&out);
    return 0;
}

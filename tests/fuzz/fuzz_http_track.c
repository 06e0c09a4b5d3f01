/* libFuzzer: cm_http_track (the request framing tracker in front of evhttp)
 * on hostile input, delivered in pieces as a socket would. Invariants: no
 * crash, only ';' bytes are ever changed (into spaces), and the body bytes
 * it reports never exceed the input. The first byte picks the piece size. */
#include "cm_http_track.h"

#include <event2/buffer.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    struct cm_http_track t;
    cm_http_track_init(&t);
    struct evbuffer *buf = evbuffer_new();
    size_t body = 0;
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        evbuffer_add(buf, data + off, n);
        body += cm_http_track_feed(&t, buf, n);
        /* evhttp consumes from the front meanwhile: keep at most 100 bytes. */
        size_t len = evbuffer_get_length(buf);
        if (len > 100)
            evbuffer_drain(buf, len - 100);
    }
    if (body > size)
        abort();
    evbuffer_free(buf);
    /* Whole input at once: only ';' may change. */
    buf = evbuffer_new();
    evbuffer_add(buf, data, size);
    cm_http_track_init(&t);
    cm_http_track_feed(&t, buf, size);
    const unsigned char *out = evbuffer_pullup(buf, -1);
    for (size_t i = 0; i < size; i++)
        if (out[i] != data[i] && !(data[i] == ';' && out[i] == ' '))
            abort();
    evbuffer_free(buf);
    return 0;
}

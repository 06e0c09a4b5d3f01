/* libFuzzer: cm_http_track (the request framing tracker in front of evhttp)
 * on hostile input, delivered in pieces as a socket would. Invariants:
 *   - no crash; the tracker never stops following (never OFF): it follows
 *     every body or has refused the request (REFUSED, with a reason or
 *     evhttp's own);
 *   - the outcome (state, reason, body bytes, rewritten bytes) does not
 *     depend on how the input is cut, nor on evhttp consuming the front of
 *     the buffer meanwhile;
 *   - the body bytes it reports never exceed the input;
 *   - it changes only ';' or a tab into a space, or - once it refused -
 *     bytes into CR (field lines) or 'g' (chunk-size lines).
 * The first byte picks the piece size. */
#include "cm_http_track.h"

#include <event2/buffer.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct run {
    struct cm_http_track t;
    size_t body;
    unsigned char *out; /* the whole input as rewritten (NULL when drained) */
};

static int admit(void *arg, long long n)
{
    (void)arg;
    return n > 1000 ? -1 : 0;
}

static void feed(const uint8_t *data, size_t size, size_t piece, int drain, struct run *r)
{
    cm_http_track_init(&r->t);
    r->t.admit = admit;
    r->body = 0;
    r->out = NULL;
    struct evbuffer *buf = evbuffer_new();
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        evbuffer_add(buf, data + off, n);
        r->body += cm_http_track_feed(&r->t, buf, n);
        /* evhttp consumes from the front meanwhile: keep at most 100 bytes. */
        size_t len = evbuffer_get_length(buf);
        if (drain && len > 100)
            evbuffer_drain(buf, len - 100);
    }
    if (!drain && size) {
        r->out = malloc(size);
        evbuffer_remove(buf, r->out, size);
    }
    evbuffer_free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    struct run whole, cut, drained;
    feed(data, size, size ? size : 1, 0, &whole);
    feed(data, size, piece, 0, &cut);
    feed(data, size, piece, 1, &drained);
    if (whole.t.state == CM_TRACK_OFF || whole.body > size)
        abort();
    if (cut.t.state != whole.t.state || cut.t.refused != whole.t.refused ||
        cut.body != whole.body || drained.body != whole.body || drained.t.state != whole.t.state ||
        (size && memcmp(cut.out, whole.out, size) != 0))
        abort();
    int refused = whole.t.state == CM_TRACK_REFUSED;
    for (size_t i = 0; i < size; i++) {
        unsigned char in = data[i], out = whole.out[i];
        if (in == out)
            continue;
        if (out == ' ' && (in == ';' || in == '\t'))
            continue;
        if (!refused || (out != '\r' && out != 'g'))
            abort();
    }
    free(whole.out);
    free(cut.out);
    return 0;
}

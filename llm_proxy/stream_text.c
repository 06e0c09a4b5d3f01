#include "stream_text.h"

#include "cm_alloc.h"

#include <string.h>

void stream_text_add(struct evbuffer **buf, const char *delta)
{
    if (!*buf)
        *buf = evbuffer_new();
    evbuffer_add(*buf, delta, strlen(delta));
}

char *stream_text_take(struct evbuffer **buf)
{
    size_t len = *buf ? evbuffer_get_length(*buf) : 0;
    char *t = cm_xmalloc(len + 1);
    if (*buf) {
        evbuffer_remove(*buf, t, len);
        evbuffer_free(*buf);
        *buf = NULL;
    }
    t[len] = '\0';
    return t;
}

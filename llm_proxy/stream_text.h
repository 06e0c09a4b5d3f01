/*
 * stream_text: the text of the item or block an event converter has open
 * (responses_stream.c, messages_stream.c). Deltas are appended to an
 * evbuffer, so a long reply is gathered in linear time; the converter owns
 * the buffer (NULL while nothing is open) and takes it out as a C string
 * when the item closes.
 */
#ifndef STREAM_TEXT_H
#define STREAM_TEXT_H

#include <event2/buffer.h>

/* Appends delta to *buf, creating the buffer on first use. */
void stream_text_add(struct evbuffer **buf, const char *delta);

/* The gathered text as a NUL-terminated string the caller frees ("" when
 * nothing was gathered); frees the buffer and sets *buf to NULL. */
char *stream_text_take(struct evbuffer **buf);

#endif

/*
 * messages_translate: an Anthropic Messages API request (POST /v1/messages)
 * -> the chat-completions form the translation core takes
 * (chat_translate.h), then the native /api/chat request. The mapping is
 * tabled in README.md ("Messages API").
 *
 * Pure functions on jansson values, no I/O. Ownership: returned json_t are
 * new references; inputs are borrowed; out as for chat_request_translate.
 */
#ifndef MESSAGES_TRANSLATE_H
#define MESSAGES_TRANSLATE_H

#include "chat_translate.h"

/* The request as a chat-completions request: new reference, or NULL with a
 * 400 in err. */
json_t *messages_to_chat(const json_t *req, struct proxy_error *err);

/* messages_to_chat + chat_request_translate. */
int messages_request_translate(const json_t *req, struct chat_request *out,
                               struct proxy_error *err);

#endif

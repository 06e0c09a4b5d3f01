/*
 * responses_translate: an OpenAI Responses API request (POST /v1/responses,
 * stateless) -> the chat-completions form the translation core takes
 * (chat_translate.h), then the native /api/chat request. The mapping is
 * tabled in README.md ("Responses API").
 *
 * Pure functions on jansson values, no I/O. Ownership: *echo is a new
 * reference (the request fields a response object repeats); inputs are
 * borrowed; out as for chat_request_translate.
 */
#ifndef RESPONSES_TRANSLATE_H
#define RESPONSES_TRANSLATE_H

#include "chat_translate.h"

/* The request as a chat-completions request: new reference, or NULL with a
 * 400 in err (unsupported or malformed field, previous_response_id,
 * store:true). */
json_t *responses_to_chat(const json_t *req, struct proxy_error *err);

/* responses_to_chat + chat_request_translate. echo may be NULL. */
int responses_request_translate(const json_t *req, struct chat_request *out, json_t **echo,
                                struct proxy_error *err);

#endif

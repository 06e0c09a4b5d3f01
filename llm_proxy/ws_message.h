/*
 * ws_message: validation of one client message of the /ws/chat protocol
 * (a complete, UTF-8 text frame payload). Pure; fuzzed.
 *
 * Ownership: on success out->msg is a new reference (json_decref it);
 * out->id and out->type point into it.
 */
#ifndef WS_MESSAGE_H
#define WS_MESSAGE_H

#include "proxy_error.h"

#include <jansson.h>
#include <stddef.h>

#define WS_MAX_ID 128

enum ws_msg_type { WS_MSG_CHAT, WS_MSG_CANCEL };

struct ws_client_msg {
    enum ws_msg_type type;
    const char *id;
    json_t *msg;
};

/* 1 when id is a usable request id: a JSON string of 1..WS_MAX_ID bytes of
 * printable ASCII without spaces (0x21-0x7e). It ends up in the upstream's
 * X-Request-Id header, so anything else is refused. */
int ws_message_id_ok(const json_t *id);

/* Returns 0, or -1 with err filled; *bad_id receives the id when the
 * message had a usable one (so the error can name it), else NULL. */
int ws_message_parse(const char *data, size_t len, struct ws_client_msg *out,
                     struct proxy_error *err, char *bad_id, size_t bad_id_len);

/* The OpenAI request inside a chat message (type and id removed, stream
 * forced on). New reference. */
json_t *ws_message_chat_request(const struct ws_client_msg *m);

#endif

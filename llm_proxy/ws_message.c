/* ws_message: /ws/chat client message validation (see ws_message.h). */
#include "ws_message.h"

#include "cm_json.h"

#include <stdio.h>
#include <string.h>

int ws_message_id_ok(const json_t *id)
{
    if (!json_is_string(id))
        return 0;
    /* The length from jansson, not strlen: "\u0000" is a valid JSON string. */
    size_t len = json_string_length(id);
    const char *s = json_string_value(id);
    if (len == 0 || len > WS_MAX_ID)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0; /* controls (CR, LF, NUL), space, DEL, non-ASCII */
    return 1;
}

int ws_message_parse(const char *data, size_t len, struct ws_client_msg *out,
                     struct proxy_error *err, char *bad_id, size_t bad_id_len)
{
    char jerr[160];
    bad_id[0] = '\0';
    json_t *msg = cm_json_parse(data, len, jerr, sizeof jerr);
    if (!json_is_object(msg)) {
        proxy_error_set(err, 400, NULL, "invalid_json", "The message is not a JSON object%s%s.",
                        msg ? "" : ": ", msg ? "" : jerr);
        json_decref(msg);
        return -1;
    }
    const char *type = cm_json_str(msg, "type");
    const char *id = cm_json_str(msg, "id");
    if (!ws_message_id_ok(json_object_get(msg, "id"))) {
        proxy_error_set(err, 400, "id", "invalid_id",
                        "'id' must be 1 to %d characters of printable ASCII without spaces.",
                        WS_MAX_ID);
        json_decref(msg);
        return -1;
    }
    if (type && strcmp(type, "chat") == 0) {
        out->type = WS_MSG_CHAT;
    } else if (type && strcmp(type, "cancel") == 0) {
        out->type = WS_MSG_CANCEL;
    } else {
        snprintf(bad_id, bad_id_len, "%s", id);
        proxy_error_set(err, 400, "type", "invalid_type", "'type' must be 'chat' or 'cancel'.");
        json_decref(msg);
        return -1;
    }
    out->id = id;
    out->msg = msg;
    return 0;
}

json_t *ws_message_chat_request(const struct ws_client_msg *m)
{
    json_t *oai = json_deep_copy(m->msg);
    json_object_del(oai, "type");
    json_object_del(oai, "id");
    json_object_set_new(oai, "stream", json_true());
    return oai;
}

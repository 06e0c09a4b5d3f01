/* libFuzzer: WebSocket message handling. The bytes are read as client
 * frames by a wslay server context (as ws_session does); every complete
 * text message goes through the /ws/chat protocol parser and, for chat
 * messages, the OpenAI request translation. */
#include "chat_translate.h"
#include "ws_message.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

struct feed {
    const uint8_t *data;
    size_t size, off;
};

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *arg)
{
    struct feed *f = arg;
    (void)flags;
    if (f->off == f->size) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = f->size - f->off < len ? f->size - f->off : len;
    memcpy(buf, f->data + f->off, n);
    f->off += n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *arg)
{
    (void)ctx, (void)data, (void)flags, (void)arg;
    return (ssize_t)len;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                   void *arg)
{
    (void)ctx, (void)arg;
    if (m->opcode != WSLAY_TEXT_FRAME)
        return;
    struct ws_client_msg msg;
    struct proxy_error err;
    char bad[WS_MAX_ID + 1];
    if (ws_message_parse((const char *)m->msg, m->msg_length, &msg, &err, bad, sizeof bad) != 0)
        return;
    if (msg.type == WS_MSG_CHAT) {
        json_t *oai = ws_message_chat_request(&msg);
        struct chat_request req;
        if (chat_request_translate(oai, &req, &err) == 0)
            chat_request_deinit(&req);
        json_decref(oai);
    }
    json_decref(msg.msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct feed f = {data, size, 0};
    struct wslay_event_callbacks cbs = {
        .recv_callback = recv_cb, .send_callback = send_cb, .on_msg_recv_callback = on_msg};
    wslay_event_context_ptr ctx;
    if (wslay_event_context_server_init(&ctx, &cbs, &f) != 0)
        return 0;
    wslay_event_config_set_max_recv_msg_length(ctx, 1 << 20);
    wslay_event_recv(ctx);
    wslay_event_send(ctx);
    wslay_event_context_free(ctx);
    return 0;
}

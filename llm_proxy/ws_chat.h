/*
 * ws_chat: the /ws/chat protocol over a ws_conn (ws_conn.h). Each chat
 * request is a chat_upstream transfer whose chunks become messages.
 *
 * Protocol (text frames, JSON):
 *   client {"type":"chat","id":"<id>", ...any OpenAI chat field...}  (streams)
 *   client {"type":"cancel","id":"<id>"}
 *   server {"type":"chunk","id":…,"chunk":<chat.completion.chunk as on SSE>}
 *   server {"type":"done","id":…,"finish_reason":…,"usage":{…}}
 *   server {"type":"error","id":…|null,"error":{message,type,param,code}}
 * An id is 1-128 bytes of printable ASCII without spaces (ws_message.h).
 *
 * Session states (enum ws_chat_state in ws_chat.c):
 *   ACTIVE --ws_drain_all--> DRAINING --last request ends--> close 1001
 * and in either state the transport's on_closed frees the session and
 * cancels every upstream transfer.
 *
 * Entry points: ws_handle_upgrade (route handler, proxy.h) and ws_drain_all
 * (proxy.h). ws_chat_attach is the same session over any bufferevent, for
 * the fuzz target.
 */
#ifndef WS_CHAT_H
#define WS_CHAT_H

#include "proxy.h"

struct bufferevent;

/* Starts a chat session over an open bufferevent (a socketpair in the fuzz
 * target); release(release_arg) frees bev when the session ends. The
 * session lives in px->ws_sessions until then. */
void ws_chat_attach(struct proxy *px, struct bufferevent *bev, void (*release)(void *),
                    void *release_arg);

/* Destroys every session at once (on_closed runs; upstreams cancelled). */
void ws_chat_abort_all(struct proxy *px);

#endif

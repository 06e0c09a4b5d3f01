/* Unit test of the connection cap shared by two guard sets (two workers,
 * each on its own loop): a connection one set accepts over the cap, before
 * it heard that the other reached it, is held unread until a place frees,
 * then served. The race is set up by hand, without threads. */
#include "cm_conn_guard.h"
#include "cm_log.h"
#include "unit.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev, (void)what, (void)arg;
}

/* A server-side bufferevent as evhttp would have it, and its client fd. */
static struct bufferevent *accept_one(struct event_base *base, int *client)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return NULL;
    evutil_make_socket_nonblocking(sv[0]);
    struct bufferevent *bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, NULL, NULL, on_event, NULL);
    bufferevent_enable(bev, EV_READ);
    *client = sv[1];
    return bev;
}

static void spin(struct event_base *base)
{
    for (int i = 0; i < 8; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static void held_until_room(void)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    struct event_base *a = event_base_new(), *b = event_base_new();
    struct cm_conn_cap *cap = cm_conn_cap_new(1);
    struct cm_conn_guards *ga = cm_conn_guards_new(a, cap, 1e9, 0);
    struct cm_conn_guards *gb = cm_conn_guards_new(b, cap, 1e9, 0);
    int ca, cb;
    struct bufferevent *ba = accept_one(a, &ca);
    cm_conn_guards_add(ga, ba); /* worker a reaches the cap */
    struct bufferevent *bb = accept_one(b, &cb);
    cm_conn_guards_add(gb, bb); /* worker b accepted in the same instant */
    CHECK(cm_conn_cap_open(cap) == 2);
    CHECK(write(cb, req, sizeof req - 1) == (ssize_t)(sizeof req - 1));
    spin(b);
    /* Held: at most the one byte of its rate limit was read. */
    CHECK(evbuffer_get_length(bufferevent_get_input(bb)) <= 1);
    /* a's connection ends (evhttp frees it: callbacks cleared, its
     * reference dropped); a's sweep drops the guard and tells b. */
    bufferevent_free(ba);
    while (cm_conn_cap_open(cap) != 1)
        event_base_loop(a, EVLOOP_ONCE);
    spin(b);
    CHECK(evbuffer_get_length(bufferevent_get_input(bb)) == sizeof req - 1);
    bufferevent_free(bb);
    cm_conn_guards_free(ga);
    cm_conn_guards_free(gb);
    CHECK(cm_conn_cap_open(cap) == 0);
    cm_conn_cap_free(cap);
    event_base_free(a);
    event_base_free(b);
    close(ca);
    close(cb);
}

int main(void)
{
    cm_log_init("test_conn_cap", CM_LOG_ERROR, CM_LOG_TEXT);
    evthread_use_pthreads();
    static const struct unit_test tests[] = {{"held_until_room", held_until_room}};
    return unit_run(tests, sizeof tests / sizeof tests[0]);
}

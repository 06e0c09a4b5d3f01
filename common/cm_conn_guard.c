/* cm_conn_guard: connection cap and request-read deadline (see cm_conn_guard.h). */
#include "cm_conn_guard.h"

#include "cm_alloc.h"
#include "cm_http_track.h"
#include "cm_log.h"
#include "cm_mem_budget.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#define SWEEP_MS 200
/* After evhttp closed a connection whose client was still sending (an early
 * 413, a refused request), unread input would turn close() into a reset
 * that can destroy the answer before the client reads it. So such sockets
 * are kept (write side already shut down by evhttp) and their input read
 * and dropped until EOF, at most LINGER_S and LINGER_MAX_BYTES. */
#define LINGER_S 2.0
#define LINGER_MAX_BYTES (16u * 1024 * 1024)

struct guard {
    struct bufferevent *bev; /* one reference held by us */
    struct cm_conn_guards *set;
    double reading_since; /* first byte of a request not yet dispatched; 0 = none */
    int busy;             /* a request is being handled */
    int killed;
    double linger_until;         /* evhttp let go; reading and dropping input until then */
    size_t lingered;             /* bytes dropped so far */
    struct cm_http_track track;  /* framing ahead of evhttp (cm_http_track.h) */
    size_t receiving;            /* body bytes read, not yet dispatched (in the budget) */
    int paused;                  /* reading stopped: the memory budget is full */
    int held;                    /* accepted over the cap: not read until there is room */
    struct guard *next;          /* hash chain */
    struct guard *lnext, *lprev; /* all guards */
};

/* Shared by the guard sets of every worker: open counts every connection
 * of every set; sets (under mu) is who to tell when the cap is reached or
 * left. */
struct cm_conn_cap {
    atomic_uint open;
    unsigned max;
    pthread_mutex_t mu;
    struct cm_conn_guards **sets;
    size_t nsets;
};

struct cm_conn_guards {
    struct event_base *base;
    struct cm_conn_cap *cap; /* borrowed; NULL = no cap */
    struct event *cap_ev;    /* activated (from any thread) when the cap state changes */
    struct ev_token_bucket_cfg *hold_cfg; /* rate limit that stops reading a held guard */
    unsigned nheld;
    double read_timeout;
    long long max_body; /* bodies larger than this are refused by evhttp (413) */
    cm_conn_output_cb output_cb;
    void *output_arg;
    struct evconnlistener *listener;
    int paused;
    unsigned count;
    struct guard **buckets;
    size_t nbuckets;
    struct guard *all;
    struct event *sweep;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t slot(const struct cm_conn_guards *g, const struct bufferevent *bev)
{
    uintptr_t h = (uintptr_t)bev;
    h ^= h >> 17;
    h *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 7) & (g->nbuckets - 1);
}

static struct guard *find(struct cm_conn_guards *g, struct bufferevent *bev)
{
    for (struct guard *x = g->buckets[slot(g, bev)]; x; x = x->next)
        if (x->bev == bev)
            return x;
    return NULL;
}

static void grow(struct cm_conn_guards *g)
{
    size_t n = g->nbuckets * 2;
    struct guard **b = cm_xcalloc(n, sizeof *b);
    struct guard **old = g->buckets;
    size_t oldn = g->nbuckets;
    g->buckets = b;
    g->nbuckets = n;
    for (size_t i = 0; i < oldn; i++) {
        struct guard *x = old[i];
        while (x) {
            struct guard *next = x->next;
            size_t k = slot(g, x->bev);
            x->next = b[k];
            b[k] = x;
            x = next;
        }
    }
    free(old);
}

static void update_listener(struct cm_conn_guards *g)
{
    if (!g->listener || !g->cap || !g->cap->max)
        return;
    unsigned open = atomic_load(&g->cap->open);
    if (!g->paused && open >= g->cap->max) {
        evconnlistener_disable(g->listener);
        g->paused = 1;
        CM_WARN(NULL, "connection_cap", "%u connections open: not accepting until one closes",
                open);
    } else if (g->paused && open < g->cap->max) {
        evconnlistener_enable(g->listener);
        g->paused = 0;
    }
}

/* Held connections are counted in cap->open already: once it is within the
 * cap again, they all fit. */
static void release_holds(struct cm_conn_guards *g)
{
    if (!g->nheld || atomic_load(&g->cap->open) > g->cap->max)
        return;
    for (struct guard *x = g->all; x; x = x->lnext) {
        if (!x->held)
            continue;
        x->held = 0;
        x->reading_since = 0;
        g->nheld--;
        bufferevent_set_rate_limit(x->bev, NULL);
    }
}

static void cap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    update_listener(arg);
    release_holds(arg);
}

/* The open count reached or left the cap: every set re-checks its
 * listener, self at once, the others on their own thread. */
static void cap_changed(struct cm_conn_guards *self)
{
    struct cm_conn_cap *c = self->cap;
    update_listener(self);
    release_holds(self);
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->nsets; i++)
        if (c->sets[i] != self)
            event_active(c->sets[i]->cap_ev, EV_TIMEOUT, 1);
    pthread_mutex_unlock(&c->mu);
}

struct cm_conn_cap *cm_conn_cap_new(unsigned max_connections)
{
    struct cm_conn_cap *c = cm_xcalloc(1, sizeof *c);
    c->max = max_connections;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void cm_conn_cap_free(struct cm_conn_cap *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->mu);
    free(c->sets);
    free(c);
}

unsigned cm_conn_cap_open(const struct cm_conn_cap *c)
{
    return atomic_load(&c->open);
}

static void input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct guard *x = arg;
    if (info->n_added && !x->busy && x->reading_since == 0)
        x->reading_since = now_s();
    if (!info->n_added)
        return;
    size_t body = cm_http_track_feed(&x->track, buf, info->n_added);
    if (x->track.chunk_line_too_long && !x->killed) {
        /* evhttp would buffer it without end: close, as for the deadline. */
        x->killed = 1;
        CM_WARN(NULL, "chunk_line_too_long",
                "chunk-size line over %d bytes: closing the connection", CM_TRACK_MAX_CHUNK_LINE);
        evutil_socket_t s = bufferevent_getfd(x->bev);
        if (s >= 0)
            shutdown(s, SHUT_RDWR);
    }
    if (body) {
        /* Bodies count from their first byte, not only once dispatched. */
        x->receiving += body;
        cm_mem_budget_charge(body);
        if (!x->busy && cm_mem_budget_over()) {
            /* Stop reading until the budget has room (the sweep resumes);
             * the request read deadline still applies. A Content-Length
             * body that did not fit was refused at its head already; this
             * is a chunked one, or bodies admitted together. */
            bufferevent_disable(x->bev, EV_READ);
            x->paused = 1;
        }
    }
}

static void drop(struct cm_conn_guards *g, struct guard *x)
{
    cm_mem_budget_release(x->receiving);
    if (x->held)
        g->nheld--;
    struct guard **pp = &g->buckets[slot(g, x->bev)];
    while (*pp != x)
        pp = &(*pp)->next;
    *pp = x->next;
    if (x->lprev)
        x->lprev->lnext = x->lnext;
    else
        g->all = x->lnext;
    if (x->lnext)
        x->lnext->lprev = x->lprev;
    g->count--;
    bufferevent_decref(x->bev); /* evhttp has let go: this frees it and closes the fd */
    free(x);
    if (g->cap && g->cap->max && atomic_fetch_sub(&g->cap->open, 1) >= g->cap->max)
        cap_changed(g); /* back under the cap, or a held connection's turn */
}

/* Returns 1 while x should stay open to drop the client's input. */
static int linger(struct guard *x, double now)
{
    evutil_socket_t fd = bufferevent_getfd(x->bev);
    if (fd < 0 || x->killed)
        return 0;
    if (x->linger_until == 0) {
        bufferevent_disable(x->bev, EV_READ | EV_WRITE);
        x->linger_until = now + LINGER_S;
    }
    char buf[16384];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            x->lingered += (size_t)n;
            if (x->lingered > LINGER_MAX_BYTES)
                return 0;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return 0; /* EOF or error: nothing left to protect */
        /* Nothing pending. On the first look that means the client was not
         * sending: close at once (no reset without unread data). */
        return x->lingered > 0 && now < x->linger_until;
    }
    return now < x->linger_until;
}

/* A paused connection cannot see its client leave (reading is off). */
static int peer_gone(struct guard *x)
{
    struct pollfd p = {bufferevent_getfd(x->bev), POLLRDHUP, 0};
    return p.fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* A paused connection that is over (client gone, or read deadline): drop
 * what its client still sent, without buffering it, then let evhttp read
 * the end of the stream and free the connection its own way. */
static void unpause_dead(struct guard *x)
{
    evutil_socket_t fd = bufferevent_getfd(x->bev);
    char buf[16384];
    for (int i = 0; fd >= 0 && i < 64; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return; /* more to come: next sweep */
        break;
    }
    bufferevent_data_cb rcb = NULL;
    bufferevent_getcb(x->bev, &rcb, NULL, NULL, NULL);
    x->paused = 0;
    if (rcb)
        bufferevent_enable(x->bev, EV_READ);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct cm_conn_guards *g = arg;
    (void)fd;
    (void)what;
    double now = now_s();
    struct guard *x = g->all;
    while (x) {
        struct guard *next = x->lnext;
        /* evhttp swaps the read and write callbacks as it goes, but always
         * keeps an event callback; only bufferevent_free() clears it. */
        bufferevent_event_cb ecb = NULL;
        bufferevent_getcb(x->bev, NULL, NULL, &ecb, NULL);
        if (!ecb) {
            if (!linger(x, now))
                drop(g, x);
        } else if (x->held && peer_gone(x)) {
            /* Its client left while it waited: read again so that evhttp
             * sees the end and frees it (it then leaves the count). */
            x->held = 0;
            g->nheld--;
            bufferevent_set_rate_limit(x->bev, NULL);
        } else if (x->paused && !x->busy && (x->killed || peer_gone(x))) {
            unpause_dead(x);
        } else if (x->paused && !x->busy && !cm_mem_budget_over()) {
            /* Resume only while evhttp is reading a request (its read
             * callback set): in any other state it must not get data. */
            bufferevent_data_cb rcb = NULL;
            bufferevent_getcb(x->bev, &rcb, NULL, NULL, NULL);
            x->paused = 0;
            if (rcb)
                bufferevent_enable(x->bev, EV_READ);
        } else if (!x->killed && !x->busy && !x->held && x->reading_since > 0 &&
                   now - x->reading_since > g->read_timeout) {
            /* Shut the socket down; evhttp sees the failure and frees the
             * connection through its own path. */
            x->killed = 1;
            evutil_socket_t s = bufferevent_getfd(x->bev);
            CM_WARN(NULL, "request_read_timeout",
                    "request not received within %.1fs: closing the connection", g->read_timeout);
            if (s >= 0)
                shutdown(s, SHUT_RDWR);
        }
        x = next;
    }
    update_listener(g);
    if (g->cap)
        release_holds(g);
}

struct cm_conn_guards *cm_conn_guards_new(struct event_base *base, struct cm_conn_cap *cap,
                                          double request_read_timeout_s, long long max_body_bytes)
{
    struct cm_conn_guards *g = cm_xcalloc(1, sizeof *g);
    g->base = base;
    g->cap = cap;
    g->read_timeout = request_read_timeout_s;
    g->max_body = max_body_bytes;
    if (cap) {
        g->cap_ev = event_new(base, -1, 0, cap_cb, g);
        pthread_mutex_lock(&cap->mu);
        cap->sets = cm_xrealloc(cap->sets, (cap->nsets + 1) * sizeof *cap->sets);
        cap->sets[cap->nsets++] = g;
        pthread_mutex_unlock(&cap->mu);
    }
    g->nbuckets = 256;
    g->buckets = cm_xcalloc(g->nbuckets, sizeof *g->buckets);
    g->sweep = event_new(base, -1, EV_PERSIST, sweep_cb, g);
    struct timeval tv = {0, SWEEP_MS * 1000};
    event_add(g->sweep, &tv);
    return g;
}

void cm_conn_guards_free(struct cm_conn_guards *g)
{
    if (!g)
        return;
    if (g->cap) {
        pthread_mutex_lock(&g->cap->mu);
        for (size_t i = 0; i < g->cap->nsets; i++)
            if (g->cap->sets[i] == g)
                g->cap->sets[i] = g->cap->sets[--g->cap->nsets];
        pthread_mutex_unlock(&g->cap->mu);
    }
    g->listener = NULL; /* freed with evhttp already */
    while (g->all)
        drop(g, g->all);
    if (g->cap_ev)
        event_free(g->cap_ev);
    if (g->hold_cfg)
        ev_token_bucket_cfg_free(g->hold_cfg);
    event_free(g->sweep);
    free(g->buckets);
    free(g);
}

void cm_conn_guards_set_listener(struct cm_conn_guards *g, struct evconnlistener *l)
{
    g->listener = l;
    g->paused = 0;
    update_listener(g);
}

void cm_conn_guards_on_output(struct cm_conn_guards *g, cm_conn_output_cb cb, void *arg)
{
    g->output_cb = cb;
    g->output_arg = arg;
}

static void output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct guard *x = arg;
    x->set->output_cb(buf, info, x->track.refused, x->set->output_arg);
}

/* A Content-Length body that cannot fit next to what is in memory now is
 * refused as soon as its head announces it (503 overloaded), instead of
 * being read until the budget is full. It is not reserved ahead: bytes count
 * as they arrive, so heads alone (a few hundred bytes each, never followed
 * by their bodies) cannot hold the budget. Bodies over the size limit are
 * left to evhttp's immediate 413. */
static int admit_body(void *arg, long long n)
{
    struct guard *x = arg;
    if (x->set->max_body > 0 && n > x->set->max_body)
        return 0;
    return cm_mem_budget_fits((size_t)n) ? 0 : -1;
}

void cm_conn_guards_add(struct cm_conn_guards *g, struct bufferevent *bev)
{
    struct guard *x = cm_xcalloc(1, sizeof *x);
    x->bev = bev;
    x->set = g;
    cm_http_track_init(&x->track);
    x->track.admit = admit_body;
    x->track.admit_arg = x;
    bufferevent_incref(bev);
    if (g->count + 1 > g->nbuckets)
        grow(g);
    size_t k = slot(g, bev);
    x->next = g->buckets[k];
    g->buckets[k] = x;
    x->lnext = g->all;
    if (g->all)
        g->all->lprev = x;
    g->all = x;
    g->count++;
    evbuffer_add_cb(bufferevent_get_input(bev), input_cb, x);
    if (g->output_cb)
        evbuffer_add_cb(bufferevent_get_output(bev), output_cb, x);
    if (!g->cap || !g->cap->max)
        return;
    unsigned open = atomic_fetch_add(&g->cap->open, 1) + 1;
    if (open > g->cap->max) {
        /* Another worker took the last place in the same instant (before
         * this one heard of it): this connection is held, not read (a rate
         * limit of one byte per hour) until a place frees, as if it were
         * still waiting in the kernel's backlog. */
        if (!g->hold_cfg) {
            struct timeval hour = {3600, 0};
            g->hold_cfg =
                ev_token_bucket_cfg_new(1, 1, EV_RATE_LIMIT_MAX, EV_RATE_LIMIT_MAX, &hour);
        }
        x->held = 1;
        g->nheld++;
        bufferevent_set_rate_limit(bev, g->hold_cfg);
        CM_WARN(NULL, "connection_cap", "%u connections open: holding one accepted at the cap",
                open - 1);
    }
    if (open >= g->cap->max)
        cap_changed(g);
}

void cm_conn_guards_busy(struct cm_conn_guards *g, struct bufferevent *bev, int busy)
{
    struct guard *x = bev ? find(g, bev) : NULL;
    if (!x)
        return;
    x->busy = busy;
    x->reading_since = 0;
    if (busy) {
        /* The server reserves the dispatched body itself. */
        cm_mem_budget_release(x->receiving);
        x->receiving = 0;
        x->paused = 0; /* evhttp stopped reading on its own */
    }
}

void cm_conn_guards_taken_over(struct cm_conn_guards *g, struct bufferevent *bev)
{
    struct guard *x = bev ? find(g, bev) : NULL;
    if (x)
        cm_http_track_off(&x->track);
}

unsigned cm_conn_guards_count(const struct cm_conn_guards *g)
{
    return g->count;
}

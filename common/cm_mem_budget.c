/* cm_mem_budget: process-wide request memory budget (see cm_mem_budget.h). */
#include "cm_mem_budget.h"

#include <jansson.h>
#include <malloc.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__SANITIZE_ADDRESS__)
#define CM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CM_ASAN 1
#endif
#endif
#ifdef CM_ASAN
#include <sanitizer/asan_interface.h>
#define ARENA_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#define ARENA_REDZONE 16 /* poisoned gap after each block: overruns are caught */
#define ARENA_HDR 16     /* the block's size, so that a free poisons all of it */
#else
#define ARENA_HDR 0
#define ARENA_POISON(p, n) ((void)(p), (void)(n))
#define ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#define ARENA_REDZONE 0
#endif

/* Shared by every event-loop thread. */
static atomic_size_t limit_bytes;
static atomic_size_t reserved_bytes;
static atomic_size_t json_bytes;

/* Saturating subtraction (a release never takes a counter below zero). */
static void sub_sat(atomic_size_t *c, size_t n)
{
    size_t cur = atomic_load_explicit(c, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(c, &cur, n > cur ? 0 : cur - n,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ------------------------------------------------------------ JSON arena */

#define ARENA_SIZE (64 * 1024)
#define ARENA_ALIGN 16

struct json_arena {
    size_t used;    /* bytes handed out since the scope began */
    size_t counted; /* of those, bytes added to json_bytes */
    int depth;      /* nested scopes */
    alignas(ARENA_ALIGN) unsigned char buf[ARENA_SIZE];
};

/* This thread's arena, and the one in use (NULL outside a scope). */
static _Thread_local struct json_arena thread_arena;
static _Thread_local struct json_arena *cur_arena;

static int in_arena(const struct json_arena *a, const void *p)
{
    uintptr_t u = (uintptr_t)p, b = (uintptr_t)a->buf;
    return u >= b && u < b + ARENA_SIZE;
}

void cm_json_scope_begin(void)
{
    struct json_arena *a = &thread_arena;
    if (a->depth++ == 0) {
        a->used = 0;
        a->counted = 0;
        cur_arena = a;
    }
}

void cm_json_scope_end(void)
{
    struct json_arena *a = &thread_arena;
    if (a->depth == 0 || --a->depth > 0)
        return;
    cur_arena = NULL;
    sub_sat(&json_bytes, a->counted);
    ARENA_POISON(a->buf, a->used);
    a->used = 0;
    a->counted = 0;
}

static void *budget_malloc(size_t n)
{
    struct json_arena *a = cur_arena;
    if (a) {
        size_t need =
            (n + ARENA_HDR + ARENA_REDZONE + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        if (need >= n && need <= ARENA_SIZE - a->used) {
            unsigned char *p = a->buf + a->used + ARENA_HDR;
#if ARENA_HDR
            ARENA_UNPOISON(p - ARENA_HDR, sizeof(size_t));
            *(size_t *)(void *)(p - ARENA_HDR) = n;
#endif
            a->used += need;
            a->counted += need;
            atomic_fetch_add_explicit(&json_bytes, need, memory_order_relaxed);
            ARENA_UNPOISON(p, n);
            return p;
        }
    }
    void *p = malloc(n);
    if (p)
        atomic_fetch_add_explicit(&json_bytes, malloc_usable_size(p), memory_order_relaxed);
    return p;
}

static void budget_free(void *p)
{
    if (!p)
        return;
    if (in_arena(&thread_arena, p)) {
        /* Released with the whole scope (and counted until then). */
#if ARENA_HDR
        ARENA_POISON(p, *(size_t *)(void *)((unsigned char *)p - ARENA_HDR));
#endif
        return;
    }
    sub_sat(&json_bytes, malloc_usable_size(p));
    free(p);
}

void cm_mem_budget_install(void)
{
    json_set_alloc_funcs(budget_malloc, budget_free);
}

void cm_mem_budget_set_limit(size_t limit)
{
    atomic_store(&limit_bytes, limit);
}

size_t cm_mem_budget_limit(void)
{
    return atomic_load(&limit_bytes);
}

size_t cm_mem_budget_used(void)
{
    return atomic_load(&reserved_bytes) + atomic_load(&json_bytes);
}

size_t cm_mem_budget_json_bytes(void)
{
    return atomic_load(&json_bytes);
}

int cm_mem_budget_fits(size_t n)
{
    return !limit_bytes || reserved_bytes + json_bytes + n <= limit_bytes;
}

int cm_mem_budget_reserve(size_t n)
{
    size_t limit = atomic_load_explicit(&limit_bytes, memory_order_relaxed);
    if (!limit) {
        atomic_fetch_add_explicit(&reserved_bytes, n, memory_order_relaxed);
        return 0;
    }
    size_t cur = atomic_load_explicit(&reserved_bytes, memory_order_relaxed);
    do {
        if (cur + atomic_load_explicit(&json_bytes, memory_order_relaxed) + n > limit)
            return -1;
    } while (!atomic_compare_exchange_weak_explicit(&reserved_bytes, &cur, cur + n,
                                                    memory_order_relaxed, memory_order_relaxed));
    return 0;
}

void cm_mem_budget_charge(size_t n)
{
    atomic_fetch_add_explicit(&reserved_bytes, n, memory_order_relaxed);
}

int cm_mem_budget_over(void)
{
    size_t limit = atomic_load_explicit(&limit_bytes, memory_order_relaxed);
    return limit && cm_mem_budget_used() > limit;
}

void cm_mem_budget_release(size_t n)
{
    sub_sat(&reserved_bytes, n);
}

size_t cm_mem_budget_json_estimate(const char *text, size_t len)
{
    size_t cost = len;
    int in_string = 0, in_token = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
            continue;
        }
        int token_char = (c >= '0' && c <= '9') || c == '-' || (c >= 'a' && c <= 'z');
        if (token_char && !in_token)
            cost += 40; /* number, true, false, null */
        in_token = token_char;
        switch (c) {
        case '"':
            in_string = 1;
            cost += 80;
            break;
        case '{':
            cost += 224;
            break;
        case '[':
            cost += 128;
            break;
        case ':':
            cost += 64;
            break;
        default:
            break;
        }
    }
    return cost;
}

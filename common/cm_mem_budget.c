/* cm_mem_budget: process-wide request memory budget (see cm_mem_budget.h). */
#include "cm_mem_budget.h"

#include <jansson.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Shared by llm_proxy's worker threads: atomic (each += and -= is one
 * atomic read-modify-write). */
static _Atomic size_t limit_bytes;
static _Atomic size_t reserved_bytes;
static _Atomic size_t json_bytes;

/* *x -= n, stopping at 0, as one atomic step. */
static void sub_floor(_Atomic size_t *x, size_t n)
{
    size_t old = *x;
    while (!atomic_compare_exchange_weak(x, &old, n > old ? 0 : old - n))
        ;
}

static void *budget_malloc(size_t n)
{
    void *p = malloc(n);
    if (p)
        json_bytes += malloc_usable_size(p);
    return p;
}

static void budget_free(void *p)
{
    if (!p)
        return;
    size_t n = malloc_usable_size(p);
    sub_floor(&json_bytes, n);
    free(p);
}

void cm_mem_budget_install(void)
{
    json_set_alloc_funcs(budget_malloc, budget_free);
}

void cm_mem_budget_set_limit(size_t limit)
{
    limit_bytes = limit;
}

size_t cm_mem_budget_limit(void)
{
    return limit_bytes;
}

size_t cm_mem_budget_used(void)
{
    return reserved_bytes + json_bytes;
}

size_t cm_mem_budget_json_bytes(void)
{
    return json_bytes;
}

int cm_mem_budget_fits(size_t n)
{
    return !limit_bytes || reserved_bytes + json_bytes + n <= limit_bytes;
}

int cm_mem_budget_reserve(size_t n)
{
    /* Check and add as one step: two workers never both take the last room. */
    size_t old = reserved_bytes;
    do {
        if (limit_bytes && old + json_bytes + n > limit_bytes)
            return -1;
    } while (!atomic_compare_exchange_weak(&reserved_bytes, &old, old + n));
    return 0;
}

void cm_mem_budget_charge(size_t n)
{
    reserved_bytes += n;
}

int cm_mem_budget_over(void)
{
    return limit_bytes && reserved_bytes + json_bytes > limit_bytes;
}

void cm_mem_budget_release(size_t n)
{
    sub_floor(&reserved_bytes, n);
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

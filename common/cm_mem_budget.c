/* cm_mem_budget: process-wide request memory budget (see cm_mem_budget.h). */
#include "cm_mem_budget.h"

#include <jansson.h>
#include <malloc.h>
#include <stdlib.h>

static size_t limit_bytes;
static size_t reserved_bytes;
static size_t json_bytes;
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
    json_bytes = n > json_bytes ? 0 : json_bytes - n;
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
    if (limit_bytes && reserved_bytes + json_bytes + n > limit_bytes)
        return -1;
    reserved_bytes += n;
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
    reserved_bytes = n > reserved_bytes ? 0 : reserved_bytes - n;
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

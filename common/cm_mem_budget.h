/*
 * cm_mem_budget: the process-wide budget for request memory
 * (LLM_PROXY_MAX_BODY_MEMORY): request bodies in flight plus every JSON
 * value alive in the process (parsed requests, translated upstream bodies,
 * replies being built).
 *
 * Bodies are reserved explicitly (cm_mem_budget_reserve/release). JSON
 * memory is counted by jansson's allocator hooks (cm_mem_budget_install,
 * before any jansson call): the live size of each block (malloc_usable_size)
 * is added on allocation and subtracted on free; allocations never fail on
 * account of the budget (replies in progress must finish). Admission is
 * decided before a parse, from cm_mem_budget_json_estimate().
 *
 * Process-wide counters, shared by every event-loop thread (C11 atomics).
 * No ownership beyond the counters.
 *
 * JSON scopes (per-request arena): between cm_json_scope_begin() and
 * cm_json_scope_end() on one thread, jansson allocates from that thread's
 * 64 KiB arena (then from malloc once it is full) and a free of arena memory
 * costs nothing; the scope's end releases the arena at once. Its bytes are
 * counted in the budget from allocation to the scope's end (never less than
 * without the arena). Contract for the code inside a scope: every JSON value
 * created in it is released before the scope ends and nothing keeps a pointer
 * into one (copy strings out). Scopes nest; the arena is thread-local, so
 * threads never share one. In ASan builds freed and released arena memory
 * is poisoned, so a value used past its scope is reported.
 */
#ifndef CM_MEM_BUDGET_H
#define CM_MEM_BUDGET_H

#include <stddef.h>

/* Installs the jansson hooks; call first thing in main. */
void cm_mem_budget_install(void);
/* See "JSON scopes" above. */
void cm_json_scope_begin(void);
void cm_json_scope_end(void);

/* limit in bytes; 0 = unlimited. */
void cm_mem_budget_set_limit(size_t limit);
size_t cm_mem_budget_limit(void);
/* Bytes counted now (reserved bodies + live JSON). */
size_t cm_mem_budget_used(void);
/* Live JSON bytes only (for measurements). */
size_t cm_mem_budget_json_bytes(void);

/* 1 when n more bytes fit under the limit now (nothing is reserved). */
int cm_mem_budget_fits(size_t n);
/* Reserves n bytes: 0, or -1 (nothing reserved) when it would exceed the
 * limit. */
int cm_mem_budget_reserve(size_t n);
void cm_mem_budget_release(size_t n);
/* Counts n bytes that are already in memory (a body being received), even
 * over the limit. */
void cm_mem_budget_charge(size_t n);
/* 1 when the bytes counted exceed the limit. */
int cm_mem_budget_over(void);

/* An upper estimate of the memory jansson needs to hold the parsed form of
 * this JSON text (measured on jansson 2.14: an empty object costs ~220
 * bytes, an array ~125, a string ~75 plus its length, a number ~35, an
 * object member ~60), from one string-aware pass over the text. Reserve it
 * before parsing: jansson does not survive failed allocations mid-parse, so
 * the budget must be checked before, not during. */
size_t cm_mem_budget_json_estimate(const char *text, size_t len);

#endif

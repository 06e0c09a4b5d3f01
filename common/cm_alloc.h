/*
 * cm_alloc: allocation wrappers that abort on out-of-memory.
 *
 * Following redis zmalloc and h2o_mem_alloc, running out of memory is not a
 * recoverable condition for these services: the wrappers log one line and
 * abort, so callers never check for NULL. Limits on data from outside are
 * enforced explicitly elsewhere (CM_ERR_LIMIT), never by allocation failure.
 *
 * Ownership: every pointer returned here is owned by the caller and released
 * with free().
 */
#ifndef CM_ALLOC_H
#define CM_ALLOC_H

#include <stddef.h>

void *cm_xmalloc(size_t n);
void *cm_xcalloc(size_t count, size_t n);
void *cm_xrealloc(void *p, size_t n);
char *cm_xstrdup(const char *s);
char *cm_xstrndup(const char *s, size_t n);
/* printf into a new string; caller frees. */
char *cm_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

/*
 * user_id: which user ids taken from Redis key names the worker stores, and
 * how they are written in logs.
 *
 * A user id is the part of user:{id}:messages between the prefix and the
 * suffix, any bytes Redis can hold. It is used as is (PostgreSQL user_id)
 * when it is 1..USER_ID_MAX bytes of valid UTF-8 without control characters;
 * any other id (empty, too long, not UTF-8, NUL or control bytes) is refused:
 * its keys are moved aside into quarantine (user:{id}:messages:invalid) by
 * the caller, with an error log and a metric, and never retried.
 *
 * Ownership: user_id_escape returns a malloc'd string, freed by the caller.
 */
#ifndef USER_ID_H
#define USER_ID_H

#include <stddef.h>

#define USER_ID_MAX 256

/* NULL when id[0..len) is usable, else a static reason. */
const char *user_id_problem(const char *id, size_t len);

/* Printable ASCII kept ('\\' doubled), every other byte as \xHH, at most
 * 120 bytes of the id then "...": safe in any log line. */
char *user_id_escape(const char *id, size_t len);

/* 1 when s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int user_id_utf8_valid(const char *s, size_t len);

#endif

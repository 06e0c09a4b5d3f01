/*
 * message: the one owner of the chat message format. Every element the chat
 * service RPUSHes to user:{user_id}:messages is parsed and validated here,
 * once, into a struct message that the rest of the worker uses; the JSON
 * array stored with a chunk is written and read back here too.
 *
 * Element: a JSON object {"role","content"} plus optional "room_id",
 * "timestamp", "message_id", "name"; unknown fields are kept (the element is
 * stored verbatim). An element is rejected, with a reason naming the field,
 * when anything downstream would refuse it, so PostgreSQL never sees a value
 * it cannot store and the summariser never sees a forged turn:
 *   - not valid JSON / not an object / duplicate keys / invalid UTF-8 / a NUL
 *     byte (raw or \u0000) / over MAX_MESSAGE_BYTES;
 *   - "content" missing, empty or not a string;
 *   - "role" not one of user, assistant, system, tool (absent = user);
 *   - a number jsonb cannot hold (exponent beyond +-1000, more than 16383
 *     digits after the point, or 131072 before it);
 *   - "timestamp" present (not null) but not a time: numbers and digit
 *     strings are unix seconds, milliseconds or microseconds by magnitude
 *     (< 1e11 s, < 1e14 ms, < 1e17 us); strings may be ISO 8601; the result
 *     must lie in years 1970..9999.
 * "name" is bounded (MESSAGE_NAME_MAX bytes, cut at a character boundary)
 * and sanitised (control characters become spaces); "room_id" and
 * "message_id" are strings or integers (others are ignored).
 *
 * Ownership: struct message owns its strings (message_deinit); role points
 * to a static name. Arrays from message_array_parse are freed with
 * message_array_free; strings returned by message_array_json are malloc'd.
 */
#ifndef MESSAGE_H
#define MESSAGE_H

#include <stddef.h>

#define MESSAGE_NAME_MAX 64

struct message {
    char *raw; /* the element exactly as stored in Redis */
    size_t raw_len;
    const char *role; /* static: "user", "assistant", "system" or "tool" */
    char *content;
    char *room_id;    /* NULL when absent */
    char *message_id; /* NULL when absent; the idempotency key when present */
    char *name;       /* sanitised; NULL when absent */
    double ts;        /* unix seconds; < 0 when absent */
};

/* Returns 0, or -1 with a reason in err (the message is then untouched). */
int message_parse(const char *raw, size_t len, size_t max_bytes, struct message *out, char *err,
                  size_t errlen);
void message_deinit(struct message *m);

/* "1716800000", "1716800000123" (ms), "2024-05-27T10:00:00Z", "...+02:00"
 * -> unix seconds, or -1 when s is not a time in range. */
double message_parse_time(const char *s);
/* A numeric timestamp (s, ms or us by magnitude) -> unix seconds, or -1. */
double message_time_from_number(double v);

/* The JSON array of msgs[0..n)'s elements, verbatim (for the chunk row). */
char *message_array_json(const struct message *msgs, size_t n);
/* Parses a stored chunk array back; 0, or -1 with a reason in err. */
int message_array_parse(const char *json, size_t len, struct message **msgs, size_t *n, char *err,
                        size_t errlen);
void message_array_free(struct message *msgs, size_t n);

#endif

/*
 * message: one chat message as the chat service RPUSHes it to
 * user:{user_id}:messages, validated.
 *
 * Element: JSON {"role","content"} plus optional "room_id", "timestamp"
 * (unix seconds or ISO 8601), "message_id", "name"; unknown fields are
 * tolerated. An element that is not valid JSON, has no string content, or is
 * over the size limit is rejected with a reason (kept as a dead message by
 * the caller, never dropped).
 *
 * Ownership: struct message owns its strings and raw copy (message_deinit).
 */
#ifndef MESSAGE_H
#define MESSAGE_H

#include <stddef.h>

struct message {
    char *raw; /* the element exactly as stored in Redis */
    size_t raw_len;
    char *role; /* "user" when absent */
    char *content;
    char *room_id; /* NULL when absent */
    char *message_id;
    char *name;
    double ts; /* unix seconds; < 0 when absent */
};

/* Returns 0, or -1 with a reason in err (the message is then untouched). */
int message_parse(const char *raw, size_t len, size_t max_bytes, struct message *out, char *err,
                  size_t errlen);
void message_deinit(struct message *m);

/* "1716800000", "1716800000.5", "2024-05-27T10:00:00Z", "...+02:00" -> seconds, or -1. */
double message_parse_time(const char *s);

#endif

/*
 * chunker: deterministic split of one claim's messages into chunks.
 *
 * Messages are grouped by room (rooms in order of first appearance, messages
 * in their original order) and each group is cut into chunks of at most
 * CHUNK_MAX_MESSAGES messages and CHUNK_MAX_CHARS characters of content; a
 * message is never split (a longer one is a chunk alone) and rooms are never
 * mixed. Each chunk's hash is SHA-256 over the claim id, the user id and the
 * raw elements, so re-persisting the same claim after a crash produces the
 * same hashes (idempotent), while equal messages in another claim do not
 * collide.
 *
 * Ownership: chunks borrow the struct message array given to chunker_split;
 * free the chunk array with chunker_free.
 */
#ifndef CHUNKER_H
#define CHUNKER_H

#include "message.h"

#include <stddef.h>

struct chunk {
    const struct message *msgs; /* borrowed: msgs[0..count) */
    size_t count;
    const char *room_id;      /* borrowed; NULL = no room */
    char hash[65];            /* hex SHA-256 */
    double first_ts, last_ts; /* < 0 when unknown */
};

/*
 * Splits msgs (n) into chunks. Because grouping by room reorders, msgs is
 * reordered in place (stable within each room). Returns the chunk array
 * (*nchunks entries); caller frees with chunker_free.
 */
struct chunk *chunker_split(struct message *msgs, size_t n, size_t max_messages, size_t max_chars,
                            const char *user_id, const char *claim_id, size_t *nchunks);
void chunker_free(struct chunk *chunks);

/*
 * The chunks still to store once PostgreSQL has said what it holds: chunks
 * with exists[c] set are left out (already stored: a re-persisted claim),
 * and so are messages with drop[k] set (k counts every chunk's messages in
 * order; their message_id is already stored). A chunk keeps its hash. The
 * result's msgs point into *storage (shallow copies of the messages, which
 * stay owned by the caller's array): free both with chunker_free and free().
 */
struct chunk *chunker_without(const struct chunk *chunks, size_t nchunks,
                              const unsigned char *exists, const unsigned char *drop,
                              struct message **storage, size_t *nout);

#endif

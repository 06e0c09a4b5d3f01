/* chunker: deterministic chunking and hashing (see chunker.h). */
#include "chunker.h"

#include "cm_alloc.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

static int same_room(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Stable grouping by room, rooms in order of first appearance. */
static void group_by_room(struct message *msgs, size_t n)
{
    struct message *out = cm_xmalloc((n ? n : 1) * sizeof *out);
    char *taken = cm_xcalloc(n ? n : 1, 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (taken[i])
            continue;
        for (size_t j = i; j < n; j++) {
            if (!taken[j] && same_room(msgs[i].room_id, msgs[j].room_id)) {
                out[k++] = msgs[j];
                taken[j] = 1;
            }
        }
    }
    memcpy(msgs, out, n * sizeof *out);
    free(out);
    free(taken);
}

static void hash_chunk(struct chunk *c, const char *user_id, const char *claim_id)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, claim_id, strlen(claim_id) + 1);
    EVP_DigestUpdate(md, user_id, strlen(user_id) + 1);
    for (size_t i = 0; i < c->count; i++) {
        unsigned char len[8];
        size_t l = c->msgs[i].raw_len;
        for (int b = 0; b < 8; b++)
            len[b] = (unsigned char)(l >> (8 * b));
        EVP_DigestUpdate(md, len, sizeof len);
        EVP_DigestUpdate(md, c->msgs[i].raw, l);
    }
    unsigned char digest[32];
    unsigned int dl = 0;
    EVP_DigestFinal_ex(md, digest, &dl);
    EVP_MD_CTX_free(md);
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        c->hash[2 * i] = hex[digest[i] >> 4];
        c->hash[2 * i + 1] = hex[digest[i] & 15];
    }
    c->hash[64] = '\0';
}

struct chunk *chunker_split(struct message *msgs, size_t n, size_t max_messages, size_t max_chars,
                            const char *user_id, const char *claim_id, size_t *nchunks)
{
    group_by_room(msgs, n);
    struct chunk *chunks = cm_xcalloc(n ? n : 1, sizeof *chunks);
    size_t nc = 0;
    size_t i = 0;
    while (i < n) {
        struct chunk *c = &chunks[nc++];
        c->msgs = &msgs[i];
        c->room_id = msgs[i].room_id;
        size_t chars = 0;
        while (i < n && c->count < max_messages && same_room(msgs[i].room_id, c->room_id)) {
            size_t l = strlen(msgs[i].content);
            if (c->count > 0 && chars + l > max_chars)
                break;
            chars += l;
            c->count++;
            i++;
        }
        c->first_ts = c->last_ts = -1;
        for (size_t k = 0; k < c->count; k++) {
            double t = c->msgs[k].ts;
            if (t < 0)
                continue;
            if (c->first_ts < 0 || t < c->first_ts)
                c->first_ts = t;
            if (t > c->last_ts)
                c->last_ts = t;
        }
        hash_chunk(c, user_id, claim_id);
    }
    *nchunks = nc;
    return chunks;
}

void chunker_free(struct chunk *chunks)
{
    free(chunks);
}

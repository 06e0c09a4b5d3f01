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

/* FNV-1a of a room id (NULL rooms are kept apart by the caller). */
static size_t room_hash(const char *s)
{
    size_t h = (size_t)1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * (size_t)1099511628211ULL;
    return h;
}

/*
 * Stable grouping by room, rooms in order of first appearance, in linear
 * time: an open-addressing table maps each room to its group, then each
 * message is placed at its group's next slot (a counting sort).
 */
static void group_by_room(struct message *msgs, size_t n)
{
    if (n < 2)
        return;
    size_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    size_t *slot_group = cm_xmalloc(cap * sizeof *slot_group);    /* group + 1; 0 = free */
    const char **slot_room = cm_xmalloc(cap * sizeof *slot_room); /* borrowed */
    memset(slot_group, 0, cap * sizeof *slot_group);
    size_t *group_of = cm_xmalloc(n * sizeof *group_of);
    size_t *group_count = cm_xcalloc(n + 1, sizeof *group_count);
    size_t ngroups = 0, null_group = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        const char *room = msgs[i].room_id;
        size_t g;
        if (!room) {
            if (null_group == (size_t)-1)
                null_group = ngroups++;
            g = null_group;
        } else {
            size_t k = room_hash(room) & (cap - 1);
            while (slot_group[k] && strcmp(slot_room[k], room) != 0)
                k = (k + 1) & (cap - 1);
            if (!slot_group[k]) {
                slot_group[k] = ++ngroups;
                slot_room[k] = room;
            }
            g = slot_group[k] - 1;
        }
        group_of[i] = g;
        group_count[g]++;
    }
    size_t *next = cm_xmalloc((ngroups + 1) * sizeof *next);
    size_t off = 0;
    for (size_t g = 0; g < ngroups; g++) {
        next[g] = off;
        off += group_count[g];
    }
    struct message *out = cm_xmalloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[next[group_of[i]]++] = msgs[i];
    memcpy(msgs, out, n * sizeof *out);
    free(out);
    free(next);
    free(group_count);
    free(group_of);
    free(slot_room);
    free(slot_group);
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

static void set_times(struct chunk *c)
{
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
        set_times(c);
        hash_chunk(c, user_id, claim_id);
    }
    *nchunks = nc;
    return chunks;
}

void chunker_free(struct chunk *chunks)
{
    free(chunks);
}

struct chunk *chunker_without(const struct chunk *chunks, size_t nchunks,
                              const unsigned char *exists, const unsigned char *drop,
                              struct message **storage, size_t *nout)
{
    size_t total = 0;
    for (size_t c = 0; c < nchunks; c++)
        total += chunks[c].count;
    struct message *keep = cm_xcalloc(total ? total : 1, sizeof *keep);
    struct chunk *out = cm_xcalloc(nchunks ? nchunks : 1, sizeof *out);
    size_t nk = 0, no = 0, k = 0;
    for (size_t c = 0; c < nchunks; c++) {
        size_t first = nk;
        for (size_t m = 0; m < chunks[c].count; m++, k++)
            if (!exists[c] && !drop[k])
                keep[nk++] = chunks[c].msgs[m];
        if (nk == first)
            continue;
        struct chunk *o = &out[no++];
        *o = chunks[c];
        o->msgs = &keep[first];
        o->count = nk - first;
        set_times(o);
    }
    *storage = keep;
    *nout = no;
    return out;
}

/*
 * redis_claim: taking a user's messages out of Redis atomically, fenced
 * (sync hiredis; one connection per thread).
 *
 * Keys for user U:
 *   user:U:messages              live list (the chat service RPUSHes here)
 *   user:U:messages:claim        the claimed batch (renamed from the live key)
 *   user:U:messages:claim:meta   hash {id: claim id, token: fencing token,
 *                                owner: worker}
 *   user:U:messages:claim:lease  the holder's token, with a TTL (LEASE_TIMEOUT)
 *   user:U:messages:invalid      quarantine: keys of the wrong type and the
 *                                lists of refused user ids (see user_id.h)
 *
 * The claim id names the batch (chunk hashes derive from it, so a resumed
 * claim re-persists idempotently); the token names one take of it. Taking a
 * claim (new or resumed) writes a fresh token to meta and lease. Every later
 * step (read, renew, delete, unlease) is a Lua compare-and-act: it runs only
 * while meta's token is still the caller's (and the lease is the caller's or
 * has lapsed with nobody else taking over), else it answers
 * REDIS_CLAIM_FENCED and does nothing. So a worker that stalled past its
 * lease can neither read a newer batch under its old claim id nor delete a
 * batch another worker took.
 *
 * States of a user's claim (Redis is the source of truth):
 *   none --take(live exists)--> claimed(id, token)
 *   claimed --take by another after the lease lapsed--> claimed(id, token')
 *   claimed --delete(token)--> none;   claimed --unlease(token)--> lapsed
 *
 * Errors: functions return REDIS_CLAIM_OK (0) or a negative enum
 * redis_claim_err. REDIS_CLAIM_DOWN means Redis itself failed (connection,
 * LOADING, READONLY, OOM...): stop the pass. REDIS_CLAIM_USER means this
 * user's keys made the command fail (e.g. WRONGTYPE): skip the user.
 *
 * Ownership: arrays returned through out-parameters are malloc'd, freed by
 * the caller (redis_claim_free_users, redis_claim_free_list).
 */
#ifndef REDIS_CLAIM_H
#define REDIS_CLAIM_H

#include <stddef.h>

struct rclient;

struct rclient *rclient_connect(const char *url, double timeout_s, char *err, size_t errlen);
void rclient_free(struct rclient *rc);
/* 0 when Redis answers PING. */
int rclient_ping(struct rclient *rc);

enum redis_claim_err {
    REDIS_CLAIM_OK = 0,
    REDIS_CLAIM_DOWN = -1,   /* Redis failed: stop the pass */
    REDIS_CLAIM_USER = -2,   /* this user's keys are unusable: skip the user */
    REDIS_CLAIM_FENCED = -3, /* the claim is no longer ours: do nothing more */
};

/* A user id as found in a key name: any bytes (not NUL-terminated data;
 * id[len] is a NUL for convenience). */
struct redis_user {
    char *id;
    size_t len;
};

/* User ids with a live list or a claim, each once. 0 or REDIS_CLAIM_DOWN. */
int redis_claim_scan_users(struct rclient *rc, struct redis_user **users, size_t *n);
void redis_claim_free_users(struct redis_user *users, size_t n);

enum claim_status {
    CLAIM_NONE = 0,    /* nothing to claim */
    CLAIM_NEW = 1,     /* the live list became a claim */
    CLAIM_RESUMED = 2, /* a lapsed claim was taken over */
    CLAIM_BUSY = 3,    /* another worker holds the lease */
    CLAIM_MOVED = 4,   /* a key of the wrong type was moved to quarantine */
};

struct claim {
    enum claim_status status;
    char id[40];     /* batch id */
    char token[40];  /* this take's fencing token */
    char detail[96]; /* CLAIM_MOVED: which key, of which type */
};

int redis_claim_take(struct rclient *rc, const struct redis_user *u, const char *worker_id,
                     double lease_s, struct claim *out);
/* Reads the whole claimed list (renewing the lease). */
int redis_claim_read(struct rclient *rc, const struct redis_user *u, const struct claim *c,
                     double lease_s, char ***items, size_t **lens, size_t *n);
/* Text of the last error (for logs); borrowed. */
const char *rclient_last_error(const struct rclient *rc);
/* Extends the lease while work continues. */
int redis_claim_renew(struct rclient *rc, const struct redis_user *u, const struct claim *c,
                      double lease_s);
/* Deletes the claim (after it is safely in PostgreSQL). */
int redis_claim_delete(struct rclient *rc, const struct redis_user *u, const struct claim *c);
/* Gives the lease up early (the claim stays for a later retry). */
int redis_claim_unlease(struct rclient *rc, const struct redis_user *u, const struct claim *c);
/* Moves the user's live list and claim to user:U:messages:invalid (a
 * refused user id). *moved: elements moved. */
int redis_claim_quarantine(struct rclient *rc, const struct redis_user *u, long long *moved);
/* Erasure: deletes the user's live list, claim (with its meta and lease,
 * so the holder of the claim is fenced) and quarantine in one DEL.
 * *deleted: keys that existed. */
int redis_claim_erase(struct rclient *rc, const struct redis_user *u, long long *deleted);
/* Total length of live lists and claims (for the queue-depth gauge); -1 on error. */
long long redis_claim_backlog(struct rclient *rc);

void redis_claim_free_list(char **items, size_t *lens, size_t n);

#endif

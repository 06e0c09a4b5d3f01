/*
 * redis_claim: taking a user's messages out of Redis atomically (sync
 * hiredis; one connection per thread).
 *
 * Keys for user U:
 *   user:U:messages              live list (the chat service RPUSHes here)
 *   user:U:messages:claim        the claimed batch (renamed from the live key)
 *   user:U:messages:claim:meta   hash {id: claim id, owner: worker}
 *   user:U:messages:claim:lease  owner, with a TTL (LEASE_TIMEOUT)
 *
 * A Lua script takes the lease (SET NX EX) and then either resumes an
 * existing claim (a crashed worker's) or RENAMEs the live key to the claim
 * key, which cannot overwrite since the claim key does not exist at that
 * point. Messages pushed meanwhile start a new live list. After the claim is
 * in PostgreSQL, redis_claim_delete() removes the claim keys.
 *
 * Ownership: strings returned through out-parameters are malloc'd, freed by
 * the caller (redis_claim_free_list for arrays).
 */
#ifndef REDIS_CLAIM_H
#define REDIS_CLAIM_H

#include <stddef.h>

struct rclient;

struct rclient *rclient_connect(const char *url, double timeout_s, char *err, size_t errlen);
void rclient_free(struct rclient *rc);
/* 0 when Redis answers PING. */
int rclient_ping(struct rclient *rc);

/* User ids with a live list or a claim. Returns 0 or -1 (connection broken). */
int redis_claim_scan_users(struct rclient *rc, char ***ids, size_t *n);

enum claim_status { CLAIM_NONE = 0, CLAIM_NEW = 1, CLAIM_RESUMED = 2, CLAIM_BUSY = 3 };

/* Claims user's messages. claim_id (>= 40 bytes) receives the claim's id. */
int redis_claim_take(struct rclient *rc, const char *user_id, const char *worker_id, double lease_s,
                     enum claim_status *status, char *claim_id, size_t idlen);
/* Reads the whole claimed list. */
int redis_claim_read(struct rclient *rc, const char *user_id, char ***items, size_t **lens,
                     size_t *n);
/* Deletes the claim (after it is safely in PostgreSQL). */
int redis_claim_delete(struct rclient *rc, const char *user_id);
/* Gives the lease up early (the claim stays for a later retry). */
int redis_claim_unlease(struct rclient *rc, const char *user_id);
/* Total length of live lists and claims (for the queue-depth gauge). */
long long redis_claim_backlog(struct rclient *rc);

void redis_claim_free_list(char **items, size_t *lens, size_t n);

#endif

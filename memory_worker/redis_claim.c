/* redis_claim: atomic claims of user message lists (see redis_claim.h). */
#include "redis_claim.h"

#include "cm_alloc.h"
#include "cm_log.h"

#include <hiredis.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rclient {
    redisContext *c;
};

/* KEYS: live, claim, meta, lease; ARGV: worker, lease seconds, new claim id.
 * Returns {status, claim id}. */
static const char CLAIM_LUA[] =
    "if not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then return {3, ''} end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  local id = redis.call('HGET', KEYS[3], 'id')\n"
    "  if not id then id = ARGV[3]; redis.call('HSET', KEYS[3], 'id', id) end\n"
    "  redis.call('HSET', KEYS[3], 'owner', ARGV[1])\n"
    "  return {2, id}\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[4]); return {0, ''} end\n"
    "redis.call('RENAME', KEYS[1], KEYS[2])\n"
    "redis.call('HSET', KEYS[3], 'id', ARGV[3], 'owner', ARGV[1])\n"
    "return {1, ARGV[3]}\n";

/* redis://[[user]:password@]host[:port][/db] */
static int parse_url(const char *url, char *host, size_t hl, int *port, char *pass, size_t pl,
                     int *db)
{
    const char *p = url + strlen("redis://");
    *port = 6379;
    *db = 0;
    pass[0] = '\0';
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        snprintf(pass, pl, "%.*s", (int)(at - pw), pw);
        p = at + 1;
    }
    const char *end = p + strcspn(p, ":/");
    snprintf(host, hl, "%.*s", (int)(end - p), p);
    if (*end == ':')
        *port = atoi(end + 1);
    const char *slash = strchr(end, '/');
    if (slash && slash[1])
        *db = atoi(slash + 1);
    return host[0] ? 0 : -1;
}

struct rclient *rclient_connect(const char *url, double timeout_s, char *err, size_t errlen)
{
    char host[256], pass[256];
    int port, db;
    if (parse_url(url, host, sizeof host, &port, pass, sizeof pass, &db) != 0) {
        snprintf(err, errlen, "bad REDIS_URL");
        return NULL;
    }
    struct timeval tv = {(time_t)timeout_s,
                         (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "redis %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (pass[0]) {
        r = redisCommand(c, "AUTH %s", pass);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis AUTH failed");
            goto fail;
        }
        freeReplyObject(r);
    }
    if (db) {
        r = redisCommand(c, "SELECT %d", db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis SELECT %d failed", db);
            goto fail;
        }
        freeReplyObject(r);
    }
    struct rclient *rc = cm_xcalloc(1, sizeof *rc);
    rc->c = c;
    return rc;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}

void rclient_free(struct rclient *rc)
{
    if (!rc)
        return;
    redisFree(rc->c);
    free(rc);
}

static redisReply *cmd_ok(struct rclient *rc, redisReply *r, const char *what)
{
    if (!r) {
        CM_WARN(NULL, "redis_error", "%s: %s", what, rc->c->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        CM_WARN(NULL, "redis_error", "%s: %s", what, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

int rclient_ping(struct rclient *rc)
{
    redisReply *r = cmd_ok(rc, redisCommand(rc->c, "PING"), "PING");
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

static void add_unique(char ***ids, size_t *n, const char *id, size_t len)
{
    for (size_t i = 0; i < *n; i++)
        if (strlen((*ids)[i]) == len && memcmp((*ids)[i], id, len) == 0)
            return;
    *ids = cm_xrealloc(*ids, (*n + 1) * sizeof(char *));
    (*ids)[(*n)++] = cm_xstrndup(id, len);
}

int redis_claim_scan_users(struct rclient *rc, char ***ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    static const char *const patterns[] = {"user:*:messages", "user:*:messages:claim"};
    static const char *const suffixes[] = {":messages", ":messages:claim"};
    for (int p = 0; p < 2; p++) {
        char cursor[32] = "0";
        do {
            redisReply *r = cmd_ok(
                rc, redisCommand(rc->c, "SCAN %s MATCH %s COUNT 500", cursor, patterns[p]), "SCAN");
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                if (r)
                    freeReplyObject(r);
                redis_claim_free_list(*ids, NULL, *n);
                *ids = NULL;
                *n = 0;
                return -1;
            }
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            redisReply *keys = r->element[1];
            size_t sl = strlen(suffixes[p]);
            for (size_t i = 0; i < keys->elements; i++) {
                const char *k = keys->element[i]->str;
                size_t kl = keys->element[i]->len;
                if (kl <= 5 + sl || memcmp(k + kl - sl, suffixes[p], sl) != 0)
                    continue;
                add_unique(ids, n, k + 5, kl - 5 - sl);
            }
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0);
    }
    return 0;
}

static void keys_for(const char *user, char live[], char claim[], char meta[], char lease[],
                     size_t len)
{
    snprintf(live, len, "user:%s:messages", user);
    snprintf(claim, len, "user:%s:messages:claim", user);
    snprintf(meta, len, "user:%s:messages:claim:meta", user);
    snprintf(lease, len, "user:%s:messages:claim:lease", user);
}

#define KEYLEN 600

int redis_claim_take(struct rclient *rc, const char *user_id, const char *worker_id, double lease_s,
                     enum claim_status *status, char *claim_id, size_t idlen)
{
    char live[KEYLEN], claim[KEYLEN], meta[KEYLEN], lease[KEYLEN];
    if (strlen(user_id) > 400)
        return -1;
    keys_for(user_id, live, claim, meta, lease, KEYLEN);
    unsigned char raw[16];
    RAND_bytes(raw, sizeof raw);
    char newid[40];
    for (int i = 0; i < 16; i++)
        snprintf(newid + 2 * i, 3, "%02x", raw[i]);
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)(lease_s * 1000));
    const char *argv[] = {"EVAL", CLAIM_LUA, "4", live, claim, meta, lease, worker_id, ms, newid};
    redisReply *r = cmd_ok(rc, redisCommandArgv(rc->c, 10, argv, NULL), "claim script");
    if (!r)
        return -1;
    int rcode = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER) {
        *status = (enum claim_status)r->element[0]->integer;
        snprintf(claim_id, idlen, "%s", r->element[1]->str ? r->element[1]->str : "");
        rcode = 0;
    }
    freeReplyObject(r);
    return rcode;
}

int redis_claim_read(struct rclient *rc, const char *user_id, char ***items, size_t **lens,
                     size_t *n)
{
    char key[KEYLEN];
    snprintf(key, sizeof key, "user:%s:messages:claim", user_id);
    *items = NULL;
    *lens = NULL;
    *n = 0;
    for (long long start = 0;; start += 1000) {
        redisReply *r = cmd_ok(
            rc, redisCommand(rc->c, "LRANGE %s %lld %lld", key, start, start + 999), "LRANGE");
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            if (r)
                freeReplyObject(r);
            redis_claim_free_list(*items, *lens, *n);
            *items = NULL;
            *lens = NULL;
            *n = 0;
            return -1;
        }
        size_t got = r->elements;
        *items = cm_xrealloc(*items, (*n + got + 1) * sizeof(char *));
        *lens = cm_xrealloc(*lens, (*n + got + 1) * sizeof(size_t));
        for (size_t i = 0; i < got; i++) {
            (*items)[*n] =
                cm_xstrndup(r->element[i]->str ? r->element[i]->str : "", r->element[i]->len);
            (*lens)[*n] = r->element[i]->len;
            (*n)++;
        }
        freeReplyObject(r);
        if (got < 1000)
            return 0;
    }
}

int redis_claim_delete(struct rclient *rc, const char *user_id)
{
    char live[KEYLEN], claim[KEYLEN], meta[KEYLEN], lease[KEYLEN];
    keys_for(user_id, live, claim, meta, lease, KEYLEN);
    redisReply *r = cmd_ok(rc, redisCommand(rc->c, "DEL %s %s %s", claim, meta, lease), "DEL");
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

int redis_claim_unlease(struct rclient *rc, const char *user_id)
{
    char key[KEYLEN];
    snprintf(key, sizeof key, "user:%s:messages:claim:lease", user_id);
    redisReply *r = cmd_ok(rc, redisCommand(rc->c, "DEL %s", key), "DEL lease");
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

long long redis_claim_backlog(struct rclient *rc)
{
    char **ids;
    size_t n;
    if (redis_claim_scan_users(rc, &ids, &n) != 0)
        return -1;
    long long total = 0;
    for (size_t i = 0; i < n; i++) {
        char key[KEYLEN];
        for (int k = 0; k < 2; k++) {
            snprintf(key, sizeof key, k ? "user:%s:messages:claim" : "user:%s:messages", ids[i]);
            redisReply *r = redisCommand(rc->c, "LLEN %s", key);
            if (r && r->type == REDIS_REPLY_INTEGER)
                total += r->integer;
            if (r)
                freeReplyObject(r);
        }
    }
    redis_claim_free_list(ids, NULL, n);
    return total;
}

void redis_claim_free_list(char **items, size_t *lens, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
    free(lens);
}

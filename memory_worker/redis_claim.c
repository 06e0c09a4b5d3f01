/* redis_claim: atomic, fenced claims of user message lists (see redis_claim.h). */
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
    char last_error[200];
};

/* Moves a key aside to the quarantine key (appending when both are lists,
 * else under a unique suffix): never overwrites anything. */
#define LUA_ASIDE                                                                                  \
    "local function aside(src, dst, suffix)\n"                                                     \
    "  local st = redis.call('TYPE', src).ok\n"                                                    \
    "  if st == 'none' then return 0 end\n"                                                        \
    "  local n = 1\n"                                                                              \
    "  if st == 'list' then n = redis.call('LLEN', src) end\n"                                     \
    "  local dt = redis.call('TYPE', dst).ok\n"                                                    \
    "  if dt == 'none' then redis.call('RENAME', src, dst) return n end\n"                         \
    "  if st == 'list' and dt == 'list' then\n"                                                    \
    "    while true do\n"                                                                          \
    "      local v = redis.call('LPOP', src)\n"                                                    \
    "      if not v then break end\n"                                                              \
    "      redis.call('RPUSH', dst, v)\n"                                                          \
    "    end\n"                                                                                    \
    "    return n\n"                                                                               \
    "  end\n"                                                                                      \
    "  redis.call('RENAME', src, dst .. ':' .. suffix)\n"                                          \
    "  return n\n"                                                                                 \
    "end\n"

/* KEYS: live, claim, meta, lease, invalid; ARGV: worker, lease ms, new
 * claim id, new token. Returns {status, claim id, detail}. */
static const char CLAIM_LUA[] = LUA_ASIDE
    "local tl = redis.call('TYPE', KEYS[1]).ok\n"
    "if tl ~= 'none' and tl ~= 'list' then\n"
    "  aside(KEYS[1], KEYS[5], ARGV[3])\n"
    "  return {4, '', 'user:{id}:messages was a ' .. tl}\n"
    "end\n"
    "local tc = redis.call('TYPE', KEYS[2]).ok\n"
    "if tc ~= 'none' and tc ~= 'list' then\n"
    "  aside(KEYS[2], KEYS[5], ARGV[3])\n"
    "  return {4, '', 'user:{id}:messages:claim was a ' .. tc}\n"
    "end\n"
    "local tm = redis.call('TYPE', KEYS[3]).ok\n"
    "if tm ~= 'none' and tm ~= 'hash' then redis.call('DEL', KEYS[3]) end\n"
    "local ts = redis.call('TYPE', KEYS[4]).ok\n"
    "if ts ~= 'none' and (ts ~= 'string' or redis.call('PTTL', KEYS[4]) < 0) then\n"
    "  redis.call('DEL', KEYS[4])\n"
    "end\n"
    "if not redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[2]) then return {3, '', ''} end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  local id = redis.call('HGET', KEYS[3], 'id')\n"
    "  if not id then id = ARGV[3] end\n"
    "  redis.call('HSET', KEYS[3], 'id', id, 'token', ARGV[4], 'owner', ARGV[1])\n"
    "  return {2, id, ''}\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[4]) return {0, '', ''} end\n"
    "redis.call('DEL', KEYS[3])\n"
    "redis.call('RENAME', KEYS[1], KEYS[2])\n"
    "redis.call('HSET', KEYS[3], 'id', ARGV[3], 'token', ARGV[4], 'owner', ARGV[1])\n"
    "return {1, ARGV[3], ''}\n";

/* The fence: KEYS claim, meta, lease; ARGV token, lease ms. Acts only while
 * meta's token is ours and the lease is ours or lapsed (then retaken). */
#define LUA_FENCE                                                                                  \
    "if redis.call('HGET', KEYS[2], 'token') ~= ARGV[1] then\n"                                    \
    "  return redis.error_reply('FENCED the claim was taken over')\n"                              \
    "end\n"                                                                                        \
    "local l = redis.call('GET', KEYS[3])\n"                                                       \
    "if l and l ~= ARGV[1] then return redis.error_reply('FENCED the lease is held by another') "  \
    "end\n"                                                                                        \
    "redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])\n"

/* + ARGV start, stop */
static const char READ_LUA[] = LUA_FENCE "return redis.call('LRANGE', KEYS[1], ARGV[3], ARGV[4])\n";
static const char RENEW_LUA[] = LUA_FENCE "return 1\n";
static const char DELETE_LUA[] = LUA_FENCE "return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])\n";
static const char UNLEASE_LUA[] = LUA_FENCE "return redis.call('DEL', KEYS[3])\n";

/* KEYS: live, claim, meta, lease, invalid; ARGV: suffix. */
static const char QUARANTINE_LUA[] =
    LUA_ASIDE "local n = aside(KEYS[2], KEYS[5], ARGV[1]) + aside(KEYS[1], KEYS[5], ARGV[1])\n"
              "redis.call('DEL', KEYS[3], KEYS[4])\n"
              "return n\n";

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

const char *rclient_last_error(const struct rclient *rc)
{
    return rc->last_error;
}

/* Classifies a reply: REDIS_CLAIM_OK (reply kept in *out), or an error
 * (reply freed, text in rc->last_error). */
static int classify(struct rclient *rc, redisReply *r, redisReply **out)
{
    static const char *const down[] = {"LOADING",  "READONLY", "MASTERDOWN", "OOM",
                                       "BUSY",     "NOAUTH",   "NOPERM",     "CLUSTERDOWN",
                                       "TRYAGAIN", "MISCONF",  "NOREPLICAS", "NOSCRIPT"};
    *out = NULL;
    if (!r) {
        snprintf(rc->last_error, sizeof rc->last_error, "%s", rc->c->errstr);
        return REDIS_CLAIM_DOWN;
    }
    if (r->type != REDIS_REPLY_ERROR) {
        *out = r;
        return REDIS_CLAIM_OK;
    }
    snprintf(rc->last_error, sizeof rc->last_error, "%s", r->str ? r->str : "error");
    int code = REDIS_CLAIM_USER;
    if (r->str && strncmp(r->str, "FENCED", 6) == 0)
        code = REDIS_CLAIM_FENCED;
    for (size_t i = 0; r->str && i < sizeof down / sizeof down[0]; i++)
        if (strncmp(r->str, down[i], strlen(down[i])) == 0)
            code = REDIS_CLAIM_DOWN;
    freeReplyObject(r);
    return code;
}

int rclient_ping(struct rclient *rc)
{
    redisReply *r;
    if (classify(rc, redisCommand(rc->c, "PING"), &r) != 0)
        return -1;
    freeReplyObject(r);
    return 0;
}

static int user_cmp(const void *a, const void *b)
{
    const struct redis_user *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->id, y->id, x->len);
}

int redis_claim_scan_users(struct rclient *rc, struct redis_user **users, size_t *n)
{
    *users = NULL;
    *n = 0;
    size_t cap = 0;
    static const char *const patterns[] = {"user:*:messages", "user:*:messages:claim"};
    static const char *const suffixes[] = {":messages", ":messages:claim"};
    for (int p = 0; p < 2; p++) {
        char cursor[32] = "0";
        do {
            redisReply *r;
            if (classify(rc, redisCommand(rc->c, "SCAN %s MATCH %s COUNT 500", cursor, patterns[p]),
                         &r) != 0 ||
                r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
                if (r)
                    freeReplyObject(r);
                redis_claim_free_users(*users, *n);
                *users = NULL;
                *n = 0;
                return REDIS_CLAIM_DOWN;
            }
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            redisReply *keys = r->element[1];
            size_t sl = strlen(suffixes[p]);
            for (size_t i = 0; i < keys->elements; i++) {
                const char *k = keys->element[i]->str;
                size_t kl = keys->element[i]->len;
                if (kl < 5 + sl || memcmp(k + kl - sl, suffixes[p], sl) != 0)
                    continue;
                if (*n == cap) {
                    cap = cap ? cap * 2 : 64;
                    *users = cm_xrealloc(*users, cap * sizeof **users);
                }
                (*users)[*n].len = kl - 5 - sl;
                (*users)[*n].id = cm_xmalloc(kl - 5 - sl + 1);
                memcpy((*users)[*n].id, k + 5, kl - 5 - sl);
                (*users)[*n].id[kl - 5 - sl] = '\0';
                (*n)++;
            }
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0);
    }
    /* SCAN may repeat keys, and a user can have both a list and a claim. */
    if (*n > 1) {
        qsort(*users, *n, sizeof **users, user_cmp);
        size_t k = 1;
        for (size_t i = 1; i < *n; i++) {
            if (user_cmp(&(*users)[i], &(*users)[k - 1]) == 0)
                free((*users)[i].id);
            else
                (*users)[k++] = (*users)[i];
        }
        *n = k;
    }
    return REDIS_CLAIM_OK;
}

void redis_claim_free_users(struct redis_user *users, size_t n)
{
    for (size_t i = 0; users && i < n; i++)
        free(users[i].id);
    free(users);
}

enum { K_LIVE, K_CLAIM, K_META, K_LEASE, K_INVALID, K_COUNT };

struct ukeys {
    char *k[K_COUNT];
    size_t len[K_COUNT];
};

static void keys_init(struct ukeys *ks, const struct redis_user *u)
{
    static const char *const suffix[K_COUNT] = {":messages", ":messages:claim",
                                                ":messages:claim:meta", ":messages:claim:lease",
                                                ":messages:invalid"};
    for (int i = 0; i < K_COUNT; i++) {
        size_t sl = strlen(suffix[i]);
        ks->len[i] = 5 + u->len + sl;
        ks->k[i] = cm_xmalloc(ks->len[i] + 1);
        memcpy(ks->k[i], "user:", 5);
        memcpy(ks->k[i] + 5, u->id, u->len);
        memcpy(ks->k[i] + 5 + u->len, suffix[i], sl + 1);
    }
}

static void keys_deinit(struct ukeys *ks)
{
    for (int i = 0; i < K_COUNT; i++)
        free(ks->k[i]);
}

static void random_hex(char out[33])
{
    unsigned char raw[16];
    RAND_bytes(raw, sizeof raw);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* EVAL script with the given keys (indexes into ks) and string args. */
static int eval(struct rclient *rc, const char *script, const struct ukeys *ks, const int *keys,
                int nkeys, const char *const *args, int nargs, redisReply **out)
{
    const char *argv[16];
    size_t argl[16];
    char nk[8];
    snprintf(nk, sizeof nk, "%d", nkeys);
    int c = 0;
    argv[c] = "EVAL";
    argl[c++] = 4;
    argv[c] = script;
    argl[c++] = strlen(script);
    argv[c] = nk;
    argl[c++] = strlen(nk);
    for (int i = 0; i < nkeys; i++) {
        argv[c] = ks->k[keys[i]];
        argl[c++] = ks->len[keys[i]];
    }
    for (int i = 0; i < nargs; i++) {
        argv[c] = args[i];
        argl[c++] = strlen(args[i]);
    }
    return classify(rc, redisCommandArgv(rc->c, c, argv, argl), out);
}

int redis_claim_take(struct rclient *rc, const struct redis_user *u, const char *worker_id,
                     double lease_s, struct claim *out)
{
    memset(out, 0, sizeof *out);
    struct ukeys ks;
    keys_init(&ks, u);
    char newid[33], token[33], ms[32];
    random_hex(newid);
    random_hex(token);
    snprintf(ms, sizeof ms, "%lld", (long long)(lease_s * 1000));
    static const int keys[] = {K_LIVE, K_CLAIM, K_META, K_LEASE, K_INVALID};
    const char *args[] = {worker_id, ms, newid, token};
    redisReply *r;
    int rcode = eval(rc, CLAIM_LUA, &ks, keys, 5, args, 4, &r);
    keys_deinit(&ks);
    if (rcode != 0)
        return rcode;
    rcode = REDIS_CLAIM_USER;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer >= 0 &&
        r->element[0]->integer <= CLAIM_MOVED) {
        out->status = (enum claim_status)r->element[0]->integer;
        snprintf(out->id, sizeof out->id, "%s", r->element[1]->str ? r->element[1]->str : "");
        snprintf(out->detail, sizeof out->detail, "%s",
                 r->element[2]->str ? r->element[2]->str : "");
        snprintf(out->token, sizeof out->token, "%s", token);
        rcode = REDIS_CLAIM_OK;
    } else {
        snprintf(rc->last_error, sizeof rc->last_error, "unexpected claim script reply");
    }
    freeReplyObject(r);
    return rcode;
}

static int fenced(struct rclient *rc, const char *script, const struct redis_user *u,
                  const struct claim *c, double lease_s, const char *a3, const char *a4,
                  redisReply **out)
{
    struct ukeys ks;
    keys_init(&ks, u);
    char ms[32];
    snprintf(ms, sizeof ms, "%lld", (long long)(lease_s * 1000));
    static const int keys[] = {K_CLAIM, K_META, K_LEASE};
    const char *args[] = {c->token, ms, a3, a4};
    redisReply *r;
    int rcode = eval(rc, script, &ks, keys, 3, args, a3 ? 4 : 2, &r);
    keys_deinit(&ks);
    if (out)
        *out = r;
    else if (r)
        freeReplyObject(r);
    return rcode;
}

#define READ_PAGE 1000

int redis_claim_read(struct rclient *rc, const struct redis_user *u, const struct claim *c,
                     double lease_s, char ***items, size_t **lens, size_t *n)
{
    *items = NULL;
    *lens = NULL;
    *n = 0;
    for (long long start = 0;; start += READ_PAGE) {
        char a3[24], a4[24];
        snprintf(a3, sizeof a3, "%lld", start);
        snprintf(a4, sizeof a4, "%lld", start + READ_PAGE - 1);
        redisReply *r;
        int rcode = fenced(rc, READ_LUA, u, c, lease_s, a3, a4, &r);
        if (rcode == 0 && r->type != REDIS_REPLY_ARRAY) {
            snprintf(rc->last_error, sizeof rc->last_error, "claim read: not a list");
            freeReplyObject(r);
            rcode = REDIS_CLAIM_USER;
        }
        if (rcode != 0) {
            redis_claim_free_list(*items, *lens, *n);
            *items = NULL;
            *lens = NULL;
            *n = 0;
            return rcode;
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
        if (got < READ_PAGE)
            return REDIS_CLAIM_OK;
    }
}

int redis_claim_renew(struct rclient *rc, const struct redis_user *u, const struct claim *c,
                      double lease_s)
{
    return fenced(rc, RENEW_LUA, u, c, lease_s, NULL, NULL, NULL);
}

int redis_claim_delete(struct rclient *rc, const struct redis_user *u, const struct claim *c)
{
    return fenced(rc, DELETE_LUA, u, c, 60, NULL, NULL, NULL);
}

int redis_claim_unlease(struct rclient *rc, const struct redis_user *u, const struct claim *c)
{
    return fenced(rc, UNLEASE_LUA, u, c, 60, NULL, NULL, NULL);
}

int redis_claim_quarantine(struct rclient *rc, const struct redis_user *u, long long *moved)
{
    *moved = 0;
    struct ukeys ks;
    keys_init(&ks, u);
    char suffix[33];
    random_hex(suffix);
    static const int keys[] = {K_LIVE, K_CLAIM, K_META, K_LEASE, K_INVALID};
    const char *args[] = {suffix};
    redisReply *r;
    int rcode = eval(rc, QUARANTINE_LUA, &ks, keys, 5, args, 1, &r);
    keys_deinit(&ks);
    if (rcode != 0)
        return rcode;
    if (r->type == REDIS_REPLY_INTEGER)
        *moved = r->integer;
    freeReplyObject(r);
    return REDIS_CLAIM_OK;
}

int redis_claim_erase(struct rclient *rc, const struct redis_user *u, long long *deleted)
{
    *deleted = 0;
    struct ukeys ks;
    keys_init(&ks, u);
    const char *argv[1 + K_COUNT];
    size_t argl[1 + K_COUNT];
    argv[0] = "DEL";
    argl[0] = 3;
    for (int k = 0; k < K_COUNT; k++) {
        argv[1 + k] = ks.k[k];
        argl[1 + k] = ks.len[k];
    }
    redisReply *r;
    /* One DEL: atomic, so a claim is never half gone. */
    int rcode = classify(rc, redisCommandArgv(rc->c, 1 + K_COUNT, argv, argl), &r);
    keys_deinit(&ks);
    if (rcode != 0)
        return rcode;
    if (r->type == REDIS_REPLY_INTEGER)
        *deleted = r->integer;
    freeReplyObject(r);
    return REDIS_CLAIM_OK;
}

long long redis_claim_backlog(struct rclient *rc)
{
    struct redis_user *users;
    size_t n;
    if (redis_claim_scan_users(rc, &users, &n) != 0)
        return -1;
    long long total = 0;
    for (size_t i = 0; i < n; i++) {
        struct ukeys ks;
        keys_init(&ks, &users[i]);
        for (int k = K_LIVE; k <= K_CLAIM; k++) {
            const char *argv[] = {"LLEN", ks.k[k]};
            size_t argl[] = {4, ks.len[k]};
            redisReply *r = redisCommandArgv(rc->c, 2, argv, argl);
            if (r && r->type == REDIS_REPLY_INTEGER)
                total += r->integer;
            if (r)
                freeReplyObject(r);
        }
        keys_deinit(&ks);
    }
    redis_claim_free_users(users, n);
    return total;
}

void redis_claim_free_list(char **items, size_t *lens, size_t n)
{
    for (size_t i = 0; items && i < n; i++)
        free(items[i]);
    free(items);
    free(lens);
}

/* cm_origin: the browser-origin policy (see cm_origin.h). */
#include "cm_origin.h"

#include "cm_alloc.h"

#include <arpa/inet.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An origin split into its three parts, lower-cased, port made explicit. */
struct origin {
    char *scheme;
    char *host; /* without IPv6 brackets */
    int port;
};

struct cm_origin_policy {
    int any;
    size_t n;
    struct origin *list; /* n entries; none = the default policy */
};

static void lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
}

static int default_port(const char *scheme)
{
    if (strcmp(scheme, "http") == 0 || strcmp(scheme, "ws") == 0)
        return 80;
    if (strcmp(scheme, "https") == 0 || strcmp(scheme, "wss") == 0)
        return 443;
    return -1;
}

static void origin_clear(struct origin *o)
{
    free(o->scheme);
    free(o->host);
    o->scheme = o->host = NULL;
}

/* Parses "scheme://host[:port]" (what browsers send, RFC 6454) with
 * libevent's URI parser. Returns 0, or -1 when s is anything else. */
static int origin_parse(const char *s, struct origin *o)
{
    memset(o, 0, sizeof *o);
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(s, 0);
    if (!u)
        return -1;
    const char *scheme = evhttp_uri_get_scheme(u);
    const char *host = evhttp_uri_get_host(u);
    const char *path = evhttp_uri_get_path(u);
    int ok = scheme && *scheme && host && *host && !evhttp_uri_get_userinfo(u) &&
             !evhttp_uri_get_query(u) && !evhttp_uri_get_fragment(u) &&
             (!path || !*path || strcmp(path, "/") == 0);
    if (ok) {
        o->scheme = cm_xstrdup(scheme);
        lower(o->scheme);
        size_t hl = strlen(host);
        if (host[0] == '[' && hl > 2 && host[hl - 1] == ']')
            o->host = cm_xstrndup(host + 1, hl - 2);
        else
            o->host = cm_xstrdup(host);
        lower(o->host);
        o->port = evhttp_uri_get_port(u);
        if (o->port < 0)
            o->port = default_port(o->scheme);
    }
    evhttp_uri_free(u);
    return ok ? 0 : -1;
}

static int origin_equal(const struct origin *a, const struct origin *b)
{
    return a->port == b->port && strcmp(a->scheme, b->scheme) == 0 && strcmp(a->host, b->host) == 0;
}

struct cm_origin_policy *cm_origin_policy_new(const char *list, char *err, size_t errlen)
{
    struct cm_origin_policy *p = cm_xcalloc(1, sizeof *p);
    if (!list)
        return p;
    char *copy = cm_xstrdup(list);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        size_t len = strlen(tok);
        while (len > 0 && (tok[len - 1] == ' ' || tok[len - 1] == '\t'))
            tok[--len] = '\0';
        if (len == 0)
            continue;
        if (strcmp(tok, "*") == 0) {
            p->any = 1;
            continue;
        }
        struct origin o;
        if (origin_parse(tok, &o) != 0) {
            snprintf(err, errlen,
                     "\"%.100s\" is not an origin (scheme://host[:port], no path) nor \"*\"", tok);
            free(copy);
            cm_origin_policy_free(p);
            return NULL;
        }
        p->list = cm_xrealloc(p->list, (p->n + 1) * sizeof *p->list);
        p->list[p->n++] = o;
    }
    free(copy);
    return p;
}

void cm_origin_policy_free(struct cm_origin_policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        origin_clear(&p->list[i]);
    free(p->list);
    free(p);
}

int cm_origin_any(const struct cm_origin_policy *p)
{
    return p->any;
}

/* localhost, 127.0.0.0/8 or ::1 (host without brackets, lower case). */
static int is_loopback_name(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* A Host header ("name[:port]") that names this machine's loopback. Any
 * other name may be an attacker's domain re-pointed at us (DNS rebinding):
 * a page there is "same origin" with it. */
static int host_is_loopback(const char *host)
{
    if (!host || !*host || strlen(host) > 300)
        return 0;
    char buf[320];
    snprintf(buf, sizeof buf, "http://%s", host);
    struct origin h;
    if (origin_parse(buf, &h) != 0)
        return 0;
    int ok = is_loopback_name(h.host);
    origin_clear(&h);
    return ok;
}

int cm_origin_allowed(const struct cm_origin_policy *p, const char *origin, const char *host)
{
    if (!origin)
        return 1;
    if (p->any)
        return 1;
    struct origin o;
    if (origin_parse(origin, &o) != 0)
        return 0; /* "null" and anything malformed */
    int ok = 0;
    if (p->n == 0) {
        ok = (strcmp(o.scheme, "http") == 0 || strcmp(o.scheme, "https") == 0) &&
             is_loopback_name(o.host) && host_is_loopback(host);
    } else {
        for (size_t i = 0; i < p->n && !ok; i++)
            ok = origin_equal(&o, &p->list[i]);
    }
    origin_clear(&o);
    return ok;
}

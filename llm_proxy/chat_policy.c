/* chat_policy: operator limits on pass-through controls (see chat_policy.h). */
#include "chat_policy.h"

#include "cm_alloc.h"
#include "proxy_config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
    char **keys; /* NULL-terminated; NULL = any */
    size_t n;
    long long max_num_ctx;
    double keep_alive_max;
    int set;
} P;

void chat_policy_reset(void)
{
    for (size_t i = 0; i < P.n; i++)
        free(P.keys[i]);
    free(P.keys);
    memset(&P, 0, sizeof P);
}

void chat_policy_set(const char *allowed, long long max_num_ctx, double keep_alive_max_s)
{
    chat_policy_reset();
    P.set = 1;
    P.max_num_ctx = max_num_ctx;
    P.keep_alive_max = keep_alive_max_s;
    if (!allowed)
        allowed = PROXY_DEFAULT_ALLOWED_OPTIONS;
    char *copy = cm_xstrdup(allowed), *save = NULL;
    int any = 0;
    P.keys = cm_xcalloc(1, sizeof *P.keys);
    for (char *t = strtok_r(copy, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
        if (strcmp(t, "*") == 0)
            any = 1;
        P.keys = cm_xrealloc(P.keys, (P.n + 2) * sizeof *P.keys);
        P.keys[P.n++] = cm_xstrdup(t);
        P.keys[P.n] = NULL;
    }
    free(copy);
    if (any) {
        for (size_t i = 0; i < P.n; i++)
            free(P.keys[i]);
        free(P.keys);
        P.keys = NULL;
        P.n = 0;
    }
}

static int key_allowed(const char *key)
{
    if (!P.set || !P.keys)
        return 1;
    for (size_t i = 0; i < P.n; i++)
        if (strcmp(P.keys[i], key) == 0)
            return 1;
    return 0;
}

int chat_policy_check_options(const json_t *options, struct proxy_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)options, key, v)
    {
        if (!key_allowed(key)) {
            proxy_error_set(err, 400, NULL, "invalid_value",
                            "The option '%.60s' may not be set through this gateway (see "
                            "LLM_PROXY_ALLOWED_OPTIONS).",
                            key);
            snprintf(err->param, sizeof err->param, "options.%.100s", key);
            err->reject_reason = "limits";
            return -1;
        }
        if (strcmp(key, "num_ctx") == 0 && !json_is_null(v)) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                (P.max_num_ctx > 0 && json_integer_value(v) > P.max_num_ctx)) {
                proxy_error_set(err, 400, "options.num_ctx", "invalid_value",
                                "'options.num_ctx' must be an integer between 1 and %lld.",
                                P.max_num_ctx > 0 ? P.max_num_ctx : (long long)INT32_MAX);
                err->reject_reason = "limits";
                return -1;
            }
        }
    }
    return 0;
}

/* Go's time.ParseDuration subset Ollama accepts: [-]N<unit>... with units
 * ns us µs ms s m h; a bare number is seconds. Returns 0 with *out seconds. */
static int parse_duration(const char *s, double *out)
{
    const char *p = s;
    int neg = 0;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (!*p)
        return -1;
    double total = 0;
    while (*p) {
        char *end;
        double n = strtod(p, &end);
        if (end == p || !isfinite(n) || n < 0)
            return -1;
        p = end;
        double unit;
        if (!*p && total == 0 && p == end)
            unit = 1; /* bare number */
        else if (strncmp(p, "ns", 2) == 0)
            unit = 1e-9, p += 2;
        else if (strncmp(p, "us", 2) == 0)
            unit = 1e-6, p += 2;
        else if (strncmp(p, "\xc2\xb5s", 3) == 0)
            unit = 1e-6, p += 3;
        else if (strncmp(p, "ms", 2) == 0)
            unit = 1e-3, p += 2;
        else if (*p == 's')
            unit = 1, p++;
        else if (*p == 'm')
            unit = 60, p++;
        else if (*p == 'h')
            unit = 3600, p++;
        else
            return -1;
        total += n * unit;
    }
    *out = neg ? -total : total;
    return 0;
}

json_t *chat_policy_keep_alive(const json_t *ka, struct proxy_error *err)
{
    double secs;
    if (json_is_number(ka)) {
        secs = json_number_value(ka);
        if (!isfinite(secs))
            goto bad;
    } else if (json_is_string(ka)) {
        if (parse_duration(json_string_value(ka), &secs) != 0)
            goto bad;
    } else {
        goto bad;
    }
    if (!P.set || P.keep_alive_max < 0 || (secs >= 0 && secs <= P.keep_alive_max))
        return json_incref((json_t *)ka);
    /* Longer, or negative ("keep loaded forever"): the operator's maximum. */
    return json_integer((json_int_t)P.keep_alive_max);
bad:
    proxy_error_set(err, 400, "keep_alive", "invalid_value",
                    "'keep_alive' must be a number of seconds or a duration such as \"5m\".");
    return NULL;
}

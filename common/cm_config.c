/* cm_config: table-driven environment configuration (see cm_config.h). */
#include "cm_config.h"

#include "cm_alloc.h"
#include "cm_log.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *env_getenv(const char *name, void *ctx)
{
    (void)ctx;
    return getenv(name);
}

static const char *skip_ws(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return s;
}

static int only_ws(const char *s)
{
    return *skip_ws(s) == '\0';
}

int cm_cfg_parse_int(const char *s, long long *out)
{
    s = skip_ws(s);
    if (!*s)
        return -1;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || !only_ws(end))
        return -1;
    *out = v;
    return 0;
}

int cm_cfg_parse_seconds(const char *s, double *out)
{
    s = skip_ws(s);
    if (!*s)
        return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    const char *unit = skip_ws(end);
    size_t ul = strlen(unit);
    while (ul && isspace((unsigned char)unit[ul - 1]))
        ul--;
    double mult;
    if (ul == 0 || (ul == 1 && unit[0] == 's'))
        mult = 1;
    else if (ul == 2 && strncmp(unit, "ms", 2) == 0)
        mult = 0.001;
    else if (ul == 1 && unit[0] == 'm')
        mult = 60;
    else if (ul == 1 && unit[0] == 'h')
        mult = 3600;
    else
        return -1;
    *out = v * mult;
    return 0;
}

int cm_cfg_parse_bytes(const char *s, long long *out)
{
    s = skip_ws(s);
    if (!*s || *s == '-')
        return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    const char *unit = skip_ws(end);
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"k", 1024},
                 {"kb", 1000},
                 {"kib", 1024},
                 {"m", 1024.0 * 1024},
                 {"mb", 1000.0 * 1000},
                 {"mib", 1024.0 * 1024},
                 {"g", 1024.0 * 1024 * 1024},
                 {"gb", 1e9},
                 {"gib", 1024.0 * 1024 * 1024}};
    char u[8];
    size_t ul = 0;
    while (unit[ul] && !isspace((unsigned char)unit[ul]) && ul < sizeof u - 1) {
        u[ul] = (char)tolower((unsigned char)unit[ul]);
        ul++;
    }
    u[ul] = '\0';
    if (!only_ws(unit + ul))
        return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(u, units[i].suffix) == 0) {
            double r = v * units[i].mult;
            if (r > 9.0e18 || r != floor(r))
                return -1;
            *out = (long long)r;
            return 0;
        }
    }
    return -1;
}

int cm_cfg_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int out_of_bounds(const struct cm_cfg *c, double v)
{
    if (c->min == 0 && c->max == 0)
        return 0;
    return v < c->min || v > c->max;
}

static int load_one(const struct cm_cfg *c, const char *raw, char *err, size_t errlen)
{
    switch (c->type) {
    case CM_CFG_STRING:
    case CM_CFG_ENUM:
    case CM_CFG_URL: {
        char **dst = c->dst;
        free(*dst);
        *dst = NULL;
        if (!raw)
            return 0;
        if (c->type == CM_CFG_ENUM) {
            int ok = 0;
            for (const char *const *ch = c->choices; ch && *ch; ch++)
                if (strcasecmp(raw, *ch) == 0)
                    ok = 1;
            if (!ok) {
                snprintf(err, errlen,
                         "%s: invalid value \"%s\" (expected one of the documented choices)",
                         c->env, raw);
                return -1;
            }
        }
        if (c->type == CM_CFG_URL && strncmp(raw, "http://", 7) != 0 &&
            strncmp(raw, "https://", 8) != 0) {
            snprintf(err, errlen, "%s: invalid URL \"%s\" (must start with http:// or https://)",
                     c->env, raw);
            return -1;
        }
        *dst = cm_xstrdup(raw);
        /* Base URLs are joined with paths: drop trailing slashes. */
        if (c->type == CM_CFG_URL) {
            size_t l = strlen(*dst);
            while (l > 8 && (*dst)[l - 1] == '/')
                (*dst)[--l] = '\0';
        }
        return 0;
    }
    case CM_CFG_INT: {
        long long v;
        if (!raw || cm_cfg_parse_int(raw, &v) != 0) {
            snprintf(err, errlen, "%s: invalid integer \"%s\"", c->env, raw ? raw : "");
            return -1;
        }
        if (out_of_bounds(c, (double)v)) {
            snprintf(err, errlen, "%s: %lld is out of range [%.0f, %.0f]", c->env, v, c->min,
                     c->max);
            return -1;
        }
        *(long long *)c->dst = v;
        return 0;
    }
    case CM_CFG_SECONDS: {
        double v;
        if (!raw || cm_cfg_parse_seconds(raw, &v) != 0) {
            snprintf(err, errlen,
                     "%s: invalid duration \"%s\" (seconds, or a number with ms/s/m/h)", c->env,
                     raw ? raw : "");
            return -1;
        }
        if (out_of_bounds(c, v)) {
            snprintf(err, errlen, "%s: %g s is out of range [%g, %g]", c->env, v, c->min, c->max);
            return -1;
        }
        *(double *)c->dst = v;
        return 0;
    }
    case CM_CFG_BYTES: {
        long long v;
        if (!raw || cm_cfg_parse_bytes(raw, &v) != 0) {
            snprintf(err, errlen, "%s: invalid size \"%s\" (bytes, or with k/KiB/M/MiB/G)", c->env,
                     raw ? raw : "");
            return -1;
        }
        if (out_of_bounds(c, (double)v)) {
            snprintf(err, errlen, "%s: %lld bytes is out of range [%.0f, %.0f]", c->env, v, c->min,
                     c->max);
            return -1;
        }
        *(long long *)c->dst = v;
        return 0;
    }
    case CM_CFG_BOOL: {
        int v;
        if (!raw || cm_cfg_parse_bool(raw, &v) != 0) {
            snprintf(err, errlen, "%s: invalid boolean \"%s\" (true/false)", c->env,
                     raw ? raw : "");
            return -1;
        }
        *(int *)c->dst = v;
        return 0;
    }
    }
    snprintf(err, errlen, "%s: unknown type", c->env);
    return -1;
}

int cm_cfg_load(const struct cm_cfg *table, size_t n, cm_cfg_getenv_cb getenv_fn, void *ctx,
                char *err, size_t errlen)
{
    if (!getenv_fn)
        getenv_fn = env_getenv;
    for (size_t i = 0; i < n; i++) {
        const char *raw = getenv_fn(table[i].env, ctx);
        if (raw && *raw == '\0' && table[i].type != CM_CFG_STRING)
            raw = NULL; /* VAR= means "use the default" */
        if (!raw)
            raw = table[i].def;
        if (load_one(&table[i], raw, err, errlen) != 0)
            return -1;
    }
    return 0;
}

void cm_cfg_free(const struct cm_cfg *table, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (table[i].type == CM_CFG_STRING || table[i].type == CM_CFG_ENUM ||
            table[i].type == CM_CFG_URL) {
            char **dst = table[i].dst;
            free(*dst);
            *dst = NULL;
        }
    }
}

void cm_cfg_print_help(FILE *out, const struct cm_cfg *table, size_t n)
{
    fprintf(out, "Environment:\n");
    for (size_t i = 0; i < n; i++) {
        const struct cm_cfg *c = &table[i];
        fprintf(out, "  %-24s %s", c->env, c->help);
        if (c->def && !c->secret)
            fprintf(out, " (default: %s)", *c->def ? c->def : "\"\"");
        else if (!c->def)
            fprintf(out, " (default: unset)");
        fputc('\n', out);
    }
}

void cm_cfg_log_effective(const struct cm_cfg *table, size_t n)
{
    if (!CM_LOG_ENABLED(CM_LOG_INFO))
        return;
    json_t *fields = json_object();
    for (size_t i = 0; i < n; i++) {
        const struct cm_cfg *c = &table[i];
        json_t *v = NULL;
        switch (c->type) {
        case CM_CFG_STRING:
        case CM_CFG_ENUM:
        case CM_CFG_URL: {
            const char *s = *(char **)c->dst;
            if (c->secret)
                v = json_string(s && *s ? "(set)" : "(unset)");
            else
                v = s ? json_string(s) : json_null();
            break;
        }
        case CM_CFG_INT:
        case CM_CFG_BYTES:
            v = json_integer(*(long long *)c->dst);
            break;
        case CM_CFG_SECONDS:
            v = json_real(*(double *)c->dst);
            break;
        case CM_CFG_BOOL:
            v = json_boolean(*(int *)c->dst);
            break;
        }
        if (v)
            json_object_set_new(fields, c->env, v);
    }
    cm_log_fields(CM_LOG_INFO, NULL, "config", fields);
}

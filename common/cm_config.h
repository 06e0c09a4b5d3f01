/*
 * cm_config: typed configuration from environment variables, one table.
 *
 * Each service describes its settings in a static array of struct cm_cfg
 * (name of the environment variable, type, default, bounds, help), in the
 * spirit of redis' static_configs. cm_cfg_load() reads and validates every
 * entry; a bad value is an error naming the variable, and the service exits
 * with status 2. The same table prints --help and the effective config
 * (secrets redacted).
 *
 * Ownership: string values are allocated by cm_cfg_load() and freed by
 * cm_cfg_free(); the table itself and the destinations are the caller's.
 */
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include <stddef.h>
#include <stdio.h>

enum cm_cfg_type {
    CM_CFG_STRING,  /* char **              */
    CM_CFG_INT,     /* long long *, bounds  */
    CM_CFG_SECONDS, /* double * in seconds: "30", "2.5", "500ms", "2m" */
    CM_CFG_BYTES,   /* long long *: "1048576", "16MiB", "64k" */
    CM_CFG_BOOL,    /* int *: true/false/1/0/yes/no/on/off */
    CM_CFG_ENUM,    /* char ** restricted to choices */
    CM_CFG_URL,     /* char **: must start with http:// or https:// */
};

struct cm_cfg {
    const char *env;            /* environment variable name */
    enum cm_cfg_type type;      /* how to parse */
    const char *def;            /* default as text; NULL = unset (strings only) */
    double min, max;            /* bounds for INT, SECONDS, BYTES (both 0 = none) */
    const char *const *choices; /* NULL-terminated, for CM_CFG_ENUM */
    int secret;                 /* never printed */
    void *dst;                  /* where the parsed value goes */
    const char *help;           /* one line */
};

/* Lookup function (getenv-like) so tests can feed values. */
typedef const char *(*cm_cfg_getenv_cb)(const char *name, void *ctx);

/*
 * Loads every entry from getenv_fn (NULL = getenv). Returns 0, or -1 with a
 * one-line reason naming the variable in err.
 */
int cm_cfg_load(const struct cm_cfg *table, size_t n, cm_cfg_getenv_cb getenv_fn, void *ctx,
                char *err, size_t errlen);

/* Frees string destinations and resets them to NULL. */
void cm_cfg_free(const struct cm_cfg *table, size_t n);

/* Writes an "Environment:" help section, one entry per variable. */
void cm_cfg_print_help(FILE *out, const struct cm_cfg *table, size_t n);

/* Logs the effective configuration at info, secrets shown as "(set)". */
void cm_cfg_log_effective(const struct cm_cfg *table, size_t n);

/* Parsers, exposed for tests and for flags. Return 0 or -1. */
int cm_cfg_parse_seconds(const char *s, double *out);
int cm_cfg_parse_bytes(const char *s, long long *out);
int cm_cfg_parse_bool(const char *s, int *out);
int cm_cfg_parse_int(const char *s, long long *out);

#endif

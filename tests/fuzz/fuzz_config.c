/* libFuzzer: configuration values. Lines "NAME=value" become the
 * environment of both services' configuration tables. */
#include "cm_config.h"
#include "proxy_config.h"
#include "worker_config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct env {
    char *names[32];
    char *values[32];
    int n;
};

static const char *fake_getenv(const char *name, void *ctx)
{
    struct env *e = ctx;
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->names[i], name) == 0)
            return e->values[i];
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    struct env e = {.n = 0};
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && e.n < 32;
         line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        e.names[e.n] = line;
        e.values[e.n] = eq + 1;
        e.n++;
        double d;
        long long v;
        int b;
        cm_cfg_parse_seconds(eq + 1, &d);
        cm_cfg_parse_bytes(eq + 1, &v);
        cm_cfg_parse_int(eq + 1, &v);
        cm_cfg_parse_bool(eq + 1, &b);
    }
    char err[512];
    struct proxy_config pc = {0};
    proxy_config_load(&pc, fake_getenv, &e, err, sizeof err);
    proxy_config_free(&pc);
    struct worker_config wc = {0};
    if (worker_config_load(&wc, fake_getenv, &e, err, sizeof err) == 0) {
        char *ci = worker_config_pg_conninfo(&wc);
        free(ci);
    }
    worker_config_free(&wc);
    free(text);
    return 0;
}

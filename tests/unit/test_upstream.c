/* Unit tests of upstream_models: hostile /api/tags and /api/ps replies. */
#include "upstream_models.h"
#include "unit.h"

#include <stdio.h>
#include <stdlib.h>

static int parse(struct upstream_models *l, const char *text)
{
    return upstream_models_parse(l, text, strlen(text));
}

static void names_and_lookup(void)
{
    struct upstream_models l = {0};
    CHECK(parse(&l, "{\"models\":[{\"name\":\"qwen3:8b\",\"model\":\"qwen3:8b\"},"
                    "{\"name\":\"llama3.2\"},{\"model\":\"user/m:1b\"}]}") == 0);
    CHECK(l.known && l.n == 3);
    CHECK(upstream_models_has(&l, "qwen3:8b"));
    CHECK(upstream_models_has(&l, "QWEN3:8B"));
    CHECK(upstream_models_has(&l, "llama3.2"));        /* :latest implied */
    CHECK(upstream_models_has(&l, "llama3.2:latest")); /* both ways */
    CHECK(upstream_models_has(&l, "user/m:1b"));
    CHECK(!upstream_models_has(&l, "qwen3"));
    CHECK(!upstream_models_has(&l, ""));
    upstream_models_clear(&l);
}

static void malformed_replies_keep_the_list(void)
{
    struct upstream_models l = {0};
    CHECK(parse(&l, "{\"models\":[{\"name\":\"a:1\"}]}") == 0);
    const char *bad[] = {
        "", "null", "[]", "{\"models\":\"x\"}", "{\"models\":{}}", "{\"models\":[", "\xff\xfe"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(parse(&l, bad[i]) == -1);
    CHECK(l.n == 1 && upstream_models_has(&l, "a:1"));
    CHECK(parse(&l, "{\"models\":[]}") == 0 && l.n == 0 && l.known);
    upstream_models_clear(&l);
}

static void bad_entries_skipped(void)
{
    struct upstream_models l = {0};
    char longname[400];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f,
            "{\"models\":[{\"name\":\"%s\"},{\"name\":\"a\\nb\"},{\"name\":\"a b\"},"
            "{\"name\":\"\"},{\"name\":7},\"str\",null,{\"name\":\"ok:1\"}]}",
            longname);
    fclose(f);
    CHECK(upstream_models_parse(&l, text, len) == 0);
    CHECK(l.n == 1 && upstream_models_has(&l, "ok:1"));
    CHECK(!upstream_models_has(&l, longname));
    free(text);
    upstream_models_clear(&l);
}

static void entries_bounded(void)
{
    struct upstream_models l = {0};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fputs("{\"models\":[", f);
    for (int i = 0; i < 5000; i++)
        fprintf(f, "%s{\"name\":\"m%d:1b\"}", i ? "," : "", i);
    fputs("]}", f);
    fclose(f);
    CHECK(upstream_models_parse(&l, text, len) == 0);
    CHECK(l.n == UPSTREAM_MODELS_MAX);
    CHECK(upstream_models_has(&l, "m0:1b"));
    CHECK(!upstream_models_has(&l, "m4999:1b"));
    free(text);
    upstream_models_clear(&l);
}

UNIT_MAIN(T(names_and_lookup), T(malformed_replies_keep_the_list), T(bad_entries_skipped),
          T(entries_bounded))

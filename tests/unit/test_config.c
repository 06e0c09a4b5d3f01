/* Unit tests of cm_config and llm_proxy's configuration table. */
#include "cm_config.h"
#include "cm_origin.h"
#include "proxy_config.h"
#include "unit.h"

#include <math.h>
#include <stdlib.h>

struct fake_env {
    const char *const *pairs; /* name, value, name, value, ..., NULL */
};

static const char *fake_getenv(const char *name, void *ctx)
{
    const struct fake_env *e = ctx;
    for (const char *const *p = e->pairs; *p; p += 2)
        if (strcmp(*p, name) == 0)
            return p[1];
    return NULL;
}

static void parse_seconds(void)
{
    double d;
    CHECK(cm_cfg_parse_seconds("60", &d) == 0 && d == 60);
    CHECK(cm_cfg_parse_seconds("30.0", &d) == 0 && d == 30);
    CHECK(cm_cfg_parse_seconds("500ms", &d) == 0 && fabs(d - 0.5) < 1e-9);
    CHECK(cm_cfg_parse_seconds("2m", &d) == 0 && d == 120);
    CHECK(cm_cfg_parse_seconds(" 1.5 s ", &d) == 0 && d == 1.5);
    CHECK(cm_cfg_parse_seconds("-1", &d) != 0);
    CHECK(cm_cfg_parse_seconds("abc", &d) != 0);
    CHECK(cm_cfg_parse_seconds("5 parsecs", &d) != 0);
    CHECK(cm_cfg_parse_seconds("", &d) != 0);
    CHECK(cm_cfg_parse_seconds("nan", &d) != 0);
}

static void parse_bytes(void)
{
    long long v;
    CHECK(cm_cfg_parse_bytes("1048576", &v) == 0 && v == 1048576);
    CHECK(cm_cfg_parse_bytes("16MiB", &v) == 0 && v == 16LL * 1024 * 1024);
    CHECK(cm_cfg_parse_bytes("64k", &v) == 0 && v == 65536);
    CHECK(cm_cfg_parse_bytes("1GB", &v) == 0 && v == 1000000000LL);
    CHECK(cm_cfg_parse_bytes("-5", &v) != 0);
    CHECK(cm_cfg_parse_bytes("12 parsecs", &v) != 0);
    CHECK(cm_cfg_parse_bytes("1.5", &v) != 0);
}

static void parse_bool_and_int(void)
{
    int b;
    long long i;
    CHECK(cm_cfg_parse_bool("TRUE", &b) == 0 && b == 1);
    CHECK(cm_cfg_parse_bool("off", &b) == 0 && b == 0);
    CHECK(cm_cfg_parse_bool("maybe", &b) != 0);
    CHECK(cm_cfg_parse_int("42", &i) == 0 && i == 42);
    CHECK(cm_cfg_parse_int("42x", &i) != 0);
    CHECK(cm_cfg_parse_int("", &i) != 0);
}

static void proxy_defaults(void)
{
    const char *const pairs[] = {NULL};
    struct fake_env env = {pairs};
    struct proxy_config cfg = {0};
    char err[256] = "";
    CHECK(proxy_config_load(&cfg, fake_getenv, &env, err, sizeof err) == 0);
    CHECK_STR(cfg.host, "0.0.0.0");
    CHECK(cfg.port == 8000);
    CHECK_STR(cfg.ollama_url, "http://ollama:11434");
    CHECK(cfg.chat_timeout == 60);
    CHECK(cfg.embeddings_timeout == 30);
    CHECK(cfg.connect_timeout == 5);
    CHECK(cfg.max_body_bytes == 16LL * 1024 * 1024);
    CHECK(cfg.api_key == NULL);
    CHECK(cfg.shutdown_grace == 10);
    CHECK_STR(cfg.log_level, "info");
    proxy_config_free(&cfg);
}

static void proxy_overrides_and_trailing_slash(void)
{
    const char *const pairs[] = {"LLM_PROXY_PORT",
                                 "9001",
                                 "OLLAMA_URL_INTERNAL",
                                 "http://h:1/",
                                 "CHAT_TIMEOUT",
                                 "1.5",
                                 "LLM_PROXY_API_KEY",
                                 "sk-x",
                                 "MAX_BODY_BYTES",
                                 "2MiB",
                                 NULL};
    struct fake_env env = {pairs};
    struct proxy_config cfg = {0};
    char err[256] = "";
    CHECK(proxy_config_load(&cfg, fake_getenv, &env, err, sizeof err) == 0);
    CHECK(cfg.port == 9001);
    CHECK_STR(cfg.ollama_url, "http://h:1");
    CHECK(cfg.chat_timeout == 1.5);
    CHECK_STR(cfg.api_key, "sk-x");
    CHECK(cfg.max_body_bytes == 2 * 1024 * 1024);
    proxy_config_free(&cfg);
}

static void expect_error(const char *name, const char *value)
{
    const char *const pairs[] = {name, value, NULL};
    struct fake_env env = {pairs};
    struct proxy_config cfg = {0};
    char err[256] = "";
    CHECK(proxy_config_load(&cfg, fake_getenv, &env, err, sizeof err) != 0);
    if (!strstr(err, name)) {
        fprintf(stderr, "error does not name %s: %s\n", name, err);
        CHECK(0);
    }
    proxy_config_free(&cfg);
}

static void bad_values_name_the_variable(void)
{
    expect_error("LLM_PROXY_PORT", "70000");
    expect_error("LLM_PROXY_PORT", "eighty");
    expect_error("CHAT_TIMEOUT", "soon");
    expect_error("CHAT_TIMEOUT", "0");
    expect_error("MAX_BODY_BYTES", "lots");
    expect_error("OLLAMA_URL_INTERNAL", "ollama:11434");
    expect_error("LOG_LEVEL", "chatty");
    expect_error("LOG_FORMAT", "xml");
    expect_error("LLM_PROXY_ALLOWED_ORIGINS", "https://ok.example, not an origin");
    expect_error("LLM_PROXY_ALLOWED_ORIGINS", "https://ok.example/path");
}

static void upstream_list(void)
{
    const char *const pairs[] = {"OLLAMA_URL_INTERNAL",
                                 "http://a:1/ , http://b:2,https://u:p@c/x//", NULL};
    struct fake_env env = {pairs};
    struct proxy_config cfg = {0};
    char err[256] = "";
    CHECK(proxy_config_load(&cfg, fake_getenv, &env, err, sizeof err) == 0);
    CHECK(cfg.n_upstreams == 3);
    CHECK_STR(cfg.upstream_urls[0], "http://a:1");
    CHECK_STR(cfg.upstream_urls[1], "http://b:2");
    CHECK_STR(cfg.upstream_urls[2], "https://u:p@c/x");
    CHECK(cfg.upstream_refresh_interval == 10);
    CHECK(cfg.upstream_fail_threshold == 3);
    proxy_config_free(&cfg);
    expect_error("OLLAMA_URL_INTERNAL", "http://a:1,ollama:11434");
    expect_error("OLLAMA_URL_INTERNAL", "http://a:1,,http://b:2");
    expect_error("OLLAMA_URL_INTERNAL", "http://a:1,http://A:1/");
    expect_error("OLLAMA_URL_INTERNAL", "http://a b:1");
    expect_error("UPSTREAM_FAIL_THRESHOLD", "0");
    expect_error("UPSTREAM_REFRESH_INTERVAL", "never");
}

static void origin_policy(void)
{
    char err[200];
    struct cm_origin_policy *def = cm_origin_policy_new(NULL, err, sizeof err);
    CHECK(def != NULL);
    CHECK(cm_origin_allowed(def, NULL, "proxy:8000")); /* not a browser: any Host */
    CHECK(cm_origin_allowed(def, NULL, NULL));
    CHECK(cm_origin_allowed(def, "http://localhost:5173", "127.0.0.1:8000")); /* loopback pages */
    CHECK(cm_origin_allowed(def, "https://127.0.0.1", "localhost:8000"));
    CHECK(cm_origin_allowed(def, "http://[::1]:3000", "[::1]:8000"));
    CHECK(cm_origin_allowed(def, "http://127.3.4.5:3000", "127.0.0.2"));
    CHECK(cm_origin_allowed(def, "http://LOCALHOST:8000", "LocalHost:8000"));
    /* DNS rebinding: an attacker's name pointed at 127.0.0.1 is "same
     * origin" with itself, but it is not a loopback Host. */
    CHECK(!cm_origin_allowed(def, "http://evil.example:8000", "evil.example:8000"));
    CHECK(!cm_origin_allowed(def, "http://Proxy:8000", "proxy:8000"));
    CHECK(!cm_origin_allowed(def, "http://localhost:5173", "proxy:8000")); /* Host not loopback */
    CHECK(!cm_origin_allowed(def, "http://localhost:5173", NULL));
    CHECK(!cm_origin_allowed(def, "http://localhost:5173", "127.0.0.1.evil.example"));
    CHECK(!cm_origin_allowed(def, "http://localhost:5173", "localhost.evil.example:8000"));
    CHECK(!cm_origin_allowed(def, "https://evil.example", "127.0.0.1:8000"));
    CHECK(!cm_origin_allowed(def, "http://localhost.evil.example", "localhost"));
    CHECK(!cm_origin_allowed(def, "http://128.0.0.1", "localhost"));
    CHECK(!cm_origin_allowed(def, "null", "localhost"));
    CHECK(!cm_origin_allowed(def, "file://localhost", "localhost"));
    CHECK(!cm_origin_allowed(def, "http://localhost/x", "localhost"));
    CHECK(!cm_origin_any(def));
    cm_origin_policy_free(def);

    struct cm_origin_policy *list =
        cm_origin_policy_new(" https://Chat.example.com ,http://app.test:3000,", err, sizeof err);
    CHECK(list != NULL);
    CHECK(cm_origin_allowed(list, "https://chat.example.com", NULL));
    CHECK(cm_origin_allowed(list, "https://chat.example.com:443", NULL));
    CHECK(cm_origin_allowed(list, "http://app.test:3000", NULL));
    CHECK(!cm_origin_allowed(list, "http://chat.example.com", NULL)); /* scheme differs */
    CHECK(!cm_origin_allowed(list, "http://app.test:3001", NULL));
    CHECK(
        !cm_origin_allowed(list, "http://localhost:3000", NULL)); /* a list replaces the default */
    cm_origin_policy_free(list);

    struct cm_origin_policy *any = cm_origin_policy_new("*", err, sizeof err);
    CHECK(any != NULL && cm_origin_any(any));
    CHECK(cm_origin_allowed(any, "https://evil.example", NULL));
    CHECK(cm_origin_allowed(any, "null", NULL));
    cm_origin_policy_free(any);

    CHECK(cm_origin_policy_new("https://a.example/path", err, sizeof err) == NULL);
    CHECK(cm_origin_policy_new("a.example", err, sizeof err) == NULL);
    CHECK(cm_origin_policy_new("https://user@a.example", err, sizeof err) == NULL);
}

UNIT_MAIN(T(parse_seconds), T(parse_bytes), T(parse_bool_and_int), T(proxy_defaults),
          T(proxy_overrides_and_trailing_slash), T(bad_values_name_the_variable), T(upstream_list),
          T(origin_policy))

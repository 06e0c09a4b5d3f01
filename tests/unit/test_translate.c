/* Unit tests of llm_proxy's translation: requests, responses, stream lines. */
#include "chat_policy.h"
#include "chat_translate.h"
#include "cm_alloc.h"
#include "cm_json.h"
#include "embed_translate.h"
#include "messages_stream.h"
#include "messages_translate.h"
#include "models_translate.h"
#include "responses_stream.h"
#include "responses_translate.h"
#include "unit.h"

#include <float.h>
#include <stdlib.h>

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    if (!v)
        fprintf(stderr, "bad test JSON: %s: %s\n", text, e.text);
    return v;
}

/* Path lookup "a.b.0.c" in a JSON value (borrowed). */
static json_t *at(json_t *v, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ".", &save); tok && v; tok = strtok_r(NULL, ".", &save)) {
        if (json_is_array(v))
            v = json_array_get(v, (size_t)atoi(tok));
        else
            v = json_object_get(v, tok);
    }
    return v;
}

static const char *S(json_t *v, const char *path)
{
    return json_string_value(at(v, path));
}

static long long I(json_t *v, const char *path)
{
    return (long long)json_integer_value(at(v, path));
}

static json_t *translate_ok(const char *oai, struct chat_request *req)
{
    json_t *in = J(oai);
    struct proxy_error err = {0};
    int rc = chat_request_translate(in, req, &err);
    json_decref(in);
    if (rc != 0)
        fprintf(stderr, "unexpected error: %s\n", err.message);
    CHECK(rc == 0);
    return rc == 0 ? req->native : NULL;
}

static void translate_err(const char *oai, int status, const char *param)
{
    json_t *in = J(oai);
    struct chat_request req;
    struct proxy_error err = {0};
    int rc = chat_request_translate(in, &req, &err);
    json_decref(in);
    CHECK(rc == -1);
    CHECK(err.status == status);
    CHECK_STR(err.param, param);
    CHECK(strlen(err.message) > 0);
}

static void request_basic_mapping(void)
{
    struct chat_request req;
    json_t *n = translate_ok(
        "{\"model\":\"qwen3:8b\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief\"},"
        "{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":32,\"temperature\":0.1,"
        "\"top_p\":0.5,\"seed\":11,\"stop\":\"\\n\",\"frequency_penalty\":0.5,"
        "\"presence_penalty\":-0.5,\"user\":\"u1\"}",
        &req);
    if (!n)
        return;
    CHECK_STR(S(n, "model"), "qwen3:8b");
    CHECK(json_is_false(at(n, "stream")));
    CHECK_STR(S(n, "messages.0.role"), "system");
    CHECK_STR(S(n, "messages.1.content"), "Hi");
    CHECK(I(n, "options.num_predict") == 32);
    CHECK(json_real_value(at(n, "options.temperature")) == 0.1);
    CHECK(json_real_value(at(n, "options.top_p")) == 0.5);
    CHECK(I(n, "options.seed") == 11);
    CHECK_STR(S(n, "options.stop.0"), "\n");
    CHECK(json_real_value(at(n, "options.frequency_penalty")) == 0.5);
    CHECK(json_real_value(at(n, "options.presence_penalty")) == -0.5);
    CHECK(at(n, "user") == NULL);
    CHECK(at(n, "think") == NULL);
    CHECK(!req.stream);
    chat_request_deinit(&req);
}

static void request_ollama_controls(void)
{
    struct chat_request req;
    json_t *n =
        translate_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"max_completion_tokens\":7,\"max_tokens\":99,\"keep_alive\":\"20m\","
                     "\"options\":{\"num_ctx\":8192,\"temperature\":0.9},\"temperature\":0.2,"
                     "\"reasoning_effort\":\"none\",\"stream\":true,\"stream_options\":{\"include_"
                     "usage\":true}}",
                     &req);
    if (!n)
        return;
    CHECK(I(n, "options.num_predict") == 7);
    CHECK(I(n, "options.num_ctx") == 8192);
    CHECK(json_real_value(at(n, "options.temperature")) == 0.2);
    CHECK_STR(S(n, "keep_alive"), "20m");
    CHECK(json_is_false(at(n, "think")));
    CHECK(json_is_true(at(n, "stream")));
    CHECK(req.stream && req.include_usage);
    chat_request_deinit(&req);

    n = translate_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"think\":true,\"reasoning_effort\":\"none\",\"keep_alive\":0}",
                     &req);
    CHECK(json_is_true(at(n, "think")));
    CHECK(I(n, "keep_alive") == 0);
    chat_request_deinit(&req);

    n = translate_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"reasoning\":{\"effort\":\"minimal\"},\"reasoning_effort\":\"high\"}",
                     &req);
    CHECK_STR(S(n, "think"), "low");
    chat_request_deinit(&req);
}

static void request_response_format(void)
{
    struct chat_request req;
    json_t *n =
        translate_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"response_format\":{\"type\":\"json_object\"}}",
                     &req);
    CHECK_STR(S(n, "format"), "json");
    chat_request_deinit(&req);
    n = translate_ok(
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\","
        "\"schema\":{\"type\":\"object\"}}}}",
        &req);
    CHECK_STR(S(n, "format.type"), "object");
    chat_request_deinit(&req);
}

static void request_tools_and_images(void)
{
    struct chat_request req;
    json_t *n = translate_ok(
        "{\"model\":\"m\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_time\","
        "\"parameters\":{\"type\":\"object\"}}}],\"messages\":["
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is this?\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}}]},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":"
        "\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{\\\"tz\\\":\\\"UTC\\\"}"
        "\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"12:00\"}]}",
        &req);
    if (!n)
        return;
    CHECK_STR(S(n, "tools.0.function.name"), "get_time");
    CHECK_STR(S(n, "messages.0.content"), "What is this?");
    CHECK_STR(S(n, "messages.0.images.0"), "iVBORw0KGgo=");
    CHECK_STR(S(n, "messages.1.content"), "");
    CHECK_STR(S(n, "messages.1.tool_calls.0.function.arguments.tz"), "UTC");
    CHECK_STR(S(n, "messages.2.tool_name"), "get_time");
    CHECK_STR(S(n, "messages.2.tool_call_id"), "call_1");
    chat_request_deinit(&req);
}

static void request_errors(void)
{
    translate_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "model");
    translate_err("{\"model\":\"m\"}", 400, "messages");
    translate_err("{\"model\":\"m\",\"messages\":[]}", 400, "messages");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400,
                  "messages[0].role");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", 400,
                  "messages[0].content");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"temperature\":3}",
                  400, "temperature");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"max_tokens\":0}",
                  400, "max_tokens");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"stream\":\"yes\"}",
                  400, "stream");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"reasoning_effort\":\"extreme\"}",
                  400, "reasoning_effort");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                  "\"image_url\",\"image_url\":{\"url\":\"https://x/y.png\"}}]}]}",
                  400, "messages[0].content[0]");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":"
                  "\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{not json\"}}]}]}",
                  400, "messages[0].tool_calls[0].function");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}",
                  400, "n");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"stream_options\":{\"include_usage\":true}}",
                  400, "stream_options");
}

static void response_non_stream(void)
{
    json_t *native =
        J("{\"model\":\"qwen3:8b\",\"created_at\":\"2026-03-02T10:15:04.50871Z\","
          "\"message\":{\"role\":\"assistant\",\"content\":\"Pacific.\",\"thinking\":"
          "\"Compare.\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":27,"
          "\"eval_count\":4}");
    struct chat_usage u;
    struct proxy_error err;
    json_t *out = chat_response_translate(native, "qwen3:8b", "chatcmpl-x", 123, &u, &err);
    CHECK_STR(S(out, "object"), "chat.completion");
    CHECK_STR(S(out, "id"), "chatcmpl-x");
    CHECK(I(out, "created") == 123);
    CHECK_STR(S(out, "choices.0.message.role"), "assistant");
    CHECK_STR(S(out, "choices.0.message.content"), "Pacific.");
    CHECK_STR(S(out, "choices.0.message.reasoning_content"), "Compare.");
    CHECK_STR(S(out, "choices.0.finish_reason"), "stop");
    CHECK(I(out, "usage.prompt_tokens") == 27);
    CHECK(I(out, "usage.completion_tokens") == 4);
    CHECK(I(out, "usage.total_tokens") == 31);
    json_decref(out);
    json_decref(native);

    /* Inline think (older Ollama) and length. */
    native = J("{\"message\":{\"role\":\"assistant\",\"content\":\"<think>hmm</think>\\n\\nYes.\"},"
               "\"done\":true,\"done_reason\":\"length\"}");
    out = chat_response_translate(native, "m", "id", 1, &u, &err);
    CHECK_STR(S(out, "choices.0.message.content"), "Yes.");
    CHECK_STR(S(out, "choices.0.message.reasoning_content"), "hmm");
    CHECK_STR(S(out, "choices.0.finish_reason"), "length");
    json_decref(out);
    json_decref(native);

    /* Tool calls: arguments object -> string. */
    native = J("{\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":"
               "\"call_4kq0z8ab\",\"function\":{\"index\":0,\"name\":\"get_time\",\"arguments\":"
               "{\"tz\":\"UTC\"}}}]},\"done\":true,\"done_reason\":\"stop\"}");
    out = chat_response_translate(native, "m", "id", 1, &u, &err);
    CHECK(json_is_null(at(out, "choices.0.message.content")));
    CHECK_STR(S(out, "choices.0.message.tool_calls.0.id"), "call_4kq0z8ab");
    CHECK_STR(S(out, "choices.0.message.tool_calls.0.type"), "function");
    CHECK_STR(S(out, "choices.0.message.tool_calls.0.function.arguments"), "{\"tz\":\"UTC\"}");
    CHECK_STR(S(out, "choices.0.finish_reason"), "tool_calls");
    json_decref(out);
    json_decref(native);

    native = J("{\"done\":true}");
    out = chat_response_translate(native, "m", "id", 1, &u, &err);
    CHECK(out == NULL && err.status == 502);
    json_decref(native);
}

static json_t *feed(struct chat_stream *st, const char *line, int *rc)
{
    json_t *l = J(line);
    json_t *chunks = json_array();
    struct proxy_error err = {0};
    *rc = chat_stream_line(st, l, chunks, &err);
    json_decref(l);
    return chunks;
}

static void stream_lines(void)
{
    struct chat_stream st;
    chat_stream_init(&st, "qwen3:8b", "chatcmpl-s", 55, 1);
    int rc;
    json_t *c = feed(&st,
                     "{\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"Hm\"},"
                     "\"done\":false}",
                     &rc);
    CHECK(rc == CHAT_STREAM_MORE && json_array_size(c) == 1);
    CHECK_STR(S(c, "0.object"), "chat.completion.chunk");
    CHECK_STR(S(c, "0.id"), "chatcmpl-s");
    CHECK_STR(S(c, "0.choices.0.delta.role"), "assistant");
    CHECK_STR(S(c, "0.choices.0.delta.reasoning_content"), "Hm");
    CHECK(at(c, "0.choices.0.delta.content") == NULL);
    CHECK(json_is_null(at(c, "0.choices.0.finish_reason")));
    CHECK(json_is_null(at(c, "0.usage")));
    json_decref(c);

    c = feed(&st, "{\"message\":{\"role\":\"assistant\",\"content\":\"Paci\"},\"done\":false}",
             &rc);
    CHECK(json_array_size(c) == 1);
    CHECK(at(c, "0.choices.0.delta.role") == NULL);
    CHECK_STR(S(c, "0.choices.0.delta.content"), "Paci");
    json_decref(c);

    c = feed(&st,
             "{\"message\":{\"role\":\"assistant\",\"content\":\"fic.\"},\"done\":true,"
             "\"done_reason\":\"stop\",\"prompt_eval_count\":27,\"eval_count\":61}",
             &rc);
    CHECK(rc == CHAT_STREAM_DONE);
    CHECK(json_array_size(c) == 3);
    CHECK_STR(S(c, "0.choices.0.delta.content"), "fic.");
    CHECK_STR(S(c, "1.choices.0.finish_reason"), "stop");
    CHECK(json_object_size(at(c, "1.choices.0.delta")) == 0);
    CHECK(json_array_size(at(c, "2.choices")) == 0);
    CHECK(I(c, "2.usage.total_tokens") == 88);
    json_decref(c);
    chat_stream_deinit(&st);
}

static void stream_inline_think_and_tools(void)
{
    struct chat_stream st;
    chat_stream_init(&st, "m", "id", 1, 0);
    int rc;
    json_t *c = feed(&st, "{\"message\":{\"content\":\"<think>\"},\"done\":false}", &rc);
    CHECK(json_array_size(c) == 1);
    CHECK(at(c, "0.usage") == NULL);
    CHECK(at(c, "0.choices.0.delta.content") == NULL ||
          strcmp(S(c, "0.choices.0.delta.content"), "") == 0);
    json_decref(c);
    c = feed(&st, "{\"message\":{\"content\":\"plan</think>\\n\\nOK\"},\"done\":false}", &rc);
    CHECK_STR(S(c, "0.choices.0.delta.reasoning_content"), "plan");
    CHECK_STR(S(c, "0.choices.0.delta.content"), "OK");
    json_decref(c);
    c = feed(&st,
             "{\"message\":{\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
             "\"arguments\":{\"a\":1}}}]},\"done\":false}",
             &rc);
    CHECK_STR(S(c, "0.choices.0.delta.tool_calls.0.function.arguments"), "{\"a\":1}");
    CHECK(I(c, "0.choices.0.delta.tool_calls.0.index") == 0);
    CHECK(strncmp(S(c, "0.choices.0.delta.tool_calls.0.id"), "call_", 5) == 0);
    json_decref(c);
    c = feed(&st, "{\"message\":{\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\"}", &rc);
    CHECK(rc == CHAT_STREAM_DONE && json_array_size(c) == 1);
    CHECK_STR(S(c, "0.choices.0.finish_reason"), "tool_calls");
    json_decref(c);
    chat_stream_deinit(&st);
}

static void stream_error_line(void)
{
    struct chat_stream st;
    chat_stream_init(&st, "m", "id", 1, 0);
    json_t *l = J("{\"error\":\"model runner crashed\"}");
    json_t *chunks = json_array();
    struct proxy_error err = {0};
    CHECK(chat_stream_line(&st, l, chunks, &err) == CHAT_STREAM_ERROR);
    CHECK(strstr(err.message, "model runner crashed") != NULL);
    CHECK(json_array_size(chunks) == 0);
    json_decref(l);
    json_decref(chunks);
    chat_stream_deinit(&st);
}

static void embeddings(void)
{
    json_t *in = J("{\"model\":\"bge-m3\",\"input\":[\"a\",\"b\"],\"encoding_format\":\"base64\","
                   "\"dimensions\":2,\"keep_alive\":\"1m\"}");
    struct embed_request req;
    struct proxy_error err;
    CHECK(embed_request_translate(in, &req, &err) == 0);
    json_decref(in);
    CHECK(req.base64 && req.n_inputs == 2);
    CHECK_STR(S(req.native, "input.1"), "b");
    CHECK(I(req.native, "dimensions") == 2);
    CHECK_STR(S(req.native, "keep_alive"), "1m");
    json_t *native = J("{\"model\":\"bge-m3\",\"embeddings\":[[1.0,0.0],[0.5,-2]],"
                       "\"prompt_eval_count\":3}");
    long long tok = 0;
    json_t *out = embed_response_translate(native, &req, &tok, &err);
    CHECK(tok == 3);
    CHECK_STR(S(out, "object"), "list");
    CHECK_STR(S(out, "data.0.embedding"), "AACAPwAAAAA="); /* 1.0f, 0.0f little-endian */
    CHECK(I(out, "data.1.index") == 1);
    CHECK(I(out, "usage.prompt_tokens") == 3 && I(out, "usage.total_tokens") == 3);
    CHECK_STR(S(out, "model"), "bge-m3");
    json_decref(out);
    json_decref(native);
    native = J("{\"embeddings\":[[1.0]]}");
    CHECK(embed_response_translate(native, &req, &tok, &err) == NULL && err.status == 502);
    json_decref(native);
    embed_request_deinit(&req);

    const char *bad[] = {"{\"input\":\"x\"}",
                         "{\"model\":\"m\"}",
                         "{\"model\":\"m\",\"input\":[]}",
                         "{\"model\":\"m\",\"input\":[1,2,3]}",
                         "{\"model\":\"m\",\"input\":\"\"}",
                         "{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":\"hex\"}",
                         "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":0}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        in = J(bad[i]);
        CHECK(embed_request_translate(in, &req, &err) == -1 && err.status == 400);
        json_decref(in);
    }
}

static void request_policy(void)
{
    chat_policy_set(NULL, 8192, 600);
    struct chat_request req;
    /* Default list: sampling keys, num_predict, num_ctx within the cap. */
    json_t *n = translate_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                             "\"x\"}],\"options\":{\"num_ctx\":8192,\"top_k\":5},"
                             "\"keep_alive\":\"5m\"}",
                             &req);
    if (n) {
        CHECK(I(n, "options.num_ctx") == 8192);
        CHECK_STR(S(n, "keep_alive"), "5m");
        chat_request_deinit(&req);
    }
    /* keep_alive longer than the maximum, or forever (-1), is lowered. */
    const char *clamped[] = {"\"-1\"", "-1", "\"2h\"", "86400", "\"1h30m\""};
    for (size_t i = 0; i < sizeof clamped / sizeof clamped[0]; i++) {
        char body[200];
        snprintf(body, sizeof body,
                 "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                 "\"keep_alive\":%s}",
                 clamped[i]);
        n = translate_ok(body, &req);
        if (n) {
            CHECK(I(n, "keep_alive") == 600);
            chat_request_deinit(&req);
        }
    }
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"options\":{\"num_gpu\":99}}",
                  400, "options.num_gpu");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"options\":{\"num_ctx\":10000000}}",
                  400, "options.num_ctx");
    translate_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"keep_alive\":\"soon\"}",
                  400, "keep_alive");
    /* Embeddings follow the same policy. */
    struct embed_request er;
    struct proxy_error err = {0};
    json_t *in = J("{\"model\":\"m\",\"input\":\"x\",\"options\":{\"main_gpu\":1}}");
    CHECK(embed_request_translate(in, &er, &err) == -1 && err.status == 400);
    CHECK_STR(err.param, "options.main_gpu");
    json_decref(in);
    in = J("{\"model\":\"m\",\"input\":\"x\",\"keep_alive\":-1}");
    CHECK(embed_request_translate(in, &er, &err) == 0);
    CHECK(I(er.native, "keep_alive") == 600);
    embed_request_deinit(&er);
    json_decref(in);
    /* "*" lets everything through. */
    chat_policy_set("*", 0, -1);
    n = translate_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"options\":{\"num_gpu\":1,\"num_ctx\":1000000},\"keep_alive\":-1}",
                     &req);
    if (n) {
        CHECK(I(n, "options.num_gpu") == 1);
        CHECK(I(n, "keep_alive") == -1);
        chat_request_deinit(&req);
    }
    chat_policy_reset();
}

static void embeddings_upstream_numbers(void)
{
    struct embed_request req;
    struct proxy_error err = {0};
    json_t *in = J("{\"model\":\"bge-m3\",\"input\":[\"a\",\"b\"]}");
    CHECK(embed_request_translate(in, &req, &err) == 0);
    json_decref(in);
    long long tok = 0;
    /* Out of float range (would be undefined behaviour when converted). */
    const char *bad[] = {
        "{\"embeddings\":[[1e39],[0.5]]}",
        "{\"embeddings\":[[0.5],[-1e300]]}",
        /* Indexed form: each index exactly once. */
        "{\"data\":[{\"index\":0,\"embedding\":[1]},{\"index\":0,\"embedding\":[2]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1]},{\"index\":5,\"embedding\":[2]}]}",
        "{\"data\":[{\"embedding\":[1]},{\"index\":1,\"embedding\":[2]}]}",
        "{\"embeddings\":[[0.5],[0.5]],\"prompt_eval_count\":-4}",
        "{\"embeddings\":[[0.5],[0.5]],\"prompt_eval_count\":1e300}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *native = J(bad[i]);
        err.status = 0;
        json_t *out = embed_response_translate(native, &req, &tok, &err);
        CHECK(out == NULL && err.status == 502);
        CHECK_STR(err.code, "upstream_error");
        json_decref(out);
        json_decref(native);
    }
    /* The indexed form in any order is put back in input order. */
    json_t *native = J("{\"data\":[{\"index\":1,\"embedding\":[2]},{\"index\":0,\"embedding\":"
                       "[1]}]}");
    json_t *out = embed_response_translate(native, &req, &tok, &err);
    CHECK(out != NULL);
    CHECK(json_number_value(at(out, "data.0.embedding.0")) == 1);
    CHECK(I(out, "data.1.index") == 1);
    json_decref(out);
    json_decref(native);
    /* FLT_MAX itself is fine. */
    char buf[128];
    snprintf(buf, sizeof buf, "{\"embeddings\":[[%.17g],[%.17g]]}", (double)FLT_MAX,
             -(double)FLT_MAX);
    native = J(buf);
    out = embed_response_translate(native, &req, &tok, &err);
    CHECK(out != NULL);
    json_decref(out);
    json_decref(native);
    embed_request_deinit(&req);
}

/* The HTTP path translates from the text, message by message: same native
 * body and same errors as the JSON path, for valid and invalid requests. */
static void request_text_path_matches(void)
{
    const char *bodies[] = {
        "{\"model\":\"qwen3:8b\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief\"},"
        "{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":32,\"temperature\":0.1,"
        "\"stop\":\"\\n\",\"user\":\"u1\"}",
        " { \"messages\" : [ {\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"function\":"
        "{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]} , {\"role\":\"tool\",\"tool_call_id\":"
        "\"c1\",\"content\":\"r\\\"]}\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\","
        "\"text\":"
        "\"a\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}],"
        "\"model\":\"m\",\"stream\":true,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
        "\"f\"}}],\"keep_alive\":0} \n",
        "{\"model\":\"m\",\"messages\":[]}",
        "{\"model\":\"m\",\"messages\":{}}",
        "{\"model\":\"m\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"bad\"}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        struct chat_request a, b;
        struct proxy_error ea = {0}, eb = {0};
        json_t *in = J(bodies[i]);
        int ra = chat_request_translate(in, &a, &ea);
        json_decref(in);
        int rb = chat_request_translate_text(bodies[i], strlen(bodies[i]), &b, &eb);
        CHECK(ra == rb);
        if (ra != rb)
            fprintf(stderr, "body %zu: json %d (%s) text %d (%s)\n", i, ra, ea.message, rb,
                    eb.message);
        if (ra == 0 && rb == 0) {
            size_t la, lb;
            char *ta = chat_request_body(&a, &la), *tb = chat_request_body(&b, &lb);
            json_t *ja = J(ta), *jb = J(tb);
            CHECK(json_equal(ja, jb));
            json_decref(ja);
            json_decref(jb);
            free(ta);
            free(tb);
            chat_request_deinit(&a);
            chat_request_deinit(&b);
        } else if (ra != 0 && rb != 0) {
            CHECK(ea.status == eb.status);
            CHECK_STR(ea.param, eb.param);
        }
    }
    /* Broken JSON anywhere is a 400, like the JSON parser's. */
    const char *broken[] = {
        "",
        "{",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},]}",
        "{\"model\":\"m\",\"model\":\"n\",\"messages\":[]}",
        "{\"messages\":[],\"messages\":[]}",
        "{\"model\":\"m\"} x",
        "[1]",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}] ,}"};
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        struct chat_request b;
        struct proxy_error eb = {0};
        CHECK(chat_request_translate_text(broken[i], strlen(broken[i]), &b, &eb) == -1);
        CHECK(eb.status == 400);
    }
}

static void models(void)
{
    json_t *tags = J("{\"models\":[{\"name\":\"qwen3:8b\",\"model\":\"qwen3:8b\",\"modified_at\":"
                     "\"2026-03-02T10:15:04.50871Z\"},{\"name\":\"me/bge:latest\",\"model\":"
                     "\"me/bge:latest\",\"modified_at\":\"2026-03-02T03:15:04-07:00\"}]}");
    json_t *list = models_list_translate(tags);
    CHECK_STR(S(list, "object"), "list");
    CHECK(json_array_size(at(list, "data")) == 2);
    CHECK_STR(S(list, "data.0.id"), "qwen3:8b");
    CHECK_STR(S(list, "data.0.owned_by"), "library");
    CHECK_STR(S(list, "data.1.owned_by"), "me");
    CHECK(I(list, "data.0.created") == I(list, "data.1.created"));
    CHECK(I(list, "data.0.created") == 1772446504);
    json_decref(list);
    json_t *m = models_find_translate(tags, "me/bge");
    CHECK_STR(S(m, "id"), "me/bge");
    json_decref(m);
    CHECK(models_find_translate(tags, "nosuch") == NULL);
    json_t *empty = J("{\"models\":[]}");
    list = models_list_translate(empty);
    CHECK(json_is_array(at(list, "data")) && json_array_size(at(list, "data")) == 0);
    json_decref(list);
    json_decref(empty);
    json_decref(tags);
}

/* ------------------------------------------------------------ Responses API */

static json_t *responses_native(const char *text, struct chat_request *req)
{
    json_t *in = J(text);
    struct proxy_error err = {0};
    int rc = responses_request_translate(in, req, NULL, &err);
    json_decref(in);
    if (rc != 0)
        fprintf(stderr, "unexpected error: %s\n", err.message);
    CHECK(rc == 0);
    return rc == 0 ? req->native : NULL;
}

static void responses_err(const char *text, int status, const char *param)
{
    json_t *in = J(text);
    struct chat_request req;
    struct proxy_error err = {0};
    CHECK(responses_request_translate(in, &req, NULL, &err) == -1);
    CHECK(err.status == status);
    CHECK_STR(err.param, param);
    json_decref(in);
}

static void responses_request(void)
{
    struct chat_request req;
    json_t *n = responses_native(
        "{\"model\":\"m\",\"instructions\":\"sys\",\"max_output_tokens\":9,\"temperature\":0.3,"
        "\"top_p\":0.9,\"reasoning\":{\"effort\":\"high\"},\"stream\":true,"
        "\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"t\",\"schema\":{\"type\":"
        "\"object\"}}},\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":{\"type\":"
        "\"object\"}}],\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\","
        "\"text\":\"hi\"},{\"type\":\"input_image\",\"image_url\":\"data:image/"
        "png;base64,QUJD\"}]},"
        "{\"type\":\"reasoning\",\"summary\":[{\"type\":\"summary_text\",\"text\":\"hmm\"}]},"
        "{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{\\\"a\\\":"
        "1}\"},"
        "{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":\"42\"}]}",
        &req);
    CHECK(req.stream == 1);
    CHECK_STR(S(n, "messages.0.role"), "system");
    CHECK_STR(S(n, "messages.0.content"), "sys");
    CHECK_STR(S(n, "messages.1.content"), "hi");
    CHECK_STR(S(n, "messages.1.images.0"), "QUJD");
    CHECK_STR(S(n, "messages.2.role"), "assistant");
    CHECK_STR(S(n, "messages.2.thinking"), "hmm");
    CHECK_STR(S(n, "messages.2.tool_calls.0.function.name"), "f");
    CHECK(I(n, "messages.2.tool_calls.0.function.arguments.a") == 1);
    CHECK_STR(S(n, "messages.3.role"), "tool");
    CHECK_STR(S(n, "messages.3.tool_name"), "f");
    CHECK_STR(S(n, "messages.3.content"), "42");
    CHECK(I(n, "options.num_predict") == 9);
    CHECK_STR(S(n, "think"), "high");
    CHECK_STR(S(n, "format.type"), "object");
    CHECK_STR(S(n, "tools.0.function.name"), "f");
    chat_request_deinit(&req);

    n = responses_native("{\"model\":\"m\",\"input\":\"x\",\"tool_choice\":{\"type\":"
                         "\"function\",\"name\":\"g\"},\"tools\":[{\"type\":\"function\","
                         "\"name\":\"f\"},{\"type\":\"function\",\"name\":\"g\"}]}",
                         &req);
    CHECK(json_array_size(at(n, "tools")) == 1);
    CHECK_STR(S(n, "tools.0.function.name"), "g");
    chat_request_deinit(&req);

    n = responses_native("{\"model\":\"m\",\"input\":\"just text\",\"store\":false}", &req);
    CHECK_STR(S(n, "messages.0.role"), "user");
    CHECK_STR(S(n, "messages.0.content"), "just text");
    chat_request_deinit(&req);

    responses_err("{\"model\":\"m\",\"input\":\"x\",\"previous_response_id\":\"resp_1\"}", 400,
                  "previous_response_id");
    responses_err("{\"model\":\"m\",\"input\":\"x\",\"store\":true}", 400, "store");
    responses_err("{\"input\":\"x\"}", 400, "model");
    responses_err("{\"model\":\"m\"}", 400, "input");
    responses_err("{\"model\":\"m\",\"input\":5}", 400, "input");
    responses_err("{\"model\":\"m\",\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}", 400,
                  "input[0]");
    n = responses_native("{\"model\":\"m\",\"input\":[{\"type\":\"item_reference\",\"id\":"
                         "\"rs_1\"},{\"role\":\"user\",\"content\":\"u\"}]}",
                         &req);
    CHECK(json_array_size(at(n, "messages")) == 1);
    CHECK_STR(S(n, "messages.0.content"), "u");
    chat_request_deinit(&req);
    responses_err("{\"model\":\"m\",\"input\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400,
                  "input[0].role");
    responses_err("{\"model\":\"m\",\"input\":\"x\",\"tools\":[{\"type\":\"web_search\"}]}", 400,
                  "tools[0]");
    responses_err("{\"model\":\"m\",\"input\":\"x\",\"max_output_tokens\":0}", 400,
                  "max_output_tokens");
    responses_err("{\"model\":\"m\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":"
                  "\"input_image\",\"file_id\":\"f\"}]}]}",
                  400, "input[0].content[0]");
}

static json_t *chunk_of(const char *delta_json)
{
    char *t = cm_xasprintf("{\"choices\":[{\"index\":0,\"delta\":%s}]}", delta_json);
    json_t *c = J(t);
    free(t);
    return c;
}

static void responses_events(void)
{
    struct responses_stream *rs = responses_stream_new("m", NULL, 1);
    json_t *ev = json_array();
    responses_stream_start(rs, ev);
    const char *deltas[] = {"{\"role\":\"assistant\",\"reasoning_content\":\"think\"}",
                            "{\"content\":\"Hel\"}", "{\"content\":\"lo\"}",
                            ("{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":"
                             "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}")};
    for (size_t i = 0; i < 4; i++) {
        json_t *c = chunk_of(deltas[i]);
        responses_stream_chunk(rs, c, ev);
        json_decref(c);
    }
    struct chat_usage u = {3, 4};
    responses_stream_done(rs, "tool_calls", &u, ev);
    static const char *want[] = {"response.created",
                                 "response.in_progress",
                                 "response.output_item.added",
                                 "response.reasoning_summary_part.added",
                                 "response.reasoning_summary_text.delta",
                                 "response.reasoning_summary_text.done",
                                 "response.reasoning_summary_part.done",
                                 "response.output_item.done",
                                 "response.output_item.added",
                                 "response.content_part.added",
                                 "response.output_text.delta",
                                 "response.output_text.delta",
                                 "response.output_text.done",
                                 "response.content_part.done",
                                 "response.output_item.done",
                                 "response.output_item.added",
                                 "response.function_call_arguments.delta",
                                 "response.function_call_arguments.done",
                                 "response.output_item.done",
                                 "response.completed"};
    CHECK(json_array_size(ev) == sizeof want / sizeof want[0]);
    for (size_t i = 0; i < json_array_size(ev) && i < sizeof want / sizeof want[0]; i++) {
        CHECK_STR(S(json_array_get(ev, i), "type"), want[i]);
        CHECK(I(json_array_get(ev, i), "sequence_number") == (long long)i);
    }
    json_t *r = responses_stream_result(rs);
    CHECK_STR(S(r, "status"), "completed");
    CHECK_STR(S(r, "output.0.summary.0.text"), "think");
    CHECK_STR(S(r, "output.1.content.0.text"), "Hello");
    CHECK_STR(S(r, "output.2.call_id"), "call_1");
    CHECK(I(r, "usage.total_tokens") == 7);
    CHECK(strncmp(S(r, "id"), "resp_", 5) == 0);
    json_decref(r);
    json_decref(ev);
    responses_stream_free(rs);

    rs = responses_stream_new("m", NULL, 1);
    ev = json_array();
    struct proxy_error e;
    proxy_error_set(&e, 502, NULL, "upstream_error", "boom");
    responses_stream_fail(rs, &e, ev);
    CHECK_STR(S(ev, "0.type"), "response.failed");
    CHECK_STR(S(ev, "0.response.error.message"), "boom");
    CHECK_STR(S(ev, "0.response.status"), "failed");
    json_decref(ev);
    responses_stream_free(rs);
}

/* ------------------------------------------------------------ Messages API */

static void messages_err(const char *text, int status, const char *param)
{
    json_t *in = J(text);
    struct chat_request req;
    struct proxy_error err = {0};
    CHECK(messages_request_translate(in, &req, &err) == -1);
    CHECK(err.status == status);
    CHECK_STR(err.param, param);
    json_decref(in);
}

static void messages_request(void)
{
    json_t *in = J(
        "{\"model\":\"m\",\"max_tokens\":20,\"system\":[{\"type\":\"text\",\"text\":\"s\"}],"
        "\"top_k\":5,\"stop_sequences\":[\"X\"],\"thinking\":{\"type\":\"enabled\","
        "\"budget_tokens\":100},\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":"
        "\"object\"}}],\"tool_choice\":{\"type\":\"auto\"},\"messages\":[{\"role\":\"user\","
        "\"content\":[{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":"
        "\"image/png\",\"data\":\"QUJD\"}},{\"type\":\"text\",\"text\":\"q\"}]},{\"role\":"
        "\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"t\",\"signature\":\"\"},"
        "{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"tool_use\",\"id\":\"tu1\",\"name\":\"f\","
        "\"input\":{\"k\":2}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
        "\"tool_use_id\":\"tu1\",\"content\":[{\"type\":\"text\",\"text\":\"r\"}]},{\"type\":"
        "\"text\",\"text\":\"next\"}]}]}");
    struct chat_request req;
    struct proxy_error err = {0};
    CHECK(messages_request_translate(in, &req, &err) == 0);
    json_decref(in);
    json_t *n = req.native;
    CHECK_STR(S(n, "messages.0.role"), "system");
    CHECK_STR(S(n, "messages.0.content"), "s");
    CHECK_STR(S(n, "messages.1.images.0"), "QUJD");
    CHECK_STR(S(n, "messages.1.content"), "q");
    CHECK_STR(S(n, "messages.2.thinking"), "t");
    CHECK_STR(S(n, "messages.2.content"), "a");
    CHECK(I(n, "messages.2.tool_calls.0.function.arguments.k") == 2);
    CHECK_STR(S(n, "messages.3.role"), "tool");
    CHECK_STR(S(n, "messages.3.tool_name"), "f");
    CHECK_STR(S(n, "messages.3.content"), "r");
    CHECK_STR(S(n, "messages.4.content"), "next");
    CHECK(json_is_true(at(n, "think")));
    CHECK(I(n, "options.num_predict") == 20);
    CHECK(I(n, "options.top_k") == 5);
    CHECK_STR(S(n, "options.stop.0"), "X");
    CHECK_STR(S(n, "tools.0.function.name"), "f");
    chat_request_deinit(&req);

    in = J("{\"model\":\"m\",\"max_tokens\":5,\"tool_choice\":{\"type\":\"tool\",\"name\":"
           "\"g\"},\"tools\":[{\"name\":\"f\",\"input_schema\":{}},{\"name\":\"g\","
           "\"input_schema\":{}}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    CHECK(messages_request_translate(in, &req, &err) == 0);
    json_decref(in);
    CHECK(json_array_size(at(req.native, "tools")) == 1);
    CHECK_STR(S(req.native, "tools.0.function.name"), "g");
    CHECK(json_is_false(at(req.native, "think")));
    chat_request_deinit(&req);

    messages_err("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400,
                 "max_tokens");
    messages_err("{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400,
                 "model");
    messages_err("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[]}", 400, "messages");
    messages_err("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"system\","
                 "\"content\":\"x\"}]}",
                 400, "messages.0");
    messages_err("{\"model\":\"m\",\"max_tokens\":1,\"temperature\":1.5,\"messages\":[{\"role\":"
                 "\"user\",\"content\":\"x\"}]}",
                 400, "temperature");
    messages_err("{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":"
                 "[{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"http://x\"}}]}]}",
                 400, "messages.0.content.0");
    messages_err("{\"model\":\"m\",\"max_tokens\":1,\"tools\":[{\"type\":\"web_search_20250305\","
                 "\"name\":\"web_search\"}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                 400, "tools");
    messages_err("{\"model\":\"m\",\"max_tokens\":1,\"thinking\":{\"type\":\"enabled\"},"
                 "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                 400, "thinking");
}

static void messages_events(void)
{
    struct messages_stream *ms = messages_stream_new("m");
    json_t *ev = json_array();
    messages_stream_start(ms, ev);
    const char *deltas[] = {"{\"reasoning_content\":\"th\"}", "{\"content\":\"A\"}",
                            "{\"content\":\"B\"}",
                            ("{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":"
                             "\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
                             "\"{\\\"x\\\":1}\"}}]}")};
    for (size_t i = 0; i < 4; i++) {
        json_t *c = chunk_of(deltas[i]);
        messages_stream_chunk(ms, c, ev);
        json_decref(c);
    }
    struct chat_usage u = {3, 4};
    messages_stream_done(ms, "tool_calls", &u, ev);
    static const char *want[] = {
        "message_start",      "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta",      "message_stop"};
    CHECK(json_array_size(ev) == sizeof want / sizeof want[0]);
    for (size_t i = 0; i < json_array_size(ev) && i < sizeof want / sizeof want[0]; i++)
        CHECK_STR(S(json_array_get(ev, i), "type"), want[i]);
    CHECK_STR(S(ev, "2.delta.type"), "thinking_delta");
    CHECK_STR(S(ev, "3.delta.type"), "signature_delta");
    CHECK(I(ev, "5.index") == 1);
    CHECK_STR(S(ev, "10.delta.partial_json"), "{\"x\":1}");
    CHECK_STR(S(ev, "12.delta.stop_reason"), "tool_use");
    CHECK(I(ev, "12.usage.output_tokens") == 4);
    json_t *m = messages_stream_result(ms);
    CHECK_STR(S(m, "content.0.thinking"), "th");
    CHECK_STR(S(m, "content.1.text"), "AB");
    CHECK(I(m, "content.2.input.x") == 1);
    CHECK_STR(S(m, "stop_reason"), "tool_use");
    CHECK(I(m, "usage.input_tokens") == 3);
    json_decref(m);
    json_decref(ev);
    messages_stream_free(ms);

    struct proxy_error e;
    proxy_error_set(&e, 404, "model", NULL, "no such model");
    json_t *j = proxy_error_anthropic_json(&e);
    CHECK_STR(S(j, "type"), "error");
    CHECK_STR(S(j, "error.type"), "not_found_error");
    CHECK_STR(S(j, "error.message"), "no such model");
    json_decref(j);
    CHECK_STR(proxy_error_anthropic_type(401), "authentication_error");
    CHECK_STR(proxy_error_anthropic_type(429), "rate_limit_error");
    CHECK_STR(proxy_error_anthropic_type(502), "api_error");
}

UNIT_MAIN(T(request_basic_mapping), T(request_ollama_controls), T(request_response_format),
          T(request_tools_and_images), T(request_errors), T(response_non_stream), T(stream_lines),
          T(stream_inline_think_and_tools), T(stream_error_line), T(embeddings), T(models),
          T(request_policy), T(embeddings_upstream_numbers), T(request_text_path_matches),
          T(responses_request), T(responses_events), T(messages_request), T(messages_events))

/* chat_translate: OpenAI chat <-> Ollama /api/chat (see chat_translate.h). */
#include "chat_translate.h"

#include "chat_policy.h"

#include "cm_alloc.h"
#include "cm_json.h"
#include "cm_mem_budget.h"
#include "cm_metrics.h"

#include <event2/buffer.h>

#include <math.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STOP_SEQUENCES 4

/* Ids only need to be unique and unguessable enough: a random per-process
 * key mixed with a counter (splitmix64), no system call per id. */
static uint64_t next_random(void)
{
    static _Thread_local uint64_t key, counter; /* per worker thread */
    if (key == 0 && RAND_bytes((unsigned char *)&key, sizeof key) != 1)
        key = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL;
    uint64_t z = key + 0x9e3779b97f4a7c15ULL * ++counter;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void random_chars(char *out, size_t n)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    uint64_t bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0)
            bits = next_random();
        out[i] = alphabet[(bits & 0xff) % (sizeof alphabet - 1)];
        bits >>= 8;
    }
    out[n] = '\0';
}

void chat_new_id(char *buf, size_t len)
{
    chat_new_prefixed_id(buf, len, "chatcmpl-");
}

void chat_new_prefixed_id(char *buf, size_t len, const char *prefix)
{
    char r[25];
    random_chars(r, 24);
    snprintf(buf, len, "%s%s", prefix, r);
}

static void new_call_id(char *buf, size_t len)
{
    char r[25];
    random_chars(r, 24);
    snprintf(buf, len, "call_%s", r);
}

/* ------------------------------------------------------------ request */

static int number_in(const json_t *v, double lo, double hi)
{
    if (!json_is_number(v))
        return 0;
    double d = json_number_value(v);
    return isfinite(d) && d >= lo && d <= hi;
}

static int map_effort(const char *effort, json_t **think)
{
    static const struct {
        const char *in;
        const char *level; /* NULL = false */
    } map[] = {{"none", NULL},   {"minimal", "low"}, {"low", "low"},  {"medium", "medium"},
               {"high", "high"}, {"max", "max"},     {"xhigh", "max"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(effort, map[i].in) == 0) {
            *think = map[i].level ? json_string(map[i].level) : json_false();
            return 0;
        }
    }
    return -1;
}

/* data:image/png;base64,XXXX -> XXXX (borrowed pointer into url) */
static const char *data_url_payload(const char *url)
{
    if (strncmp(url, "data:", 5) != 0)
        return NULL;
    const char *comma = strchr(url, ',');
    if (!comma)
        return NULL;
    const char *b64 = strstr(url, ";base64");
    if (!b64 || b64 > comma)
        return NULL;
    return comma + 1;
}

static int translate_content(const json_t *content, size_t mi, json_t *native_msg,
                             struct proxy_error *err)
{
    char param[96];
    snprintf(param, sizeof param, "messages[%zu].content", mi);
    if (json_is_string(content)) {
        json_object_set(native_msg, "content", (json_t *)content);
        return 0;
    }
    if (!json_is_array(content)) {
        proxy_error_set(err, 400, param, "invalid_type",
                        "Invalid type for '%s': expected a string or an array of content parts.",
                        param);
        return -1;
    }
    char *text = NULL;
    size_t text_len = 0;
    json_t *images = json_array();
    size_t pi;
    json_t *part;
    int rc = 0;
    json_array_foreach(content, pi, part)
    {
        const char *type = cm_json_str(part, "type");
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", mi, pi);
        if (!type) {
            proxy_error_set(err, 400, param, "invalid_type",
                            "Invalid content part at '%s': missing 'type'.", param);
            rc = -1;
            break;
        }
        if (strcmp(type, "text") == 0 || strcmp(type, "refusal") == 0) {
            const char *t = cm_json_str(part, strcmp(type, "text") == 0 ? "text" : "refusal");
            if (!t) {
                proxy_error_set(err, 400, param, "invalid_type",
                                "Invalid content part at '%s': 'text' must be a string.", param);
                rc = -1;
                break;
            }
            size_t tl = strlen(t);
            text = cm_xrealloc(text, text_len + tl + 2);
            if (text_len)
                text[text_len++] = '\n';
            memcpy(text + text_len, t, tl);
            text_len += tl;
            text[text_len] = '\0';
        } else if (strcmp(type, "image_url") == 0) {
            json_t *iu = json_object_get(part, "image_url");
            const char *url = json_is_string(iu) ? json_string_value(iu) : cm_json_str(iu, "url");
            const char *payload = url ? data_url_payload(url) : NULL;
            if (!payload || !*payload) {
                proxy_error_set(err, 400, param, "invalid_image_url",
                                "Invalid image at '%s': only base64 data URLs "
                                "(data:image/...;base64,...) are supported.",
                                param);
                rc = -1;
                break;
            }
            json_array_append_new(images, json_string(payload));
        } else {
            proxy_error_set(err, 400, param, "invalid_type",
                            "Unsupported content part type '%.40s' at '%s'.", type, param);
            rc = -1;
            break;
        }
    }
    if (rc == 0) {
        json_object_set_new(native_msg, "content", json_string(text ? text : ""));
        if (json_array_size(images))
            json_object_set(native_msg, "images", images);
    }
    free(text);
    json_decref(images);
    return rc;
}

static int translate_tool_calls(const json_t *calls, size_t mi, json_t *native_msg,
                                json_t *call_names, struct proxy_error *err)
{
    char param[128];
    if (!json_is_array(calls)) {
        snprintf(param, sizeof param, "messages[%zu].tool_calls", mi);
        proxy_error_set(err, 400, param, "invalid_type", "'%s' must be an array.", param);
        return -1;
    }
    json_t *out = json_array();
    size_t ci;
    json_t *call;
    json_array_foreach(calls, ci, call)
    {
        json_t *fn = json_object_get(call, "function");
        const char *name = cm_json_str(fn, "name");
        json_t *args = json_object_get(fn, "arguments");
        snprintf(param, sizeof param, "messages[%zu].tool_calls[%zu].function", mi, ci);
        if (!name) {
            proxy_error_set(err, 400, param, "invalid_type", "'%s.name' must be a string.", param);
            json_decref(out);
            return -1;
        }
        json_t *args_obj = NULL;
        if (json_is_string(args)) {
            const char *s = json_string_value(args);
            args_obj = *s ? cm_json_parse(s, strlen(s), NULL, 0) : json_object();
        } else if (json_is_object(args)) {
            args_obj = json_incref(args);
        } else if (!args) {
            args_obj = json_object();
        }
        if (!json_is_object(args_obj)) {
            json_decref(args_obj);
            proxy_error_set(err, 400, param, "invalid_tool_arguments",
                            "'%s.arguments' must be a JSON object encoded as a string.", param);
            json_decref(out);
            return -1;
        }
        json_t *nfn = json_pack("{s:s, s:o, s:I}", "name", name, "arguments", args_obj, "index",
                                (json_int_t)ci);
        json_t *ncall = json_pack("{s:o}", "function", nfn);
        const char *id = cm_json_str(call, "id");
        if (id) {
            json_object_set_new(ncall, "id", json_string(id));
            json_object_set_new(call_names, id, json_string(name));
        }
        json_array_append_new(out, ncall);
    }
    json_object_set_new(native_msg, "tool_calls", out);
    return 0;
}

/* One message -> its native form (new reference), or NULL with err set.
 * call_names maps tool_call ids seen so far to function names. */
static json_t *translate_message(const json_t *m, size_t mi, json_t *call_names,
                                 struct proxy_error *err)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%zu]", mi);
    const char *role = cm_json_str(m, "role");
    if (!json_is_object(m) || !role) {
        proxy_error_set(err, 400, param, "invalid_type",
                        "Invalid '%s': each message must be an object with a 'role'.", param);
        return NULL;
    }
    const char *nrole;
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        nrole = "system";
    else if (strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0 ||
             strcmp(role, "tool") == 0)
        nrole = role;
    else {
        snprintf(param, sizeof param, "messages[%zu].role", mi);
        proxy_error_set(err, 400, param, "invalid_value",
                        "Invalid value for '%s': '%.40s' is not one of 'system', 'developer', "
                        "'user', 'assistant', 'tool'.",
                        param, role);
        return NULL;
    }
    json_t *nm = json_pack("{s:s}", "role", nrole);
    json_t *content = json_object_get(m, "content");
    int is_assistant = strcmp(nrole, "assistant") == 0;
    if (!content || json_is_null(content)) {
        if (!is_assistant) {
            snprintf(param, sizeof param, "messages[%zu].content", mi);
            proxy_error_set(err, 400, param, "missing_required_parameter",
                            "Missing required parameter: '%s'.", param);
            goto fail;
        }
        json_object_set_new(nm, "content", json_string(""));
    } else if (translate_content(content, mi, nm, err) != 0) {
        goto fail;
    }
    if (is_assistant) {
        const char *reasoning = cm_json_str(m, "reasoning_content");
        if (!reasoning)
            reasoning = cm_json_str(m, "reasoning");
        if (reasoning && *reasoning)
            json_object_set_new(nm, "thinking", json_string(reasoning));
        json_t *calls = json_object_get(m, "tool_calls");
        if (calls && !json_is_null(calls) &&
            translate_tool_calls(calls, mi, nm, call_names, err) != 0)
            goto fail;
    }
    if (strcmp(nrole, "tool") == 0) {
        const char *tcid = cm_json_str(m, "tool_call_id");
        if (tcid) {
            json_object_set_new(nm, "tool_call_id", json_string(tcid));
            const char *fname = cm_json_str(call_names, tcid);
            if (fname)
                json_object_set_new(nm, "tool_name", json_string(fname));
        }
        const char *name = cm_json_str(m, "name");
        if (name && !json_object_get(nm, "tool_name"))
            json_object_set_new(nm, "tool_name", json_string(name));
    }
    return nm;
fail:
    json_decref(nm);
    return NULL;
}

static void messages_shape_error(const json_t *msgs, struct proxy_error *err)
{
    proxy_error_set(err, 400, "messages", json_is_array(msgs) ? "empty_array" : "invalid_type",
                    json_is_array(msgs) ? "[] is too short - 'messages'"
                                        : "'messages' must be a non-empty array.");
}

static json_t *translate_messages(const json_t *msgs, struct proxy_error *err)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        messages_shape_error(msgs, err);
        return NULL;
    }
    json_t *out = json_array();
    json_t *call_names = json_object(); /* tool_call_id -> function name */
    size_t mi;
    json_t *m;
    json_array_foreach(msgs, mi, m)
    {
        json_t *nm = translate_message(m, mi, call_names, err);
        if (!nm) {
            json_decref(call_names);
            json_decref(out);
            return NULL;
        }
        json_array_append_new(out, nm);
    }
    json_decref(call_names);
    return out;
}

/* ------------------------------------------------------------ request text */

/*
 * The HTTP path translates from the body text so that memory stays close to
 * the size of the text: jansson needs up to ~70 bytes per byte of JSON for
 * small values (a 12 MB body of 400,000 one-letter messages is ~200 MB
 * parsed). Only the top-level members other than "messages" are parsed as a
 * whole (they are validated exactly as before); "messages" is walked
 * element by element: each message is parsed, translated, written to the
 * native text and freed before the next one.
 */

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* End (exclusive) of the JSON value starting at i, or 0 when it is cut
 * short. Only finds the extent; the value is validated by parsing it. */
static size_t skip_value(const char *s, size_t len, size_t i)
{
    if (i >= len)
        return 0;
    if (s[i] == '"' || s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        int in_string = 0;
        for (; i < len; i++) {
            char c = s[i];
            if (in_string) {
                if (c == '\\')
                    i++;
                else if (c == '"') {
                    in_string = 0;
                    if (depth == 0)
                        return i + 1;
                }
            } else if (c == '"') {
                in_string = 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (depth == 0)
                    return 0;
                if (--depth == 0)
                    return i + 1;
            }
        }
        return 0;
    }
    size_t start = i;
    while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i > start ? i : 0;
}

static void parse_error(struct proxy_error *err, const char *why)
{
    proxy_error_set(err, 400, NULL, NULL, "We could not parse the JSON body of your request: %s.",
                    why);
}

static void overloaded_error(struct proxy_error *err)
{
    proxy_error_set(err, 503, NULL, "overloaded",
                    "The server is at its memory limit for request data "
                    "(LLM_PROXY_MAX_BODY_MEMORY); retry shortly.");
    err->reject_reason = "body_budget";
}

/* Parses s[a, b) as one JSON value after reserving its estimated parsed
 * size in the memory budget. NULL with err set (400 or 503). */
static json_t *parse_slice(const char *s, size_t a, size_t b, struct proxy_error *err)
{
    size_t est = cm_mem_budget_json_estimate(s + a, b - a);
    if (cm_mem_budget_reserve(est) != 0) {
        overloaded_error(err);
        return NULL;
    }
    char why[200];
    json_t *v = cm_json_parse(s + a, b - a, why, sizeof why);
    cm_mem_budget_release(est);
    if (!v)
        parse_error(err, why);
    return v;
}

/* The "messages" array text s[a, b) -> native messages, comma-separated, in
 * out. 0, or -1 with err set. */
static int translate_messages_text(const char *s, size_t a, size_t b, struct evbuffer *out,
                                   struct proxy_error *err)
{
    size_t i = skip_ws(s, b, a);
    if (i >= b || s[i] != '[') {
        /* Not an array: parse it to report exactly what the JSON path does. */
        json_t *v = parse_slice(s, a, b, err);
        if (v)
            messages_shape_error(v, err);
        json_decref(v);
        return -1;
    }
    i = skip_ws(s, b, i + 1);
    json_t *call_names = json_object();
    size_t mi = 0;
    int rc = -1;
    if (i < b && s[i] == ']') {
        json_t *empty = json_array();
        messages_shape_error(empty, err);
        json_decref(empty);
        goto out;
    }
    for (;;) {
        size_t end = skip_value(s, b, i);
        if (!end) {
            parse_error(err, "invalid 'messages' array");
            goto out;
        }
        json_t *m = parse_slice(s, i, end, err);
        if (!m)
            goto out;
        json_t *nm = translate_message(m, mi, call_names, err);
        json_decref(m);
        if (!nm)
            goto out;
        if (mi)
            evbuffer_add(out, ",", 1);
        cm_json_to_evbuffer(nm, out);
        json_decref(nm);
        mi++;
        i = skip_ws(s, b, end);
        if (i < b && s[i] == ',') {
            i = skip_ws(s, b, i + 1);
            continue;
        }
        if (i < b && s[i] == ']' && skip_ws(s, b, i + 1) == b)
            break;
        parse_error(err, "invalid 'messages' array");
        goto out;
    }
    rc = 0;
out:
    json_decref(call_names);
    return rc;
}

static int translate_stop(const json_t *stop, json_t *options, struct proxy_error *err)
{
    if (!stop || json_is_null(stop))
        return 0;
    json_t *arr = json_array();
    if (json_is_string(stop)) {
        json_array_append(arr, (json_t *)stop);
    } else if (json_is_array(stop) && json_array_size(stop) <= MAX_STOP_SEQUENCES) {
        size_t i;
        json_t *s;
        json_array_foreach(stop, i, s)
        {
            if (!json_is_string(s)) {
                json_decref(arr);
                proxy_error_set(err, 400, "stop", "invalid_type",
                                "Invalid type for 'stop[%zu]': expected a string.", i);
                return -1;
            }
            json_array_append(arr, s);
        }
    } else {
        json_decref(arr);
        proxy_error_set(err, 400, "stop", "invalid_type",
                        "'stop' must be a string or an array of at most %d strings.",
                        MAX_STOP_SEQUENCES);
        return -1;
    }
    json_object_set_new(options, "stop", arr);
    return 0;
}

static int translate_response_format(const json_t *rf, json_t *native, struct proxy_error *err)
{
    if (!rf || json_is_null(rf))
        return 0;
    const char *type = cm_json_str(rf, "type");
    if (!type) {
        proxy_error_set(err, 400, "response_format", "invalid_type",
                        "'response_format' must be an object with a 'type'.");
        return -1;
    }
    if (strcmp(type, "text") == 0)
        return 0;
    if (strcmp(type, "json_object") == 0) {
        json_object_set_new(native, "format", json_string("json"));
        return 0;
    }
    if (strcmp(type, "json_schema") == 0) {
        json_t *schema = json_object_get(json_object_get(rf, "json_schema"), "schema");
        if (!json_is_object(schema)) {
            proxy_error_set(err, 400, "response_format.json_schema.schema", "invalid_type",
                            "'response_format.json_schema.schema' must be an object.");
            return -1;
        }
        json_object_set(native, "format", schema);
        return 0;
    }
    proxy_error_set(err, 400, "response_format.type", "invalid_value",
                    "Invalid value for 'response_format.type': '%.40s'. Supported: 'text', "
                    "'json_object', 'json_schema'.",
                    type);
    return -1;
}

static int translate_think(const json_t *oai, json_t *native, struct proxy_error *err)
{
    json_t *think = json_object_get(oai, "think");
    if (think && !json_is_null(think)) {
        if (json_is_boolean(think)) {
            json_object_set(native, "think", think);
            return 0;
        }
        const char *s = json_string_value(think);
        if (s && (strcmp(s, "low") == 0 || strcmp(s, "medium") == 0 || strcmp(s, "high") == 0 ||
                  strcmp(s, "max") == 0)) {
            json_object_set(native, "think", think);
            return 0;
        }
        proxy_error_set(err, 400, "think", "invalid_value",
                        "'think' must be a boolean or one of 'low', 'medium', 'high', 'max'.");
        return -1;
    }
    const char *effort = cm_json_str(json_object_get(oai, "reasoning"), "effort");
    const char *param = "reasoning.effort";
    if (!effort) {
        effort = cm_json_str(oai, "reasoning_effort");
        param = "reasoning_effort";
    }
    if (!effort) {
        json_t *re = json_object_get(oai, "reasoning_effort");
        if (re && !json_is_null(re)) {
            proxy_error_set(err, 400, "reasoning_effort", "invalid_type",
                            "'reasoning_effort' must be a string.");
            return -1;
        }
        return 0;
    }
    json_t *mapped = NULL;
    if (map_effort(effort, &mapped) != 0) {
        proxy_error_set(err, 400, param, "invalid_value",
                        "Invalid value for '%s': '%.40s'. Supported: 'none', 'minimal', 'low', "
                        "'medium', 'high', 'max'.",
                        param, effort);
        return -1;
    }
    json_object_set_new(native, "think", mapped);
    return 0;
}

/* The request from oai; the messages come from oai, or from the text
 * s[ma, mb) when s is not NULL (oai then has no "messages"). */
static int translate_request(const json_t *oai, const char *s, size_t ma, size_t mb,
                             struct chat_request *out, struct proxy_error *err)
{
    memset(out, 0, sizeof *out);
    const char *model = proxy_require_model(oai, err);
    if (!model)
        return -1;
    json_t *stream = json_object_get(oai, "stream");
    if (stream && !json_is_null(stream) && !json_is_boolean(stream)) {
        proxy_error_set(err, 400, "stream", "invalid_type", "'stream' must be a boolean.");
        return -1;
    }
    int is_stream = json_is_true(stream);
    json_t *so = json_object_get(oai, "stream_options");
    int include_usage = 0;
    if (so && !json_is_null(so)) {
        if (!is_stream) {
            proxy_error_set(err, 400, "stream_options", "invalid_value",
                            "The 'stream_options' parameter is only allowed when 'stream' is "
                            "enabled.");
            return -1;
        }
        include_usage = json_is_true(json_object_get(so, "include_usage"));
    }
    json_t *n = json_object_get(oai, "n");
    if (n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1)) {
        proxy_error_set(err, 400, "n", "invalid_value", "Only n=1 is supported.");
        return -1;
    }

    json_t *native;
    struct evbuffer *msgs_text = NULL;
    if (s) {
        msgs_text = evbuffer_new();
        if (translate_messages_text(s, ma, mb, msgs_text, err) != 0) {
            evbuffer_free(msgs_text);
            return -1;
        }
        native = json_pack("{s:s, s:b}", "model", model, "stream", is_stream);
    } else {
        json_t *messages = translate_messages(json_object_get(oai, "messages"), err);
        if (!messages)
            return -1;
        native =
            json_pack("{s:s, s:o, s:b}", "model", model, "messages", messages, "stream", is_stream);
    }
    json_t *options = json_object();
    json_t *user_opts = json_object_get(oai, "options");
    if (user_opts && !json_is_null(user_opts)) {
        if (!json_is_object(user_opts)) {
            proxy_error_set(err, 400, "options", "invalid_type", "'options' must be an object.");
            goto fail;
        }
        if (chat_policy_check_options(user_opts, err) != 0)
            goto fail;
        json_object_update(options, user_opts);
    }

    json_t *mt = json_object_get(oai, "max_completion_tokens");
    const char *mt_name = "max_completion_tokens";
    if (!mt || json_is_null(mt)) {
        mt = json_object_get(oai, "max_tokens");
        mt_name = "max_tokens";
    }
    if (mt && !json_is_null(mt)) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 1) {
            proxy_error_set(err, 400, mt_name, "invalid_value", "'%s' must be a positive integer.",
                            mt_name);
            goto fail;
        }
        json_object_set(options, "num_predict", mt);
    }
    static const struct {
        const char *name;
        const char *option;
        double lo, hi;
    } numeric[] = {{"temperature", "temperature", 0, 2},
                   {"top_p", "top_p", 0, 1},
                   {"frequency_penalty", "frequency_penalty", -2, 2},
                   {"presence_penalty", "presence_penalty", -2, 2},
                   {"top_k", "top_k", 0, 1e9}};
    for (size_t i = 0; i < sizeof numeric / sizeof numeric[0]; i++) {
        json_t *v = json_object_get(oai, numeric[i].name);
        if (!v || json_is_null(v))
            continue;
        if (!number_in(v, numeric[i].lo, numeric[i].hi)) {
            proxy_error_set(err, 400, numeric[i].name, "invalid_value",
                            "'%s' must be a number between %g and %g.", numeric[i].name,
                            numeric[i].lo, numeric[i].hi);
            goto fail;
        }
        json_object_set(options, numeric[i].option, v);
    }
    json_t *seed = json_object_get(oai, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed)) {
            proxy_error_set(err, 400, "seed", "invalid_type", "'seed' must be an integer.");
            goto fail;
        }
        json_object_set(options, "seed", seed);
    }
    if (translate_stop(json_object_get(oai, "stop"), options, err) != 0)
        goto fail;
    if (translate_response_format(json_object_get(oai, "response_format"), native, err) != 0)
        goto fail;

    json_t *tools = json_object_get(oai, "tools");
    const char *tool_choice = cm_json_str(oai, "tool_choice");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) {
            proxy_error_set(err, 400, "tools", "invalid_type", "'tools' must be an array.");
            goto fail;
        }
        size_t ti;
        json_t *t;
        json_array_foreach(tools, ti, t)
        {
            if (!cm_json_str(json_object_get(t, "function"), "name")) {
                char param[48];
                snprintf(param, sizeof param, "tools[%zu].function.name", ti);
                proxy_error_set(err, 400, param, "missing_required_parameter",
                                "Missing required parameter: '%s'.", param);
                goto fail;
            }
        }
        /* Ollama cannot force a call; a named tool_choice at least leaves
         * the model only that tool. */
        const char *only =
            cm_json_str(json_object_get(json_object_get(oai, "tool_choice"), "function"), "name");
        json_t *sent = json_array();
        json_array_foreach(tools, ti, t)
        {
            if (!only || strcmp(only, cm_json_str(json_object_get(t, "function"), "name")) == 0)
                json_array_append(sent, t);
        }
        if (json_array_size(sent) && !(tool_choice && strcmp(tool_choice, "none") == 0))
            json_object_set(native, "tools", sent);
        json_decref(sent);
    }
    json_t *keep_alive = json_object_get(oai, "keep_alive");
    if (keep_alive && !json_is_null(keep_alive)) {
        json_t *ka = chat_policy_keep_alive(keep_alive, err);
        if (!ka)
            goto fail;
        json_object_set_new(native, "keep_alive", ka);
    }
    if (translate_think(oai, native, err) != 0)
        goto fail;
    if (json_object_size(options))
        json_object_set(native, "options", options);
    json_decref(options);

    out->model = cm_xstrdup(model);
    out->stream = is_stream;
    out->include_usage = include_usage;
    out->native = native;
    out->native_messages = msgs_text;
    return 0;
fail:
    json_decref(options);
    json_decref(native);
    if (msgs_text)
        evbuffer_free(msgs_text);
    return -1;
}

int chat_request_translate(const json_t *oai, struct chat_request *out, struct proxy_error *err)
{
    return translate_request(oai, NULL, 0, 0, out, err);
}

json_t *chat_parse_body(const char *s, size_t len, struct proxy_error *err)
{
    if (len == 0) {
        parse_error(err, "the body is empty");
        return NULL;
    }
    json_t *v = parse_slice(s, 0, len, err);
    if (v && !json_is_object(v)) {
        json_decref(v);
        proxy_error_set(err, 400, NULL, NULL, "The request body must be a JSON object.");
        return NULL;
    }
    return v;
}

int chat_request_translate_text(const char *s, size_t len, struct chat_request *out,
                                struct proxy_error *err)
{
    memset(out, 0, sizeof *out);
    if (len == 0) {
        parse_error(err, "the body is empty");
        return -1;
    }
    size_t i = skip_ws(s, len, 0);
    if (i >= len || s[i] != '{') {
        /* Whatever it is, the JSON path's answer. */
        json_t *v = parse_slice(s, 0, len, err);
        if (v)
            proxy_error_set(err, 400, NULL, NULL, "The request body must be a JSON object.");
        json_decref(v);
        return -1;
    }
    json_t *top = json_object();
    size_t ma = 0, mb = 0;
    int have_messages = 0;
    i = skip_ws(s, len, i + 1);
    if (i < len && s[i] == '}') {
        i = skip_ws(s, len, i + 1);
    } else {
        for (;;) {
            size_t kend = (i < len && s[i] == '"') ? skip_value(s, len, i) : 0;
            json_t *key = kend ? parse_slice(s, i, kend, err) : NULL;
            if (!json_is_string(key)) {
                if (key || !kend)
                    parse_error(err, "invalid object key");
                json_decref(key);
                goto fail;
            }
            i = skip_ws(s, len, kend);
            size_t va = i < len && s[i] == ':' ? skip_ws(s, len, i + 1) : len;
            size_t vb = skip_value(s, len, va);
            const char *k = json_string_value(key);
            int dup = strcmp(k, "messages") == 0 ? have_messages : json_object_get(top, k) != NULL;
            if (!vb || dup) {
                parse_error(err, dup ? "duplicate object key" : "invalid object member");
                json_decref(key);
                goto fail;
            }
            if (strcmp(k, "messages") == 0) {
                have_messages = 1;
                ma = va;
                mb = vb;
            } else {
                json_t *v = parse_slice(s, va, vb, err);
                if (!v) {
                    json_decref(key);
                    goto fail;
                }
                json_object_set_new(top, k, v);
            }
            json_decref(key);
            i = skip_ws(s, len, vb);
            if (i < len && s[i] == ',') {
                i = skip_ws(s, len, i + 1);
                continue;
            }
            if (i < len && s[i] == '}') {
                i = skip_ws(s, len, i + 1);
                break;
            }
            parse_error(err, "invalid object");
            goto fail;
        }
    }
    if (i != len) {
        parse_error(err, "end of file expected");
        goto fail;
    }
    static const char missing[] = "null";
    int rc = have_messages ? translate_request(top, s, ma, mb, out, err)
                           : translate_request(top, missing, 0, sizeof missing - 1, out, err);
    json_decref(top);
    return rc;
fail:
    json_decref(top);
    return -1;
}

char *chat_request_body(const struct chat_request *req, size_t *len)
{
    char *rest = cm_json_dumps(req->native);
    if (!req->native_messages) {
        *len = strlen(rest);
        return rest;
    }
    /* {"messages":[<native messages>],<the other members>} */
    struct evbuffer *m = req->native_messages;
    size_t ml = evbuffer_get_length(m), rl = strlen(rest);
    char *out = cm_xmalloc(ml + rl + 32);
    size_t n = 0;
    memcpy(out, "{\"messages\":[", 13);
    n = 13;
    evbuffer_copyout(m, out + n, ml);
    n += ml;
    out[n++] = ']';
    if (rl > 2) {
        out[n++] = ',';
        memcpy(out + n, rest + 1, rl - 1); /* the members and the closing brace */
        n += rl - 1;
    } else {
        out[n++] = '}';
    }
    out[n] = '\0';
    free(rest);
    *len = n;
    return out;
}

void chat_request_drop_native(struct chat_request *req)
{
    json_decref(req->native);
    req->native = NULL;
    if (req->native_messages)
        evbuffer_free(req->native_messages);
    req->native_messages = NULL;
}

void chat_request_deinit(struct chat_request *req)
{
    free(req->model);
    chat_request_drop_native(req);
    memset(req, 0, sizeof *req);
}

/* ------------------------------------------------------------ responses */

static json_t *translate_tool_call(const json_t *ncall, int index)
{
    json_t *fn = json_object_get(ncall, "function");
    const char *name = cm_json_str(fn, "name");
    json_t *args = json_object_get(fn, "arguments");
    char *args_s = args ? cm_json_dumps(args) : cm_xstrdup("{}");
    const char *id = cm_json_str(ncall, "id");
    char idbuf[40];
    if (!id) {
        new_call_id(idbuf, sizeof idbuf);
        id = idbuf;
    }
    json_t *out =
        json_pack("{s:i, s:s, s:s, s:{s:s, s:s}}", "index", index, "id", id, "type", "function",
                  "function", "name", name ? name : "", "arguments", args_s ? args_s : "{}");
    free(args_s);
    return out;
}

static void read_usage(const json_t *native, struct chat_usage *u)
{
    u->prompt_tokens = cm_json_int(native, "prompt_eval_count", 0);
    u->completion_tokens = cm_json_int(native, "eval_count", 0);
}

void chat_count_tokens(struct cm_metric *tokens, const struct chat_usage *u)
{
    const char *prompt[] = {"prompt"}, *completion[] = {"completion"};
    cm_metric_add(tokens, prompt, (double)u->prompt_tokens);
    cm_metric_add(tokens, completion, (double)u->completion_tokens);
}

static json_t *usage_json(const struct chat_usage *u)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)(u->prompt_tokens + u->completion_tokens));
}

static const char *finish_reason(const json_t *native, int had_tool_calls)
{
    if (had_tool_calls)
        return "tool_calls";
    const char *dr = cm_json_str(native, "done_reason");
    return dr && strcmp(dr, "length") == 0 ? "length" : "stop";
}

json_t *chat_response_translate(const json_t *native, const char *model, const char *id,
                                long long created, struct chat_usage *usage,
                                struct proxy_error *err)
{
    json_t *msg = json_object_get(native, "message");
    const char *content = cm_json_str(msg, "content");
    if (!json_is_object(msg) || !content) {
        proxy_error_set(err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server returned a malformed chat response.");
        return NULL;
    }
    struct cm_think_splitter sp;
    struct cm_think_out a = {0}, b = {0};
    cm_think_init(&sp);
    cm_think_feed(&sp, content, strlen(content), &a);
    cm_think_finish(&sp, &b);
    char *text = cm_xasprintf("%s%s", a.content, b.content);
    const char *native_thinking = cm_json_str(msg, "thinking");
    char *reasoning =
        cm_xasprintf("%s%s%s", native_thinking ? native_thinking : "", a.thinking, b.thinking);
    cm_think_out_deinit(&a);
    cm_think_out_deinit(&b);

    json_t *calls = json_object_get(msg, "tool_calls");
    json_t *out_calls = NULL;
    if (json_is_array(calls) && json_array_size(calls)) {
        out_calls = json_array();
        size_t i;
        json_t *c;
        json_array_foreach(calls, i, c)
            json_array_append_new(out_calls, translate_tool_call(c, (int)i));
    }
    json_t *omsg = json_pack("{s:s}", "role", "assistant");
    json_object_set_new(omsg, "content", out_calls && !*text ? json_null() : json_string(text));
    json_object_set_new(omsg, "refusal", json_null());
    if (*reasoning)
        json_object_set_new(omsg, "reasoning_content", json_string(reasoning));
    if (out_calls)
        json_object_set_new(omsg, "tool_calls", out_calls);
    free(text);
    free(reasoning);

    read_usage(native, usage);
    json_t *choice = json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "message", omsg, "logprobs",
                               "finish_reason", finish_reason(native, out_calls != NULL));
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o, s:n}", "id", id, "object", "chat.completion",
                     "created", (json_int_t)created, "model", model, "choices", choice, "usage",
                     usage_json(usage), "system_fingerprint");
}

/* ------------------------------------------------------------ stream */

void chat_stream_init(struct chat_stream *st, const char *model, const char *id, long long created,
                      int include_usage)
{
    memset(st, 0, sizeof *st);
    snprintf(st->id, sizeof st->id, "%s", id);
    st->model = cm_xstrdup(model);
    st->created = created;
    st->include_usage = include_usage;
    cm_think_init(&st->think);
}

void chat_stream_deinit(struct chat_stream *st)
{
    free(st->model);
    st->model = NULL;
}

static json_t *chunk_new(struct chat_stream *st, json_t *delta, const char *finish)
{
    json_t *choice = json_pack("{s:i, s:o, s:n}", "index", 0, "delta", delta, "logprobs");
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *chunk = json_pack("{s:s, s:s, s:I, s:s, s:n, s:[o]}", "id", st->id, "object",
                              "chat.completion.chunk", "created", (json_int_t)st->created, "model",
                              st->model, "system_fingerprint", "choices", choice);
    if (st->include_usage)
        json_object_set_new(chunk, "usage", json_null());
    return chunk;
}

static json_t *delta_new(struct chat_stream *st)
{
    json_t *d = json_object();
    if (!st->role_sent) {
        json_object_set_new(d, "role", json_string("assistant"));
        st->role_sent = 1;
    }
    return d;
}

static void delta_add_text(json_t *delta, const char *key, const char *a, const char *b)
{
    if ((a && *a) || (b && *b)) {
        char *s = cm_xasprintf("%s%s", a ? a : "", b ? b : "");
        json_object_set_new(delta, key, json_string(s));
        free(s);
    }
}

int chat_stream_line(struct chat_stream *st, const json_t *line, json_t *chunks,
                     struct proxy_error *err)
{
    if (st->done)
        return CHAT_STREAM_DONE;
    json_t *uerr = json_object_get(line, "error");
    if (uerr) {
        const char *m = json_string_value(uerr);
        proxy_error_set(err, 502, NULL, "upstream_error",
                        "The upstream model server failed: %.400s", m ? m : "unknown error");
        return CHAT_STREAM_ERROR;
    }
    json_t *msg = json_object_get(line, "message");
    if (!json_is_object(line) || (msg && !json_is_object(msg))) {
        proxy_error_set(err, 502, NULL, "upstream_invalid_response",
                        "The upstream model server sent a malformed stream line.");
        return CHAT_STREAM_ERROR;
    }
    int done = json_is_true(json_object_get(line, "done"));
    const char *content = cm_json_str(msg, "content");
    const char *thinking = cm_json_str(msg, "thinking");

    struct cm_think_out piece = {0}, tail = {0};
    cm_think_feed(&st->think, content ? content : "", content ? strlen(content) : 0, &piece);
    if (done)
        cm_think_finish(&st->think, &tail);

    json_t *delta = delta_new(st);
    delta_add_text(delta, "content", piece.content, tail.content);
    char *reasoning = cm_xasprintf("%s%s%s", thinking ? thinking : "", piece.thinking,
                                   tail.thinking ? tail.thinking : "");
    delta_add_text(delta, "reasoning_content", reasoning, NULL);
    free(reasoning);
    cm_think_out_deinit(&piece);
    cm_think_out_deinit(&tail);

    json_t *calls = json_object_get(msg, "tool_calls");
    if (json_is_array(calls) && json_array_size(calls)) {
        json_t *out_calls = json_array();
        size_t i;
        json_t *c;
        json_array_foreach(calls, i, c)
            json_array_append_new(out_calls, translate_tool_call(c, st->tool_calls++));
        json_object_set_new(delta, "tool_calls", out_calls);
    }
    if (!done) {
        /* One chunk per upstream line, the moment it arrives. */
        if (json_object_size(delta) == 0)
            json_object_set_new(delta, "content", json_string(""));
        json_array_append_new(chunks, chunk_new(st, delta, NULL));
        return CHAT_STREAM_MORE;
    }
    if (json_object_size(delta))
        json_array_append_new(chunks, chunk_new(st, delta, NULL));
    else
        json_decref(delta);
    st->finish_reason = finish_reason(line, st->tool_calls > 0);
    json_array_append_new(chunks, chunk_new(st, json_object(), st->finish_reason));
    read_usage(line, &st->usage);
    if (st->include_usage) {
        json_t *u =
            json_pack("{s:s, s:s, s:I, s:s, s:n, s:[], s:o}", "id", st->id, "object",
                      "chat.completion.chunk", "created", (json_int_t)st->created, "model",
                      st->model, "system_fingerprint", "choices", "usage", usage_json(&st->usage));
        json_array_append_new(chunks, u);
    }
    st->done = 1;
    return CHAT_STREAM_DONE;
}

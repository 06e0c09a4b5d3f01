/* responses_translate: Responses API request -> chat core (see
 * responses_translate.h). */
#include "responses_translate.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad(struct proxy_error *err, const char *param, const char *code, const char *msg)
{
    proxy_error_set(err, 400, param, code, "%s", msg);
    return -1;
}

/* A message item's content (string or parts) -> chat content. NULL + err. */
static json_t *content_to_chat(const json_t *content, size_t ii, struct proxy_error *err)
{
    char param[96];
    if (json_is_string(content))
        return json_incref((json_t *)content);
    snprintf(param, sizeof param, "input[%zu].content", ii);
    if (!json_is_array(content)) {
        bad(err, param, "invalid_type", "Invalid 'content': expected a string or an array.");
        return NULL;
    }
    json_t *parts = json_array();
    size_t pi;
    json_t *p;
    json_array_foreach(content, pi, p)
    {
        const char *type = cm_json_str(p, "type");
        snprintf(param, sizeof param, "input[%zu].content[%zu]", ii, pi);
        if (type && (strcmp(type, "input_text") == 0 || strcmp(type, "output_text") == 0 ||
                     strcmp(type, "text") == 0)) {
            const char *t = cm_json_str(p, "text");
            if (!t) {
                proxy_error_set(err, 400, param, "invalid_type", "'%s.text' must be a string.",
                                param);
                goto fail;
            }
            json_array_append_new(parts, json_pack("{s:s, s:s}", "type", "text", "text", t));
        } else if (type && strcmp(type, "refusal") == 0) {
            const char *t = cm_json_str(p, "refusal");
            json_array_append_new(parts,
                                  json_pack("{s:s, s:s}", "type", "text", "text", t ? t : ""));
        } else if (type && strcmp(type, "input_image") == 0) {
            json_t *url = json_object_get(p, "image_url");
            if (!json_is_string(url)) {
                proxy_error_set(err, 400, param, "invalid_image_url",
                                "Invalid image at '%s': only base64 data URLs in 'image_url' "
                                "are supported (no file_id).",
                                param);
                goto fail;
            }
            json_array_append_new(
                parts, json_pack("{s:s, s:{s:O}}", "type", "image_url", "image_url", "url", url));
        } else {
            proxy_error_set(err, 400, param, "invalid_type",
                            "Unsupported content part type '%.40s' at '%s'.", type ? type : "",
                            param);
            goto fail;
        }
    }
    return parts;
fail:
    json_decref(parts);
    return NULL;
}

/* The last chat message when it is an assistant message we may add tool
 * calls or reasoning to, else a new one appended. Borrowed. */
static json_t *open_assistant(json_t *msgs)
{
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    const char *role = cm_json_str(last, "role");
    if (last && role && strcmp(role, "assistant") == 0)
        return last;
    json_t *m = json_pack("{s:s, s:n}", "role", "assistant", "content");
    json_array_append_new(msgs, m);
    return m;
}

static int item_to_chat(const json_t *item, size_t ii, json_t *msgs, struct proxy_error *err)
{
    char param[64];
    snprintf(param, sizeof param, "input[%zu]", ii);
    if (!json_is_object(item))
        return bad(err, param, "invalid_type", "Each input item must be an object.");
    const char *type = cm_json_str(item, "type");
    if (!type || strcmp(type, "message") == 0) {
        const char *role = cm_json_str(item, "role");
        if (!role || !(strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0 ||
                       strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)) {
            snprintf(param, sizeof param, "input[%zu].role", ii);
            return bad(err, param, "invalid_value",
                       "Invalid 'role': expected one of 'user', 'assistant', 'system', "
                       "'developer'.");
        }
        json_t *content = content_to_chat(json_object_get(item, "content"), ii, err);
        if (!content)
            return -1;
        if (strcmp(role, "assistant") == 0) {
            /* Text after reasoning items of the same turn joins them. */
            json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
            if (last && strcmp(cm_json_str(last, "role"), "assistant") == 0 &&
                json_is_null(json_object_get(last, "content")) &&
                !json_object_get(last, "tool_calls")) {
                json_object_set_new(last, "content", content);
                return 0;
            }
        }
        json_array_append_new(msgs, json_pack("{s:s, s:o}", "role", role, "content", content));
        return 0;
    }
    if (strcmp(type, "function_call") == 0) {
        const char *call_id = cm_json_str(item, "call_id");
        const char *name = cm_json_str(item, "name");
        const char *args = cm_json_str(item, "arguments");
        if (!call_id || !name || !args)
            return bad(err, param, "invalid_type",
                       "A 'function_call' item needs string 'call_id', 'name' and 'arguments'.");
        json_t *m = open_assistant(msgs);
        json_t *calls = json_object_get(m, "tool_calls");
        if (!calls) {
            calls = json_array();
            json_object_set_new(m, "tool_calls", calls);
        }
        json_array_append_new(calls,
                              json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", call_id, "type",
                                        "function", "function", "name", name, "arguments", args));
        return 0;
    }
    if (strcmp(type, "function_call_output") == 0) {
        const char *call_id = cm_json_str(item, "call_id");
        json_t *output = json_object_get(item, "output");
        if (!call_id || !(json_is_string(output) || json_is_array(output)))
            return bad(err, param, "invalid_type",
                       "A 'function_call_output' item needs a string 'call_id' and an 'output'.");
        json_t *content = content_to_chat(output, ii, err);
        if (!content)
            return -1;
        json_array_append_new(msgs, json_pack("{s:s, s:s, s:o}", "role", "tool", "tool_call_id",
                                              call_id, "content", content));
        return 0;
    }
    if (strcmp(type, "reasoning") == 0) {
        /* Earlier reasoning goes back as the assistant turn's thinking. */
        json_t *m = open_assistant(msgs);
        const char *prev = cm_json_str(m, "reasoning_content");
        char *text = cm_xstrdup(prev ? prev : "");
        const json_t *lists[] = {json_object_get(item, "summary"),
                                 json_object_get(item, "content")};
        for (size_t l = 0; l < 2; l++) {
            size_t i;
            json_t *p;
            json_array_foreach(lists[l], i, p)
            {
                const char *t = cm_json_str(p, "text");
                if (t) {
                    char *n = cm_xasprintf("%s%s", text, t);
                    free(text);
                    text = n;
                }
            }
        }
        if (*text)
            json_object_set_new(m, "reasoning_content", json_string(text));
        free(text);
        return 0;
    }
    if (strcmp(type, "item_reference") == 0) {
        /* A reference to an earlier reasoning item (the AI SDK sends these
         * by default): earlier turns' reasoning is optional context, which
         * Ollama's templates drop anyway; skipped. Anything else would need
         * the stored item. */
        const char *id = cm_json_str(item, "id");
        if (id && strncmp(id, "rs_", 3) == 0)
            return 0;
        return bad(err, param, "unsupported_value",
                   "'item_reference' input items are not supported: this server is stateless "
                   "(send the items themselves, with store: false; in the AI SDK, "
                   "providerOptions.openai.store = false).");
    }
    proxy_error_set(err, 400, param, "invalid_type", "Unsupported input item type '%.40s' at '%s'.",
                    type, param);
    return -1;
}

static int tools_to_chat(const json_t *tools, json_t *chat, struct proxy_error *err)
{
    if (!tools || json_is_null(tools))
        return 0;
    if (!json_is_array(tools))
        return bad(err, "tools", "invalid_type", "'tools' must be an array.");
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        char param[48];
        snprintf(param, sizeof param, "tools[%zu]", i);
        const char *type = cm_json_str(t, "type");
        const char *name = cm_json_str(t, "name");
        if (!type || strcmp(type, "function") != 0) {
            json_decref(out);
            proxy_error_set(err, 400, param, "unsupported_value",
                            "Tool type '%.40s' is not supported: only 'function' tools.",
                            type ? type : "");
            return -1;
        }
        if (!name) {
            json_decref(out);
            snprintf(param, sizeof param, "tools[%zu].name", i);
            proxy_error_set(err, 400, param, "missing_required_parameter",
                            "Missing required parameter: '%s'.", param);
            return -1;
        }
        json_t *fn = json_pack("{s:s}", "name", name);
        json_t *desc = json_object_get(t, "description");
        if (json_is_string(desc))
            json_object_set(fn, "description", desc);
        json_t *params = json_object_get(t, "parameters");
        if (json_is_object(params))
            json_object_set(fn, "parameters", params);
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    json_object_set_new(chat, "tools", out);
    return 0;
}

static int text_format_to_chat(const json_t *text, json_t *chat, struct proxy_error *err)
{
    json_t *fmt = json_object_get(text, "format");
    if (!fmt || json_is_null(fmt))
        return 0;
    const char *type = cm_json_str(fmt, "type");
    if (type && strcmp(type, "text") == 0)
        return 0;
    if (type && strcmp(type, "json_object") == 0) {
        json_object_set_new(chat, "response_format", json_pack("{s:s}", "type", "json_object"));
        return 0;
    }
    if (type && strcmp(type, "json_schema") == 0) {
        json_t *schema = json_object_get(fmt, "schema");
        if (!json_is_object(schema))
            return bad(err, "text.format.schema", "invalid_type",
                       "'text.format.schema' must be an object.");
        json_object_set_new(
            chat, "response_format",
            json_pack("{s:s, s:{s:O}}", "type", "json_schema", "json_schema", "schema", schema));
        return 0;
    }
    return bad(err, "text.format.type", "invalid_value",
               "Invalid value for 'text.format.type'. Supported: 'text', 'json_object', "
               "'json_schema'.");
}

json_t *responses_to_chat(const json_t *req, struct proxy_error *err)
{
    json_t *prev = json_object_get(req, "previous_response_id");
    if (prev && !json_is_null(prev)) {
        bad(err, "previous_response_id", "unsupported_parameter",
            "'previous_response_id' is not supported: this server is stateless and stores no "
            "responses. Send the whole conversation in 'input'.");
        return NULL;
    }
    if (json_is_true(json_object_get(req, "store"))) {
        bad(err, "store", "unsupported_value",
            "'store: true' is not supported: this server is stateless. Use 'store: false'.");
        return NULL;
    }
    json_t *conv = json_object_get(req, "conversation");
    if (conv && !json_is_null(conv)) {
        bad(err, "conversation", "unsupported_parameter",
            "'conversation' is not supported: this server is stateless.");
        return NULL;
    }
    json_t *chat = json_object();
    json_t *msgs = json_array();
    json_object_set_new(chat, "messages", msgs);
    json_t *model = json_object_get(req, "model");
    if (model)
        json_object_set(chat, "model", model);
    json_t *instr = json_object_get(req, "instructions");
    if (instr && !json_is_null(instr)) {
        if (!json_is_string(instr)) {
            bad(err, "instructions", "invalid_type", "'instructions' must be a string.");
            goto fail;
        }
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "system", "content", instr));
    }
    json_t *input = json_object_get(req, "input");
    if (json_is_string(input)) {
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "user", "content", input));
    } else if (json_is_array(input)) {
        size_t i;
        json_t *item;
        json_array_foreach(input, i, item) if (item_to_chat(item, i, msgs, err) != 0) goto fail;
    } else if (input && !json_is_null(input)) {
        bad(err, "input", "invalid_type", "'input' must be a string or an array of items.");
        goto fail;
    }
    if (json_array_size(msgs) == 0) {
        bad(err, "input", "missing_required_parameter", "Missing required parameter: 'input'.");
        goto fail;
    }
    /* Same meaning, same name in the core. */
    static const char *const same[] = {"stream",     "temperature", "top_p", "reasoning",
                                       "keep_alive", "options",     "think"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        json_t *v = json_object_get(req, same[i]);
        if (v)
            json_object_set(chat, same[i], v);
    }
    json_t *mot = json_object_get(req, "max_output_tokens");
    if (mot && !json_is_null(mot)) {
        if (!json_is_integer(mot) || json_integer_value(mot) < 1) {
            bad(err, "max_output_tokens", "invalid_value",
                "'max_output_tokens' must be a positive integer.");
            goto fail;
        }
        json_object_set(chat, "max_completion_tokens", mot);
    }
    if (tools_to_chat(json_object_get(req, "tools"), chat, err) != 0)
        goto fail;
    json_t *tc = json_object_get(req, "tool_choice");
    const char *tc_name = cm_json_str(tc, "name");
    if (json_is_string(tc))
        json_object_set(chat, "tool_choice", tc);
    else if (tc_name) /* {"type": "function", "name": ...} */
        json_object_set_new(
            chat, "tool_choice",
            json_pack("{s:s, s:{s:s}}", "type", "function", "function", "name", tc_name));
    if (text_format_to_chat(json_object_get(req, "text"), chat, err) != 0)
        goto fail;
    return chat;
fail:
    json_decref(chat);
    return NULL;
}

/* The fields a response object repeats from its request. */
static json_t *make_echo(const json_t *req)
{
    json_t *echo = json_object();
    static const char *const keys[] = {"instructions", "max_output_tokens",
                                       "temperature",  "top_p",
                                       "tool_choice",  "tools",
                                       "text",         "reasoning",
                                       "metadata",     "parallel_tool_calls",
                                       "user"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(req, keys[i]);
        if (v)
            json_object_set(echo, keys[i], v);
    }
    return echo;
}

int responses_request_translate(const json_t *req, struct chat_request *out, json_t **echo,
                                struct proxy_error *err)
{
    memset(out, 0, sizeof *out);
    if (echo)
        *echo = NULL;
    if (!proxy_require_model(req, err))
        return -1;
    json_t *chat = responses_to_chat(req, err);
    if (!chat)
        return -1;
    int rc = chat_request_translate(chat, out, err);
    json_decref(chat);
    if (rc == 0 && echo)
        *echo = make_echo(req);
    return rc;
}

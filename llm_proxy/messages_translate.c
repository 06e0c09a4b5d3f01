/* messages_translate: Anthropic Messages request -> chat core (see
 * messages_translate.h). */
#include "messages_translate.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends s to *acc ("\n"-separated). */
static void append_text(char **acc, const char *s)
{
    char *n = *acc ? cm_xasprintf("%s\n%s", *acc, s) : cm_xstrdup(s);
    free(*acc);
    *acc = n;
}

/* A base64 image block -> an image_url content part. NULL + err. */
static json_t *image_part(const json_t *block, const char *param, struct proxy_error *err)
{
    json_t *src = json_object_get(block, "source");
    const char *type = cm_json_str(src, "type");
    const char *media = cm_json_str(src, "media_type");
    const char *data = cm_json_str(src, "data");
    if (!type || strcmp(type, "base64") != 0 || !media || !data || !*data) {
        proxy_error_set(err, 400, param, "invalid_request_error",
                        "%s.source: only base64 image sources (type, media_type, data) are "
                        "supported.",
                        param);
        return NULL;
    }
    char *url = cm_xasprintf("data:%s;base64,%s", media, data);
    json_t *p = json_pack("{s:s, s:{s:s}}", "type", "image_url", "image_url", "url", url);
    free(url);
    return p;
}

/* A tool_result block's content (string or text/image blocks) -> chat
 * content. NULL + err. */
static json_t *tool_result_content(const json_t *content, const char *param,
                                   struct proxy_error *err)
{
    if (!content || json_is_null(content))
        return json_string("");
    if (json_is_string(content))
        return json_incref((json_t *)content);
    if (!json_is_array(content)) {
        proxy_error_set(err, 400, param, "invalid_request_error",
                        "%s.content: expected a string or an array of blocks.", param);
        return NULL;
    }
    json_t *parts = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = cm_json_str(b, "type");
        if (type && strcmp(type, "text") == 0 && cm_json_str(b, "text")) {
            json_array_append_new(
                parts, json_pack("{s:s, s:s}", "type", "text", "text", cm_json_str(b, "text")));
        } else if (type && strcmp(type, "image") == 0) {
            json_t *p = image_part(b, param, err);
            if (!p) {
                json_decref(parts);
                return NULL;
            }
            json_array_append_new(parts, p);
        } else {
            json_decref(parts);
            proxy_error_set(err, 400, param, "invalid_request_error",
                            "%s.content: unsupported block type '%.40s'.", param, type ? type : "");
            return NULL;
        }
    }
    return parts;
}

/* One Anthropic message -> chat messages appended to out. */
static int message_to_chat(const json_t *m, size_t mi, json_t *out, struct proxy_error *err)
{
    char param[96];
    snprintf(param, sizeof param, "messages.%zu", mi);
    const char *role = cm_json_str(m, "role");
    if (!json_is_object(m) || !role ||
        (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
        proxy_error_set(err, 400, param, "invalid_request_error",
                        "%s.role: Input should be 'user' or 'assistant'", param);
        return -1;
    }
    int assistant = strcmp(role, "assistant") == 0;
    json_t *content = json_object_get(m, "content");
    if (json_is_string(content)) {
        json_array_append_new(out, json_pack("{s:s, s:O}", "role", role, "content", content));
        return 0;
    }
    if (!json_is_array(content)) {
        proxy_error_set(err, 400, param, "invalid_request_error",
                        "%s.content: expected a string or an array of content blocks.", param);
        return -1;
    }
    json_t *parts = json_array(); /* user text and images */
    json_t *calls = json_array(); /* assistant tool_use */
    char *text = NULL;            /* assistant text */
    char *thinking = NULL;
    int rc = -1;
    size_t bi;
    json_t *b;
    json_array_foreach(content, bi, b)
    {
        const char *type = cm_json_str(b, "type");
        snprintf(param, sizeof param, "messages.%zu.content.%zu", mi, bi);
        if (!type) {
            proxy_error_set(err, 400, param, "invalid_request_error", "%s.type: Field required",
                            param);
            goto out;
        }
        if (strcmp(type, "text") == 0) {
            const char *t = cm_json_str(b, "text");
            if (!t) {
                proxy_error_set(err, 400, param, "invalid_request_error",
                                "%s.text: Input should be a valid string", param);
                goto out;
            }
            if (assistant)
                append_text(&text, t);
            else
                json_array_append_new(parts, json_pack("{s:s, s:s}", "type", "text", "text", t));
        } else if (strcmp(type, "image") == 0 && !assistant) {
            json_t *p = image_part(b, param, err);
            if (!p)
                goto out;
            json_array_append_new(parts, p);
        } else if (strcmp(type, "tool_result") == 0 && !assistant) {
            const char *id = cm_json_str(b, "tool_use_id");
            if (!id) {
                proxy_error_set(err, 400, param, "invalid_request_error",
                                "%s.tool_use_id: Field required", param);
                goto out;
            }
            json_t *c = tool_result_content(json_object_get(b, "content"), param, err);
            if (!c)
                goto out;
            /* Tool results answer the previous turn: before this turn's text. */
            json_array_append_new(out, json_pack("{s:s, s:s, s:o}", "role", "tool", "tool_call_id",
                                                 id, "content", c));
        } else if (strcmp(type, "tool_use") == 0 && assistant) {
            const char *id = cm_json_str(b, "id");
            const char *name = cm_json_str(b, "name");
            json_t *input = json_object_get(b, "input");
            if (!id || !name || (input && !json_is_object(input))) {
                proxy_error_set(err, 400, param, "invalid_request_error",
                                "%s: a tool_use block needs 'id', 'name' and an object 'input'.",
                                param);
                goto out;
            }
            json_array_append_new(calls,
                                  json_pack("{s:s, s:s, s:{s:s, s:o}}", "id", id, "type",
                                            "function", "function", "name", name, "arguments",
                                            input ? json_incref(input) : json_object()));
        } else if (strcmp(type, "thinking") == 0 && assistant) {
            const char *t = cm_json_str(b, "thinking");
            if (t)
                append_text(&thinking, t);
        } else if (strcmp(type, "redacted_thinking") == 0 && assistant) {
            /* Opaque to a local model: dropped. */
        } else {
            proxy_error_set(err, 400, param, "invalid_request_error",
                            "%s: unsupported content block type '%.40s' in a %s message.", param,
                            type, role);
            goto out;
        }
    }
    if (assistant) {
        json_t *msg = json_pack("{s:s}", "role", "assistant");
        json_object_set_new(msg, "content", text ? json_string(text) : json_null());
        if (thinking)
            json_object_set_new(msg, "reasoning_content", json_string(thinking));
        if (json_array_size(calls))
            json_object_set(msg, "tool_calls", calls);
        json_array_append_new(out, msg);
    } else if (json_array_size(parts)) {
        json_array_append_new(out, json_pack("{s:s, s:O}", "role", "user", "content", parts));
    }
    rc = 0;
out:
    json_decref(parts);
    json_decref(calls);
    free(text);
    free(thinking);
    return rc;
}

static int system_to_chat(const json_t *sys, json_t *msgs, struct proxy_error *err)
{
    if (!sys || json_is_null(sys))
        return 0;
    if (json_is_string(sys)) {
        if (*json_string_value(sys))
            json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "system", "content", sys));
        return 0;
    }
    if (!json_is_array(sys)) {
        proxy_error_set(err, 400, "system", "invalid_request_error",
                        "system: Input should be a valid string or a list of text blocks");
        return -1;
    }
    char *text = NULL;
    size_t i;
    json_t *b;
    json_array_foreach(sys, i, b)
    {
        const char *t = cm_json_str(b, "text");
        const char *type = cm_json_str(b, "type");
        if (!t || !type || strcmp(type, "text") != 0) {
            free(text);
            proxy_error_set(err, 400, "system", "invalid_request_error",
                            "system.%zu: only text blocks are supported", i);
            return -1;
        }
        append_text(&text, t);
    }
    if (text)
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content", text));
    free(text);
    return 0;
}

static int tools_to_chat(const json_t *tools, const json_t *choice, json_t *chat,
                         struct proxy_error *err)
{
    if (choice && !json_is_null(choice)) {
        const char *type = cm_json_str(choice, "type");
        if (!type || !(strcmp(type, "auto") == 0 || strcmp(type, "any") == 0 ||
                       strcmp(type, "tool") == 0 || strcmp(type, "none") == 0)) {
            proxy_error_set(err, 400, "tool_choice", "invalid_request_error",
                            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'");
            return -1;
        }
        const char *name = cm_json_str(choice, "name");
        if (strcmp(type, "none") == 0)
            json_object_set_new(chat, "tool_choice", json_string("none"));
        else if (strcmp(type, "tool") == 0 && name)
            json_object_set_new(
                chat, "tool_choice",
                json_pack("{s:s, s:{s:s}}", "type", "function", "function", "name", name));
    }
    if (!tools || json_is_null(tools))
        return 0;
    if (!json_is_array(tools)) {
        proxy_error_set(err, 400, "tools", "invalid_request_error",
                        "tools: Input should be a valid list");
        return -1;
    }
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        const char *name = cm_json_str(t, "name");
        const char *type = cm_json_str(t, "type");
        json_t *schema = json_object_get(t, "input_schema");
        if ((type && strcmp(type, "custom") != 0) || !name || !json_is_object(schema)) {
            json_decref(out);
            proxy_error_set(err, 400, "tools", "invalid_request_error",
                            "tools.%zu: only custom tools with 'name' and an object "
                            "'input_schema' are supported.",
                            i);
            return -1;
        }
        json_t *fn = json_pack("{s:s, s:O}", "name", name, "parameters", schema);
        json_t *desc = json_object_get(t, "description");
        if (json_is_string(desc))
            json_object_set(fn, "description", desc);
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    json_object_set_new(chat, "tools", out);
    return 0;
}

static int number_param(const json_t *req, const char *name, double lo, double hi, int integer,
                        json_t *chat, const char *as, struct proxy_error *err)
{
    json_t *v = json_object_get(req, name);
    if (!v || json_is_null(v))
        return 0;
    double d = json_number_value(v);
    if (!json_is_number(v) || (integer && !json_is_integer(v)) || d < lo || d > hi) {
        proxy_error_set(err, 400, name, "invalid_request_error",
                        "%s: Input should be a%s number between %g and %g", name,
                        integer ? "n integer" : "", lo, hi);
        return -1;
    }
    json_object_set(chat, as, v);
    return 0;
}

json_t *messages_to_chat(const json_t *req, struct proxy_error *err)
{
    json_t *chat = json_object();
    json_t *msgs = json_array();
    json_object_set_new(chat, "messages", msgs);
    json_t *model = json_object_get(req, "model");
    if (!json_is_string(model) || !*json_string_value(model)) {
        proxy_error_set(err, 400, "model", "invalid_request_error", "model: Field required");
        goto fail;
    }
    json_object_set(chat, "model", model);
    json_t *mt = json_object_get(req, "max_tokens");
    if (!json_is_integer(mt) || json_integer_value(mt) < 1) {
        proxy_error_set(err, 400, "max_tokens", "invalid_request_error",
                        mt ? "max_tokens: Input should be a positive integer"
                           : "max_tokens: Field required");
        goto fail;
    }
    json_object_set(chat, "max_tokens", mt);
    if (system_to_chat(json_object_get(req, "system"), msgs, err) != 0)
        goto fail;
    json_t *in = json_object_get(req, "messages");
    if (!json_is_array(in) || json_array_size(in) == 0) {
        proxy_error_set(err, 400, "messages", "invalid_request_error",
                        "messages: at least one message is required");
        goto fail;
    }
    size_t i;
    json_t *m;
    json_array_foreach(in, i, m) if (message_to_chat(m, i, msgs, err) != 0) goto fail;
    if (number_param(req, "temperature", 0, 1, 0, chat, "temperature", err) != 0 ||
        number_param(req, "top_p", 0, 1, 0, chat, "top_p", err) != 0 ||
        number_param(req, "top_k", 0, 1e9, 1, chat, "top_k", err) != 0)
        goto fail;
    json_t *stop = json_object_get(req, "stop_sequences");
    if (stop && !json_is_null(stop)) {
        if (!json_is_array(stop)) {
            proxy_error_set(err, 400, "stop_sequences", "invalid_request_error",
                            "stop_sequences: Input should be a valid list");
            goto fail;
        }
        if (json_array_size(stop))
            json_object_set(chat, "stop", stop);
    }
    if (tools_to_chat(json_object_get(req, "tools"), json_object_get(req, "tool_choice"), chat,
                      err) != 0)
        goto fail;
    json_t *thinking = json_object_get(req, "thinking");
    if (thinking && !json_is_null(thinking)) {
        const char *type = cm_json_str(thinking, "type");
        if (!type || !(strcmp(type, "enabled") == 0 || strcmp(type, "disabled") == 0 ||
                       strcmp(type, "adaptive") == 0)) {
            proxy_error_set(err, 400, "thinking", "invalid_request_error",
                            "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'");
            goto fail;
        }
        json_t *budget = json_object_get(thinking, "budget_tokens");
        if (strcmp(type, "enabled") == 0 && !json_is_integer(budget)) {
            proxy_error_set(err, 400, "thinking", "invalid_request_error",
                            "thinking.enabled.budget_tokens: Field required");
            goto fail;
        }
        json_object_set_new(chat, "think", json_boolean(strcmp(type, "disabled") != 0));
    } else {
        /* No thinking asked for: none produced, as with Anthropic models. */
        json_object_set_new(chat, "think", json_false());
    }
    static const char *const same[] = {"stream", "keep_alive", "options"};
    for (size_t k = 0; k < sizeof same / sizeof same[0]; k++) {
        json_t *v = json_object_get(req, same[k]);
        if (v)
            json_object_set(chat, same[k], v);
    }
    return chat;
fail:
    json_decref(chat);
    return NULL;
}

int messages_request_translate(const json_t *req, struct chat_request *out, struct proxy_error *err)
{
    memset(out, 0, sizeof *out);
    json_t *chat = messages_to_chat(req, err);
    if (!chat)
        return -1;
    int rc = chat_request_translate(chat, out, err);
    json_decref(chat);
    return rc;
}

/* responses_stream: chat chunks -> Responses API events (see
 * responses_stream.h). */
#include "responses_stream.h"
#include "stream_text.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <event2/buffer.h>

#include <stdlib.h>
#include <string.h>

enum item_kind { ITEM_NONE, ITEM_REASONING, ITEM_MESSAGE };

struct responses_stream {
    char id[48];
    char *model;
    long long created_at;
    json_t *echo;
    json_t *output; /* finished items */
    const char *status;
    json_t *error;      /* null or {code, message} */
    json_t *incomplete; /* null or {reason} */
    json_t *usage;      /* null until done */
    long long seq;
    enum item_kind open; /* the item being streamed */
    char item_id[48];
    struct evbuffer *text; /* the open item's text so far */
};

struct responses_stream *responses_stream_new(const char *model, const json_t *echo,
                                              long long created_at)
{
    struct responses_stream *rs = cm_xcalloc(1, sizeof *rs);
    chat_new_prefixed_id(rs->id, sizeof rs->id, "resp_");
    rs->model = cm_xstrdup(model);
    rs->created_at = created_at;
    rs->echo = echo ? json_deep_copy(echo) : json_object();
    rs->output = json_array();
    rs->status = "in_progress";
    rs->error = json_null();
    rs->incomplete = json_null();
    rs->usage = json_null();
    return rs;
}

void responses_stream_free(struct responses_stream *rs)
{
    if (!rs)
        return;
    free(rs->model);
    if (rs->text)
        evbuffer_free(rs->text);
    json_decref(rs->echo);
    json_decref(rs->output);
    json_decref(rs->error);
    json_decref(rs->incomplete);
    json_decref(rs->usage);
    free(rs);
}

static json_t *echo_or(const struct responses_stream *rs, const char *key, json_t *dflt)
{
    json_t *v = json_object_get(rs->echo, key);
    if (v && !json_is_null(v)) {
        json_decref(dflt);
        return json_incref(v);
    }
    return dflt;
}

json_t *responses_stream_result(struct responses_stream *rs)
{
    json_t *r = json_pack(
        "{s:s, s:s, s:I, s:s, s:O, s:O, s:s, s:O, s:b, s:n, s:b, s:s, s:O}", "id", rs->id, "object",
        "response", "created_at", (json_int_t)rs->created_at, "status", rs->status, "error",
        rs->error, "incomplete_details", rs->incomplete, "model", rs->model, "output", rs->output,
        "parallel_tool_calls", !json_is_false(json_object_get(rs->echo, "parallel_tool_calls")),
        "previous_response_id", "store", 0, "truncation", "disabled", "usage", rs->usage);
    json_object_set_new(r, "instructions", echo_or(rs, "instructions", json_null()));
    json_object_set_new(r, "max_output_tokens", echo_or(rs, "max_output_tokens", json_null()));
    json_object_set_new(r, "temperature", echo_or(rs, "temperature", json_real(1.0)));
    json_object_set_new(r, "top_p", echo_or(rs, "top_p", json_real(1.0)));
    json_object_set_new(r, "tool_choice", echo_or(rs, "tool_choice", json_string("auto")));
    json_object_set_new(r, "tools", echo_or(rs, "tools", json_array()));
    json_object_set_new(r, "text",
                        echo_or(rs, "text", json_pack("{s:{s:s}}", "format", "type", "text")));
    json_object_set_new(r, "reasoning",
                        echo_or(rs, "reasoning", json_pack("{s:n, s:n}", "effort", "summary")));
    json_object_set_new(r, "metadata", echo_or(rs, "metadata", json_object()));
    json_object_set_new(r, "user", echo_or(rs, "user", json_null()));
    return r;
}

/* Appends an event of this type with the next sequence_number; returns it
 * (borrowed) for more fields. */
static json_t *event(struct responses_stream *rs, json_t *events, const char *type)
{
    json_t *ev = json_pack("{s:s, s:I}", "type", type, "sequence_number", (json_int_t)rs->seq++);
    json_array_append_new(events, ev);
    return ev;
}

static json_t *item_event(struct responses_stream *rs, json_t *events, const char *type)
{
    json_t *ev = event(rs, events, type);
    json_object_set_new(ev, "item_id", json_string(rs->item_id));
    json_object_set_new(ev, "output_index", json_integer((json_int_t)json_array_size(rs->output)));
    return ev;
}

static json_t *reasoning_item(const struct responses_stream *rs, const char *text)
{
    json_t *summary = json_array();
    if (text)
        json_array_append_new(summary,
                              json_pack("{s:s, s:s}", "type", "summary_text", "text", text));
    return json_pack("{s:s, s:s, s:o}", "id", rs->item_id, "type", "reasoning", "summary", summary);
}

static json_t *text_part(const char *text)
{
    return json_pack("{s:s, s:s, s:[], s:[]}", "type", "output_text", "text", text, "annotations",
                     "logprobs");
}

static json_t *message_item(const struct responses_stream *rs, const char *status, const char *text)
{
    json_t *content = json_array();
    if (text)
        json_array_append_new(content, text_part(text));
    return json_pack("{s:s, s:s, s:s, s:s, s:o}", "id", rs->item_id, "type", "message", "status",
                     status, "role", "assistant", "content", content);
}

static void close_item(struct responses_stream *rs, json_t *events)
{
    if (rs->open == ITEM_NONE)
        return;
    char *text = stream_text_take(&rs->text);
    json_t *item;
    if (rs->open == ITEM_REASONING) {
        json_t *ev = item_event(rs, events, "response.reasoning_summary_text.done");
        json_object_set_new(ev, "summary_index", json_integer(0));
        json_object_set_new(ev, "text", json_string(text));
        ev = item_event(rs, events, "response.reasoning_summary_part.done");
        json_object_set_new(ev, "summary_index", json_integer(0));
        json_object_set_new(ev, "part",
                            json_pack("{s:s, s:s}", "type", "summary_text", "text", text));
        item = reasoning_item(rs, text);
    } else {
        json_t *ev = item_event(rs, events, "response.output_text.done");
        json_object_set_new(ev, "content_index", json_integer(0));
        json_object_set_new(ev, "text", json_string(text));
        json_object_set_new(ev, "logprobs", json_array());
        ev = item_event(rs, events, "response.content_part.done");
        json_object_set_new(ev, "content_index", json_integer(0));
        json_object_set_new(ev, "part", text_part(text));
        item = message_item(rs, "completed", text);
    }
    json_t *ev = event(rs, events, "response.output_item.done");
    json_object_set_new(ev, "output_index", json_integer((json_int_t)json_array_size(rs->output)));
    json_object_set(ev, "item", item);
    json_array_append_new(rs->output, item);
    rs->open = ITEM_NONE;
    free(text);
}

static void open_item(struct responses_stream *rs, enum item_kind kind, json_t *events)
{
    if (rs->open == kind)
        return;
    close_item(rs, events);
    rs->open = kind;
    chat_new_prefixed_id(rs->item_id, sizeof rs->item_id, kind == ITEM_REASONING ? "rs_" : "msg_");
    json_t *ev = event(rs, events, "response.output_item.added");
    json_object_set_new(ev, "output_index", json_integer((json_int_t)json_array_size(rs->output)));
    if (kind == ITEM_REASONING) {
        json_object_set_new(ev, "item", reasoning_item(rs, NULL));
        ev = item_event(rs, events, "response.reasoning_summary_part.added");
        json_object_set_new(ev, "summary_index", json_integer(0));
        json_object_set_new(ev, "part",
                            json_pack("{s:s, s:s}", "type", "summary_text", "text", ""));
    } else {
        json_object_set_new(ev, "item", message_item(rs, "in_progress", NULL));
        ev = item_event(rs, events, "response.content_part.added");
        json_object_set_new(ev, "content_index", json_integer(0));
        json_object_set_new(ev, "part", text_part(""));
    }
}

static void add_text(struct responses_stream *rs, enum item_kind kind, const char *delta,
                     json_t *events)
{
    if (!delta || !*delta)
        return;
    open_item(rs, kind, events);
    stream_text_add(&rs->text, delta);
    json_t *ev;
    if (kind == ITEM_REASONING) {
        ev = item_event(rs, events, "response.reasoning_summary_text.delta");
        json_object_set_new(ev, "summary_index", json_integer(0));
    } else {
        ev = item_event(rs, events, "response.output_text.delta");
        json_object_set_new(ev, "content_index", json_integer(0));
        json_object_set_new(ev, "logprobs", json_array());
    }
    json_object_set_new(ev, "delta", json_string(delta));
}

static void add_call(struct responses_stream *rs, const json_t *call, json_t *events)
{
    close_item(rs, events);
    json_t *fn = json_object_get(call, "function");
    const char *name = cm_json_str(fn, "name");
    const char *args = cm_json_str(fn, "arguments");
    const char *call_id = cm_json_str(call, "id");
    char cid[48];
    if (!call_id) {
        chat_new_prefixed_id(cid, sizeof cid, "call_");
        call_id = cid;
    }
    chat_new_prefixed_id(rs->item_id, sizeof rs->item_id, "fc_");
    name = name ? name : "";
    args = args ? args : "{}";
    json_t *ev = event(rs, events, "response.output_item.added");
    json_object_set_new(ev, "output_index", json_integer((json_int_t)json_array_size(rs->output)));
    json_object_set_new(ev, "item",
                        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", rs->item_id, "type",
                                  "function_call", "status", "in_progress", "call_id", call_id,
                                  "name", name, "arguments", ""));
    ev = item_event(rs, events, "response.function_call_arguments.delta");
    json_object_set_new(ev, "delta", json_string(args));
    ev = item_event(rs, events, "response.function_call_arguments.done");
    json_object_set_new(ev, "name", json_string(name));
    json_object_set_new(ev, "arguments", json_string(args));
    json_t *item =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", rs->item_id, "type", "function_call",
                  "status", "completed", "call_id", call_id, "name", name, "arguments", args);
    ev = event(rs, events, "response.output_item.done");
    json_object_set_new(ev, "output_index", json_integer((json_int_t)json_array_size(rs->output)));
    json_object_set(ev, "item", item);
    json_array_append_new(rs->output, item);
}

void responses_stream_start(struct responses_stream *rs, json_t *events)
{
    json_object_set_new(event(rs, events, "response.created"), "response",
                        responses_stream_result(rs));
    json_object_set_new(event(rs, events, "response.in_progress"), "response",
                        responses_stream_result(rs));
}

void responses_stream_chunk(struct responses_stream *rs, const json_t *chunk, json_t *events)
{
    json_t *delta = json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "delta");
    add_text(rs, ITEM_REASONING, cm_json_str(delta, "reasoning_content"), events);
    add_text(rs, ITEM_MESSAGE, cm_json_str(delta, "content"), events);
    size_t i;
    json_t *call;
    json_array_foreach(json_object_get(delta, "tool_calls"), i, call) add_call(rs, call, events);
}

void responses_stream_done(struct responses_stream *rs, const char *finish_reason,
                           const struct chat_usage *usage, json_t *events)
{
    close_item(rs, events);
    json_decref(rs->usage);
    rs->usage = json_pack("{s:I, s:{s:i}, s:I, s:{s:i}, s:I}", "input_tokens",
                          (json_int_t)usage->prompt_tokens, "input_tokens_details", "cached_tokens",
                          0, "output_tokens", (json_int_t)usage->completion_tokens,
                          "output_tokens_details", "reasoning_tokens", 0, "total_tokens",
                          (json_int_t)(usage->prompt_tokens + usage->completion_tokens));
    const char *type = "response.completed";
    rs->status = "completed";
    if (finish_reason && strcmp(finish_reason, "length") == 0) {
        rs->status = "incomplete";
        json_decref(rs->incomplete);
        rs->incomplete = json_pack("{s:s}", "reason", "max_output_tokens");
        type = "response.incomplete";
    }
    json_object_set_new(event(rs, events, type), "response", responses_stream_result(rs));
}

void responses_stream_fail(struct responses_stream *rs, const struct proxy_error *e, json_t *events)
{
    rs->status = "failed";
    json_decref(rs->error);
    rs->error =
        json_pack("{s:s, s:s}", "code", e->code ? e->code : "server_error", "message", e->message);
    json_object_set_new(event(rs, events, "response.failed"), "response",
                        responses_stream_result(rs));
}

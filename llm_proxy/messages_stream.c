/* messages_stream: chat chunks -> Anthropic Messages events (see
 * messages_stream.h). */
#include "messages_stream.h"
#include "stream_text.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <event2/buffer.h>

#include <stdlib.h>
#include <string.h>

enum block_kind { BLOCK_NONE, BLOCK_THINKING, BLOCK_TEXT };

struct messages_stream {
    char id[48];
    char *model;
    json_t *content; /* finished blocks */
    const char *stop_reason;
    struct chat_usage usage;
    enum block_kind open;
    struct evbuffer *text; /* the open item's text so far */
};

struct messages_stream *messages_stream_new(const char *model)
{
    struct messages_stream *ms = cm_xcalloc(1, sizeof *ms);
    chat_new_prefixed_id(ms->id, sizeof ms->id, "msg_");
    ms->model = cm_xstrdup(model);
    ms->content = json_array();
    return ms;
}

void messages_stream_free(struct messages_stream *ms)
{
    if (!ms)
        return;
    free(ms->model);
    if (ms->text)
        evbuffer_free(ms->text);
    json_decref(ms->content);
    free(ms);
}

static json_t *usage_json(const struct chat_usage *u)
{
    return json_pack("{s:I, s:I, s:I, s:I}", "input_tokens", (json_int_t)u->prompt_tokens,
                     "output_tokens", (json_int_t)u->completion_tokens,
                     "cache_creation_input_tokens", (json_int_t)0, "cache_read_input_tokens",
                     (json_int_t)0);
}

json_t *messages_stream_result(struct messages_stream *ms)
{
    json_t *m = json_pack("{s:s, s:s, s:s, s:s, s:O, s:n}", "id", ms->id, "type", "message", "role",
                          "assistant", "model", ms->model, "content", ms->content, "stop_sequence");
    json_object_set_new(m, "stop_reason",
                        ms->stop_reason ? json_string(ms->stop_reason) : json_null());
    json_object_set_new(m, "usage", usage_json(&ms->usage));
    return m;
}

static json_t *event(json_t *events, const char *type)
{
    json_t *ev = json_pack("{s:s}", "type", type);
    json_array_append_new(events, ev);
    return ev;
}

static json_t *block_event(struct messages_stream *ms, json_t *events, const char *type)
{
    json_t *ev = event(events, type);
    json_object_set_new(ev, "index", json_integer((json_int_t)json_array_size(ms->content)));
    return ev;
}

static json_t *text_block(enum block_kind kind, const char *text)
{
    if (kind == BLOCK_THINKING)
        return json_pack("{s:s, s:s, s:s}", "type", "thinking", "thinking", text, "signature", "");
    return json_pack("{s:s, s:s}", "type", "text", "text", text);
}

static void close_block(struct messages_stream *ms, json_t *events)
{
    if (ms->open == BLOCK_NONE)
        return;
    if (ms->open == BLOCK_THINKING) {
        /* Local models sign nothing; the SDK expects the delta all the same. */
        json_t *ev = block_event(ms, events, "content_block_delta");
        json_object_set_new(ev, "delta",
                            json_pack("{s:s, s:s}", "type", "signature_delta", "signature", ""));
    }
    block_event(ms, events, "content_block_stop");
    char *text = stream_text_take(&ms->text);
    json_array_append_new(ms->content, text_block(ms->open, text));
    free(text);
    ms->open = BLOCK_NONE;
}

static void add_text(struct messages_stream *ms, enum block_kind kind, const char *delta,
                     json_t *events)
{
    if (!delta || !*delta)
        return;
    if (ms->open != kind) {
        close_block(ms, events);
        ms->open = kind;
        json_t *ev = block_event(ms, events, "content_block_start");
        json_object_set_new(ev, "content_block", text_block(kind, ""));
    }
    stream_text_add(&ms->text, delta);
    json_t *ev = block_event(ms, events, "content_block_delta");
    if (kind == BLOCK_THINKING)
        json_object_set_new(ev, "delta",
                            json_pack("{s:s, s:s}", "type", "thinking_delta", "thinking", delta));
    else
        json_object_set_new(ev, "delta",
                            json_pack("{s:s, s:s}", "type", "text_delta", "text", delta));
}

static void add_call(struct messages_stream *ms, const json_t *call, json_t *events)
{
    close_block(ms, events);
    json_t *fn = json_object_get(call, "function");
    const char *name = cm_json_str(fn, "name");
    const char *args = cm_json_str(fn, "arguments");
    const char *call_id = cm_json_str(call, "id");
    char cid[48];
    if (!call_id) {
        chat_new_prefixed_id(cid, sizeof cid, "toolu_");
        call_id = cid;
    }
    json_t *input = args ? cm_json_parse(args, strlen(args), NULL, 0) : NULL;
    if (!json_is_object(input)) {
        json_decref(input);
        input = json_object();
    }
    char *input_text = cm_json_dumps(input);
    json_t *ev = block_event(ms, events, "content_block_start");
    json_object_set_new(ev, "content_block",
                        json_pack("{s:s, s:s, s:s, s:{}}", "type", "tool_use", "id", call_id,
                                  "name", name ? name : "", "input"));
    ev = block_event(ms, events, "content_block_delta");
    json_object_set_new(
        ev, "delta",
        json_pack("{s:s, s:s}", "type", "input_json_delta", "partial_json", input_text));
    block_event(ms, events, "content_block_stop");
    json_array_append_new(ms->content,
                          json_pack("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id", call_id,
                                    "name", name ? name : "", "input", input));
    free(input_text);
}

void messages_stream_start(struct messages_stream *ms, json_t *events)
{
    json_object_set_new(event(events, "message_start"), "message", messages_stream_result(ms));
}

void messages_stream_chunk(struct messages_stream *ms, const json_t *chunk, json_t *events)
{
    json_t *delta = json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "delta");
    add_text(ms, BLOCK_THINKING, cm_json_str(delta, "reasoning_content"), events);
    add_text(ms, BLOCK_TEXT, cm_json_str(delta, "content"), events);
    size_t i;
    json_t *call;
    json_array_foreach(json_object_get(delta, "tool_calls"), i, call) add_call(ms, call, events);
}

void messages_stream_done(struct messages_stream *ms, const char *finish_reason,
                          const struct chat_usage *usage, json_t *events)
{
    close_block(ms, events);
    ms->usage = *usage;
    ms->stop_reason = "end_turn";
    if (finish_reason && strcmp(finish_reason, "length") == 0)
        ms->stop_reason = "max_tokens";
    else if (finish_reason && strcmp(finish_reason, "tool_calls") == 0)
        ms->stop_reason = "tool_use";
    json_t *ev = event(events, "message_delta");
    json_object_set_new(ev, "delta",
                        json_pack("{s:s, s:n}", "stop_reason", ms->stop_reason, "stop_sequence"));
    json_object_set_new(ev, "usage", usage_json(usage));
    event(events, "message_stop");
}

/*
 * ollama_double: a test double of the Ollama native API, following
 * ../shared/upstream-api.md (§0 wire conventions, §1 native API, §3.1
 * errors, §6 checklist). Used by the integration tests, the benchmarks and
 * scripts/run-local when no real Ollama answers.
 *
 * Behaviour is deterministic and scripted from the last user message:
 *   @hang            never answer (until the client goes away)
 *   @hang-after-first  stream one line, then nothing
 *   @hang-after-done   stream every line (the final one too), then nothing:
 *                    the chunked body is never ended
 *   @error-mid       stream two lines, then {"error":...} (status stays 200)
 *   @truncate        stream two lines, then end without the final line
 *   @garbage         stream one line, then a line that is not JSON
 *   @cut             stream one line, then half a line and drop the connection
 *   @status=NNN      answer NNN with {"error":"injected failure NNN"}
 *   @gate            stream: each line after the first waits for
 *                    POST /_double/release
 *   @slow=MS         stream: wait MS between lines
 *   @words=N         answer with N words
 *   @pad=N           with @words: each word padded with N bytes
 *   @inline-think    reasoning inline in content (<think>...</think>)
 *   @orphan-think    content starts with reasoning and a lone </think>
 *   @slow=MS         (non-stream) answer after MS
 *   @float-overflow  (embeddings, first input) a vector value of 1e39
 *   @json            answer {"echo":"<the other words>"} in three pieces
 *                    (structured-output tests of the Responses API)
 * Models: qwen3:32b, qwen3:8b (thinking), llama3.2:latest (no thinking),
 * qwen3-legacy:latest (inline thinking, like Ollama < 0.9), bge-m3:latest
 * (embedding only). --chat-delay-ms adds latency to every chat answer.
 *
 * Test hooks (not Ollama): GET /_double/last?path=/api/chat (last request
 * with Host/Authorization/X-Request-Id), GET /_double/stats, GET
 * /_double/wait?disconnects=N (long poll), POST /_double/release.
 *
 * Several hosts (issue 14): --models a,b installs only those models,
 * --loaded a,b lists those in GET /api/ps; POST /_double/fault?mode=hang
 * makes every /api/ request hang, mode=busy answers chat and embeddings
 * with Ollama's queue-full 503, mode=hostile sends malformed and oversized
 * /api/tags and /api/ps replies, mode=hold holds GET /api/version until the
 * mode changes again (then every held one is answered), mode=none restores.
 */
#include "cm_alloc.h"
#include "cm_http_server.h"
#include "cm_json.h"
#include "cm_log.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

struct model_info {
    const char *name;
    const char *family;
    int thinking;  /* separated thinking capability */
    int inline_th; /* old-style inline thinking */
    int embedding; /* embedding-only */
    const char *modified;
};

static const struct model_info models[] = {
    {"qwen3:32b", "qwen3", 1, 0, 0, "2026-03-01T10:00:00.123456789Z"},
    {"qwen3:8b", "qwen3", 1, 0, 0, "2026-02-01T09:30:00Z"},
    {"qwen3-legacy:latest", "qwen3", 0, 1, 0, "2025-05-01T08:00:00-07:00"},
    {"llama3.2:latest", "llama", 0, 0, 0, "2026-01-15T12:00:00.5Z"},
    {"bge-m3:latest", "bert", 0, 0, 1, "2026-01-10T12:00:00Z"},
};
#define NMODELS (sizeof models / sizeof models[0])

struct recorded {
    char *path;
    char *body;
    char *host;
    char *auth;
    char *rid;
};

struct double_state {
    struct event_base *base;
    struct cm_http_server *srv;
    const char *version;
    long chat_delay_ms;
    json_t *counts; /* path -> n */
    long disconnects;
    long active_streams;
    long releases;
    long stalls; /* times a stream waited for its client (backpressure) */
    struct recorded last[4];
    struct stream *streams; /* live streams (for release) */
    struct waiter *waiters;
};

static struct double_state D;

/* ------------------------------------------------------------ several hosts */

enum fault { FAULT_NONE, FAULT_HANG, FAULT_BUSY, FAULT_HOSTILE, FAULT_HOLD };

/* A GET /api/version held by mode=hold. */
struct held {
    struct cm_req *r;
    struct held *prev, *next;
};

static struct {
    const char *installed; /* --models: comma list, NULL = all */
    const char *loaded;    /* --loaded: comma list for /api/ps */
    enum fault fault;
    struct held *held; /* mode=hold: /api/version requests not answered yet */
} MH;

static int in_list(const char *list, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == nl && strncasecmp(p, name, l) == 0)
            return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

/* mode=hostile: model lists no Ollama sends (bad types, control
 * characters, overlong names, 5000 entries); 1 when answered. */
static int mh_hostile_list(struct cm_req *r, int ps)
{
    if (MH.fault != FAULT_HOSTILE)
        return 0;
    if (ps) {
        cm_req_reply_json(r, 200, json_pack("{s:s}", "models", "not a list"));
        return 1;
    }
    json_t *list = json_array();
    char longname[1024];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    json_array_append_new(list, json_pack("{s:s}", "name", longname));
    json_array_append_new(list, json_pack("{s:s}", "name", "bad\nname"));
    json_array_append_new(list, json_pack("{s:i}", "name", 7));
    json_array_append_new(list, json_string("just a string"));
    for (int i = 0; i < 5000; i++) {
        char n[32];
        snprintf(n, sizeof n, "m%d:1b", i);
        json_array_append_new(list, json_pack("{s:s}", "name", n));
    }
    cm_req_reply_json(r, 200, json_pack("{s:o}", "models", list));
    return 1;
}

static int mh_installed(const char *name)
{
    return !MH.installed || in_list(MH.installed, name);
}

static void mh_hang_abort(struct cm_req *r, void *arg);

/* 1 when the injected fault answered (or swallowed) the request. */
static int mh_fault(struct cm_req *r, int is_work)
{
    if (MH.fault == FAULT_HANG) {
        cm_req_on_abort(r, mh_hang_abort, NULL);
        return 1;
    }
    if (MH.fault == FAULT_BUSY && is_work) {
        cm_req_reply_json(r, 503,
                          json_pack("{s:s}", "error",
                                    "server busy, please try again.  maximum pending requests "
                                    "exceeded"));
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------ helpers */

static const struct model_info *find_model(const char *name)
{
    if (!name)
        return NULL;
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s", name, strchr(name, ':') ? "" : ":latest");
    for (size_t i = 0; i < NMODELS; i++)
        if (strcasecmp(models[i].name, buf) == 0)
            return mh_installed(models[i].name) ? &models[i] : NULL;
    return NULL;
}

static void now_rfc3339(char *out, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    char frac[16];
    snprintf(frac, sizeof frac, "%09ld", ts.tv_nsec);
    size_t fl = strlen(frac);
    while (fl > 0 && frac[fl - 1] == '0')
        frac[--fl] = '\0';
    snprintf(out + n, len - n, "%s%sZ", fl ? "." : "", frac);
}

/* Go's encoding/json escapes <, > and & inside strings. */
static void add_go_json(struct evbuffer *out, const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    for (const char *p = s; *p; p++) {
        if (*p == '<')
            evbuffer_add(out, "\\u003c", 6);
        else if (*p == '>')
            evbuffer_add(out, "\\u003e", 6);
        else if (*p == '&')
            evbuffer_add(out, "\\u0026", 6);
        else
            evbuffer_add(out, p, 1);
    }
    free(s);
}

static void reply_json(struct cm_req *r, int status, json_t *v)
{
    struct evbuffer *b = evbuffer_new();
    add_go_json(b, v);
    json_decref(v);
    cm_req_reply_buffer(r, status, "application/json; charset=utf-8", b);
    evbuffer_free(b);
}

static void reply_error(struct cm_req *r, int status, const char *msg)
{
    reply_json(r, status, json_pack("{s:s}", "error", msg));
}

static void record(struct cm_req *r, const char *path)
{
    json_t *n = json_object_get(D.counts, path);
    json_object_set_new(D.counts, path, json_integer(n ? json_integer_value(n) + 1 : 1));
    int slot = -1;
    for (int i = 0; i < 4; i++)
        if (D.last[i].path && strcmp(D.last[i].path, path) == 0)
            slot = i;
    for (int i = 0; i < 4 && slot < 0; i++)
        if (!D.last[i].path)
            slot = i;
    if (slot < 0)
        slot = 0;
    struct recorded *rec = &D.last[slot];
    free(rec->path), free(rec->body), free(rec->host), free(rec->auth), free(rec->rid);
    struct evbuffer *b = cm_req_body(r);
    rec->path = cm_xstrdup(path);
    rec->body = cm_xstrndup((const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    const char *h;
    rec->host = (h = cm_req_header(r, "Host")) ? cm_xstrdup(h) : NULL;
    rec->auth = (h = cm_req_header(r, "Authorization")) ? cm_xstrdup(h) : NULL;
    rec->rid = (h = cm_req_header(r, "X-Request-Id")) ? cm_xstrdup(h) : NULL;
}

static int only(struct cm_req *r, const char *method)
{
    if (strcmp(cm_req_method_name(r), method) == 0 ||
        (strcmp(method, "GET") == 0 && strcmp(cm_req_method_name(r), "HEAD") == 0))
        return 1;
    cm_req_reply_text(r, 405, "text/plain", "405 method not allowed", 22);
    return 0;
}

/* Parse the body like gin's ShouldBindJSON: error texts in Go's style. */
static json_t *parse_body(struct cm_req *r)
{
    struct evbuffer *b = cm_req_body(r);
    size_t len = evbuffer_get_length(b);
    if (len == 0) {
        reply_error(r, 400, "missing request body");
        return NULL;
    }
    json_t *v = cm_json_parse((const char *)evbuffer_pullup(b, -1), len, NULL, 0);
    if (!json_is_object(v)) {
        json_decref(v);
        reply_error(r, 400, "invalid character looking for beginning of value");
        return NULL;
    }
    return v;
}

/* ------------------------------------------------------------ waiters */

struct waiter {
    struct waiter *next;
    struct cm_req *r;
    long want;
    struct event *timeout;
};

static void waiter_remove(struct waiter *w)
{
    for (struct waiter **pp = &D.waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    event_free(w->timeout);
    free(w);
}

static void waiters_check(void)
{
    struct waiter *w = D.waiters;
    while (w) {
        struct waiter *next = w->next;
        if (D.disconnects >= w->want) {
            reply_json(w->r, 200, json_pack("{s:I}", "disconnects", (json_int_t)D.disconnects));
            waiter_remove(w);
        }
        w = next;
    }
}

static void waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;
    (void)fd;
    (void)what;
    reply_json(w->r, 408, json_pack("{s:I}", "disconnects", (json_int_t)D.disconnects));
    waiter_remove(w);
}

static void waiter_abort(struct cm_req *r, void *arg)
{
    (void)r;
    waiter_remove(arg);
}

/* ------------------------------------------------------------ chat */

enum mode {
    MODE_NORMAL,
    MODE_HANG,
    MODE_HANG_AFTER_FIRST,
    MODE_HANG_AFTER_DONE,
    MODE_ERROR_MID,
    MODE_TRUNCATE,
    MODE_GARBAGE,
    MODE_CUT
};

struct stream {
    struct stream *next;
    struct cm_req *r;
    char *model;
    json_t *lines; /* array of objects still to send */
    size_t sent;
    enum mode mode;
    int gate;
    long slow_ms;
    long gate_seen; /* releases consumed */
    struct event *tick;
};

static void stream_remove(struct stream *s)
{
    for (struct stream **pp = &D.streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    D.active_streams--;
    event_free(s->tick);
    json_decref(s->lines);
    free(s->model);
    free(s);
}

static void stream_schedule(struct stream *s, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(s->tick, &tv);
}

static void stream_drained(struct cm_req *r, void *arg)
{
    (void)r;
    stream_schedule(arg, 0);
}

static void stream_tick(evutil_socket_t fd, short what, void *arg)
{
    struct stream *s = arg;
    (void)fd;
    (void)what;
    if (s->sent >= json_array_size(s->lines)) {
        if (s->mode == MODE_HANG_AFTER_FIRST || s->mode == MODE_HANG_AFTER_DONE)
            return; /* stay silent until the client leaves */
        if (s->mode == MODE_GARBAGE) {
            cm_req_stream_write(s->r, "this is not json\n", 17);
            cm_req_stream_end(s->r);
            stream_remove(s);
            return;
        }
        if (s->mode == MODE_CUT) {
            static const char half[] = "{\"model\":\"qwen3:8b\",\"mess";
            cm_req_stream_write(s->r, half, sizeof half - 1);
            cm_req_stream_abort(s->r);
            stream_remove(s);
            return;
        }
        cm_req_stream_end(s->r);
        stream_remove(s);
        return;
    }
    /* Like Go's net/http: a writer blocks while the client does not read. */
    if (cm_req_stream_backlog(s->r) > 256 * 1024) {
        D.stalls++;
        cm_req_stream_on_drain(s->r, stream_drained, s);
        return;
    }
    if (s->gate && s->sent > 0) {
        if (D.releases <= s->gate_seen)
            return; /* POST /_double/release re-schedules */
        s->gate_seen++;
    }
    struct evbuffer *b = evbuffer_new();
    add_go_json(b, json_array_get(s->lines, s->sent++));
    evbuffer_add(b, "\n", 1);
    cm_req_stream_write(s->r, (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
    stream_schedule(s, s->slow_ms);
}

static void stream_abort(struct cm_req *r, void *arg)
{
    (void)r;
    D.disconnects++;
    stream_remove(arg);
    waiters_check();
}

struct hang {
    struct cm_req *r;
};

static void hang_abort(struct cm_req *r, void *arg)
{
    (void)r;
    D.disconnects++;
    free(arg);
    waiters_check();
}

static const char *last_user_content(const json_t *msgs)
{
    for (size_t i = json_array_size(msgs); i > 0; i--) {
        json_t *m = json_array_get(msgs, i - 1);
        const char *role = cm_json_str(m, "role");
        if (role && strcmp(role, "user") == 0)
            return cm_json_str(m, "content");
    }
    return "";
}

static long directive_num(const char *text, const char *name, long def)
{
    const char *p = strstr(text, name);
    return p ? strtol(p + strlen(name), NULL, 10) : def;
}

/* Words of the answer, directives dropped. Returns a JSON array of strings. */
/* @json: {"echo":"<words without directives>"} as three stream pieces. */
static json_t *json_answer_words(const char *text)
{
    char *copy = cm_xstrdup(text ? text : "");
    char *joined = cm_xstrdup("");
    char *save = NULL;
    for (char *tok = strtok_r(copy, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        if (tok[0] == '@')
            continue;
        char *n = cm_xasprintf("%s%s%s", joined, *joined ? " " : "", tok);
        free(joined);
        joined = n;
    }
    json_t *str = json_string(joined);
    char *quoted = str ? json_dumps(str, JSON_ENCODE_ANY) : NULL;
    json_t *words = json_pack("[s, s, s]", "{\"echo\": ", quoted ? quoted : "\"\"", "}");
    free(quoted);
    json_decref(str);
    free(joined);
    free(copy);
    return words;
}

static json_t *answer_words(const char *text, long nwords, long pad)
{
    json_t *words = json_array();
    if (nwords > 0) {
        if (pad < 0 || pad > 65536)
            pad = 0;
        char *w = cm_xmalloc((size_t)pad + 32);
        for (long i = 0; i < nwords; i++) {
            int n = snprintf(w, 32, "%sw%ld", i ? " " : "", i);
            memset(w + n, 'x', (size_t)pad);
            w[n + pad] = '\0';
            json_array_append_new(words, json_string(w));
        }
        free(w);
        return words;
    }
    json_array_append_new(words, json_string("Echo:"));
    char *copy = cm_xstrdup(text ? text : "");
    char *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(copy, " \t\n", &save); tok && n < 64;
         tok = strtok_r(NULL, " \t\n", &save)) {
        if (tok[0] == '@')
            continue;
        char *w = cm_xasprintf(" %s", tok);
        json_t *s = json_string(w);
        if (s)
            json_array_append_new(words, s);
        free(w);
        n++;
    }
    free(copy);
    return words;
}

static json_t *line_new(const char *model, const char *content, const char *thinking)
{
    char ts[64];
    now_rfc3339(ts, sizeof ts);
    json_t *msg = json_pack("{s:s, s:s}", "role", "assistant", "content", content);
    if (thinking)
        json_object_set_new(msg, "thinking", json_string(thinking));
    return json_pack("{s:s, s:s, s:o, s:b}", "model", model, "created_at", ts, "message", msg,
                     "done", 0);
}

static void finalize(json_t *line, const char *reason, long prompt_tokens, long eval_tokens)
{
    json_object_set_new(line, "done", json_true());
    json_object_set_new(line, "done_reason", json_string(reason));
    json_object_set_new(line, "total_duration", json_integer(402000000));
    json_object_set_new(line, "load_duration", json_integer(9100000));
    json_object_set_new(line, "prompt_eval_count", json_integer(prompt_tokens));
    json_object_set_new(line, "prompt_eval_duration", json_integer(31000000));
    json_object_set_new(line, "eval_count", json_integer(eval_tokens));
    json_object_set_new(line, "eval_duration", json_integer(350000000));
}

/* Non-stream answer after a delay (model latency), without blocking. */
struct delayed {
    struct cm_req *r;
    json_t *reply;
    struct event *ev;
};

static void delayed_free(struct delayed *d)
{
    event_free(d->ev);
    json_decref(d->reply);
    free(d);
}

static void delayed_fire(evutil_socket_t fd, short what, void *arg)
{
    struct delayed *d = arg;
    (void)fd;
    (void)what;
    reply_json(d->r, 200, json_incref(d->reply));
    delayed_free(d);
}

static void delayed_abort(struct cm_req *r, void *arg)
{
    (void)r;
    D.disconnects++;
    delayed_free(arg);
    waiters_check();
}

static void delayed_reply(struct cm_req *r, json_t *reply, long ms)
{
    struct delayed *d = cm_xcalloc(1, sizeof *d);
    d->r = r;
    d->reply = reply;
    d->ev = evtimer_new(D.base, delayed_fire, d);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(d->ev, &tv);
    cm_req_on_abort(r, delayed_abort, d);
}

static void handle_chat(struct cm_req *r, void *arg)
{
    (void)arg;
    if (!only(r, "POST"))
        return;
    record(r, "/api/chat");
    if (mh_fault(r, 1))
        return;
    json_t *req = parse_body(r);
    if (!req)
        return;
    const char *model = cm_json_str(req, "model");
    json_t *msgs = json_object_get(req, "messages");
    json_t *stream_v = json_object_get(req, "stream");
    int stream = stream_v ? json_is_true(stream_v) : 1; /* native default: stream */
    json_t *think = json_object_get(req, "think");
    json_t *options = json_object_get(req, "options");
    const struct model_info *mi = find_model(model);
    const char *text = last_user_content(msgs);
    if (!text)
        text = "";
    long status = directive_num(text, "@status=", 0);
    if (!model || !*model) {
        reply_error(r, 400, "model is required");
        goto out;
    }
    if (!mi) {
        char msg[300];
        snprintf(msg, sizeof msg, "model '%s' not found", model);
        reply_error(r, 404, msg);
        goto out;
    }
    if (mi->embedding) {
        char msg[300];
        snprintf(msg, sizeof msg, "\"%s\" does not support chat", model);
        reply_error(r, 400, msg);
        goto out;
    }
    if (json_is_true(think) && !mi->thinking) {
        char msg[300];
        snprintf(msg, sizeof msg, "\"%s\" does not support thinking", model);
        reply_error(r, 400, msg);
        goto out;
    }
    if (status >= 400) {
        char msg[128];
        snprintf(msg, sizeof msg, "injected failure %ld", status);
        if (status == 503)
            snprintf(msg, sizeof msg,
                     "server busy, please try again.  maximum pending requests exceeded");
        reply_error(r, (int)status, msg);
        goto out;
    }
    if (json_array_size(msgs) == 0) {
        json_t *line = line_new(model, "", NULL);
        json_object_set_new(line, "done", json_true());
        json_object_set_new(line, "done_reason", json_string("load"));
        reply_json(r, 200, line);
        goto out;
    }
    if (strstr(text, "@hang") && !strstr(text, "@hang-after-first") &&
        !strstr(text, "@hang-after-done")) {
        struct hang *h = cm_xcalloc(1, sizeof *h);
        h->r = r;
        cm_req_on_abort(r, hang_abort, h);
        goto out;
    }

    /* Build the answer as native lines. */
    int separated = mi->thinking && !json_is_false(think);
    int inline_th = mi->inline_th || strstr(text, "@inline-think") != NULL;
    long num_predict = cm_json_int(options, "num_predict", -1);
    json_t *words = strstr(text, "@json") ? json_answer_words(text)
                                          : answer_words(text, directive_num(text, "@words=", 0),
                                                         directive_num(text, "@pad=", 0));
    json_t *lines = json_array();
    if (separated) {
        json_array_append_new(lines, line_new(model, "", "The user"));
        json_array_append_new(lines, line_new(model, "", " wants an answer."));
    }
    if (strstr(text, "@orphan-think")) {
        json_array_append_new(lines, line_new(model, "Residue of reasoning.", NULL));
        json_array_append_new(lines, line_new(model, "</think>\n\n", NULL));
    }
    if (inline_th) {
        json_array_append_new(lines, line_new(model, "<think>", NULL));
        json_array_append_new(lines, line_new(model, "Inline reasoning.", NULL));
        json_array_append_new(lines, line_new(model, "</think>\n\n", NULL));
    }
    const char *reason = "stop";
    json_t *tools = json_object_get(req, "tools");
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    int want_tool = json_array_size(tools) > 0 &&
                    strcmp(cm_json_str(last, "role") ? cm_json_str(last, "role") : "", "user") == 0;
    if (want_tool) {
        const char *fname =
            cm_json_str(json_object_get(json_array_get(tools, 0), "function"), "name");
        json_t *line = line_new(model, "", NULL);
        json_t *call =
            json_pack("{s:s, s:{s:i, s:s, s:{s:s}}}", "id", "call_4kq0z8ab", "function", "index", 0,
                      "name", fname ? fname : "tool", "arguments", "tz", "UTC");
        json_object_set_new(json_object_get(line, "message"), "tool_calls", json_pack("[o]", call));
        json_array_append_new(lines, line);
    } else {
        size_t i;
        json_t *w;
        json_array_foreach(words, i, w)
        {
            if (num_predict >= 0 && (long)i >= num_predict) {
                reason = "length";
                break;
            }
            json_array_append_new(lines, line_new(model, json_string_value(w), NULL));
        }
    }
    long prompt_tokens = 0;
    size_t mi_i;
    json_t *m;
    json_array_foreach(msgs, mi_i, m)
    {
        const char *c = cm_json_str(m, "content");
        prompt_tokens += 4 + (c ? (long)strlen(c) / 4 : 0);
    }
    long eval_tokens = (long)json_array_size(lines);
    json_t *final = line_new(model, "", NULL);
    finalize(final, reason, prompt_tokens, eval_tokens);
    json_array_append_new(lines, final);
    json_decref(words);

    if (!stream) {
        /* Concatenate into one reply, as Ollama does. */
        char *content = cm_xstrdup(""), *thinking = cm_xstrdup("");
        json_t *calls = NULL;
        size_t i;
        json_t *l;
        json_array_foreach(lines, i, l)
        {
            json_t *msg = json_object_get(l, "message");
            const char *c = cm_json_str(msg, "content"), *t = cm_json_str(msg, "thinking");
            char *nc = cm_xasprintf("%s%s", content, c ? c : "");
            char *nt = cm_xasprintf("%s%s", thinking, t ? t : "");
            free(content), free(thinking);
            content = nc, thinking = nt;
            if (json_object_get(msg, "tool_calls"))
                calls = json_object_get(msg, "tool_calls");
        }
        json_t *reply = line_new(model, content, *thinking ? thinking : NULL);
        if (calls)
            json_object_set(json_object_get(reply, "message"), "tool_calls", calls);
        finalize(reply, reason, prompt_tokens, eval_tokens);
        free(content), free(thinking);
        json_decref(lines);
        long delay = directive_num(text, "@slow=", D.chat_delay_ms);
        if (delay > 0) {
            delayed_reply(r, reply, delay);
            goto out;
        }
        reply_json(r, 200, reply);
        goto out;
    }

    enum mode mode = MODE_NORMAL;
    if (strstr(text, "@hang-after-first")) {
        mode = MODE_HANG_AFTER_FIRST;
        json_array_remove(lines, json_array_size(lines) - 1);
        while (json_array_size(lines) > 1)
            json_array_remove(lines, 1);
    } else if (strstr(text, "@hang-after-done")) {
        mode = MODE_HANG_AFTER_DONE;
    } else if (strstr(text, "@garbage") || strstr(text, "@cut")) {
        mode = strstr(text, "@garbage") ? MODE_GARBAGE : MODE_CUT;
        json_array_remove(lines, json_array_size(lines) - 1);
        while (json_array_size(lines) > 1)
            json_array_remove(lines, 1);
    } else if (strstr(text, "@error-mid") || strstr(text, "@truncate")) {
        int err = strstr(text, "@error-mid") != NULL;
        mode = err ? MODE_ERROR_MID : MODE_TRUNCATE;
        json_array_remove(lines, json_array_size(lines) - 1); /* the final line */
        while (json_array_size(lines) > 2)
            json_array_remove(lines, 2);
        if (err)
            json_array_append_new(lines, json_pack("{s:s}", "error", "model runner crashed"));
    }
    struct stream *s = cm_xcalloc(1, sizeof *s);
    s->r = r;
    s->model = cm_xstrdup(model);
    s->lines = lines;
    s->mode = mode;
    s->gate = strstr(text, "@gate") != NULL;
    s->gate_seen = D.releases;
    s->slow_ms = directive_num(text, "@slow=", 0);
    s->tick = evtimer_new(D.base, stream_tick, s);
    s->next = D.streams;
    D.streams = s;
    D.active_streams++;
    cm_req_on_abort(r, stream_abort, s);
    cm_req_stream_start(r, 200, "application/x-ndjson");
    stream_schedule(s, D.chat_delay_ms);
out:
    json_decref(req);
}

/* ------------------------------------------------------------ embed */

static void embed_vector(const char *text, long dims, json_t *out)
{
    /* Deterministic pseudo-embedding from the text, L2-normalised. */
    unsigned long h = 1469598103934665603UL;
    for (const char *p = text; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211UL;
    double *v = cm_xmalloc((size_t)dims * sizeof(double));
    double norm = 0;
    for (long i = 0; i < dims; i++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        v[i] = ((double)(h >> 11) / 9007199254740992.0) - 0.5;
        norm += v[i] * v[i];
    }
    norm = sqrt(norm);
    for (long i = 0; i < dims; i++)
        json_array_append_new(out, json_real((double)(float)(v[i] / norm)));
    free(v);
}

static void handle_embed(struct cm_req *r, void *arg)
{
    (void)arg;
    if (!only(r, "POST"))
        return;
    record(r, "/api/embed");
    if (mh_fault(r, 1))
        return;
    json_t *req = parse_body(r);
    if (!req)
        return;
    const char *model = cm_json_str(req, "model");
    const struct model_info *mi = find_model(model);
    json_t *input = json_object_get(req, "input");
    if (!mi) {
        char msg[300];
        snprintf(msg, sizeof msg, "model \"%s\" not found, try pulling it first",
                 model ? model : "");
        reply_error(r, 404, msg);
        goto out;
    }
    json_t *inputs = json_array();
    if (json_is_string(input)) {
        if (json_string_length(input))
            json_array_append(inputs, input);
    } else if (json_is_array(input)) {
        size_t i;
        json_t *v;
        json_array_foreach(input, i, v)
        {
            if (!json_is_string(v)) {
                json_decref(inputs);
                reply_error(r, 400, "invalid input type");
                goto out;
            }
            json_array_append(inputs, v);
        }
    } else if (input) {
        json_decref(inputs);
        reply_error(r, 400, "invalid input type");
        goto out;
    }
    const char *text0 = json_string_value(json_array_get(inputs, 0));
    if (text0 && strstr(text0, "@status=")) {
        long st = directive_num(text0, "@status=", 500);
        char msg[64];
        snprintf(msg, sizeof msg, "injected failure %ld", st);
        json_decref(inputs);
        reply_error(r, (int)st, msg);
        goto out;
    }
    long dims = 1024;
    long want = cm_json_int(req, "dimensions", 0);
    if (want > 0 && want < dims)
        dims = want;
    json_t *embs = json_array();
    long tokens = 0;
    size_t i;
    json_t *v;
    int overflow = text0 && strstr(text0, "@float-overflow") != NULL;
    json_array_foreach(inputs, i, v)
    {
        json_t *vec = json_array();
        embed_vector(json_string_value(v), dims, vec);
        if (overflow) /* a value no float can hold */
            json_array_set_new(vec, 0, json_real(1e39));
        json_array_append_new(embs, vec);
        tokens += 1 + (long)json_string_length(v) / 4;
    }
    json_t *reply = json_pack("{s:s, s:o}", "model", model, "embeddings", embs);
    if (json_array_size(inputs)) {
        json_object_set_new(reply, "total_duration", json_integer(48211900));
        json_object_set_new(reply, "load_duration", json_integer(3120400));
        json_object_set_new(reply, "prompt_eval_count", json_integer(tokens));
    }
    json_decref(inputs);
    reply_json(r, 200, reply);
out:
    json_decref(req);
}

/* ------------------------------------------------------------ discovery */

static void handle_tags(struct cm_req *r, void *arg)
{
    (void)arg;
    if (!only(r, "GET"))
        return;
    record(r, "/api/tags");
    if (mh_fault(r, 0) || mh_hostile_list(r, 0))
        return;
    json_t *list = json_array();
    for (size_t i = 0; i < NMODELS; i++) {
        const struct model_info *m = &models[i];
        if (!mh_installed(m->name))
            continue;
        json_t *caps = json_array();
        json_array_append_new(caps, json_string(m->embedding ? "embedding" : "completion"));
        if (m->thinking)
            json_array_append_new(caps, json_string("thinking"));
        json_array_append_new(
            list, json_pack("{s:s, s:s, s:s, s:I, s:s, s:{s:s, s:s, s:s, s:[s], s:s, s:s}, s:o}",
                            "name", m->name, "model", m->name, "modified_at", m->modified, "size",
                            (json_int_t)1234567890, "digest",
                            "9f5c4b6e0d1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4",
                            "details", "parent_model", "", "format", "gguf", "family", m->family,
                            "families", m->family, "parameter_size", "8.2B", "quantization_level",
                            "Q4_K_M", "capabilities", caps));
    }
    reply_json(r, 200, json_pack("{s:o}", "models", list));
}

static void held_abort(struct cm_req *r, void *arg)
{
    struct held *h = arg;
    (void)r;
    if (h->prev)
        h->prev->next = h->next;
    else
        MH.held = h->next;
    if (h->next)
        h->next->prev = h->prev;
    free(h);
    D.disconnects++;
    waiters_check();
}

static void handle_version(struct cm_req *r, void *arg)
{
    (void)arg;
    if (!only(r, "GET"))
        return;
    record(r, "/api/version");
    if (MH.fault == FAULT_HOLD) {
        struct held *h = cm_xcalloc(1, sizeof *h);
        h->r = r;
        h->next = MH.held;
        if (MH.held)
            MH.held->prev = h;
        MH.held = h;
        cm_req_on_abort(r, held_abort, h);
        return;
    }
    if (mh_fault(r, 0))
        return;
    reply_json(r, 200, json_pack("{s:s}", "version", D.version));
}

/* The mode left hold: every held /api/version is answered now. */
static void held_answer_all(void)
{
    while (MH.held) {
        struct held *h = MH.held;
        MH.held = h->next;
        cm_req_on_abort(h->r, NULL, NULL);
        reply_json(h->r, 200, json_pack("{s:s}", "version", D.version));
        free(h);
    }
}

static void mh_hang_abort(struct cm_req *r, void *arg)
{
    (void)r;
    (void)arg;
    D.disconnects++;
    waiters_check();
}

static void handle_ps(struct cm_req *r, void *arg)
{
    (void)arg;
    if (!only(r, "GET"))
        return;
    record(r, "/api/ps");
    if (mh_fault(r, 0) || mh_hostile_list(r, 1))
        return;
    json_t *list = json_array();
    for (size_t i = 0; i < NMODELS; i++)
        if (MH.loaded && in_list(MH.loaded, models[i].name) && mh_installed(models[i].name))
            json_array_append_new(list,
                                  json_pack("{s:s, s:s, s:I, s:I}", "name", models[i].name, "model",
                                            models[i].name, "size", (json_int_t)6654289920,
                                            "size_vram", (json_int_t)6654289920));
    reply_json(r, 200, json_pack("{s:o}", "models", list));
}

static void handle_fault(struct cm_req *r, void *arg)
{
    (void)arg;
    const char *m = cm_req_query(r, "mode");
    MH.fault = m && strcmp(m, "hang") == 0      ? FAULT_HANG
               : m && strcmp(m, "busy") == 0    ? FAULT_BUSY
               : m && strcmp(m, "hostile") == 0 ? FAULT_HOSTILE
               : m && strcmp(m, "hold") == 0    ? FAULT_HOLD
                                                : FAULT_NONE;
    if (MH.fault != FAULT_HOLD)
        held_answer_all();
    cm_req_reply_json(r, 200, json_pack("{s:s}", "mode", m ? m : "none"));
}

static void handle_root(struct cm_req *r, void *arg)
{
    (void)arg;
    if (!only(r, "GET"))
        return;
    cm_req_reply_text(r, 200, "text/plain; charset=utf-8", "Ollama is running", 17);
}

static void handle_not_found(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_text(r, 404, "text/plain", "404 page not found", 18);
}

/* ------------------------------------------------------------ test hooks */

static void handle_last(struct cm_req *r, void *arg)
{
    (void)arg;
    const char *path = cm_req_query(r, "path");
    for (int i = 0; i < 4; i++) {
        struct recorded *rec = &D.last[i];
        if (rec->path && path && strcmp(rec->path, path) == 0) {
            json_t *body = cm_json_parse(rec->body, strlen(rec->body), NULL, 0);
            json_t *o =
                json_pack("{s:s, s:o}", "path", rec->path, "body", body ? body : json_null());
            json_object_set_new(o, "host", rec->host ? json_string(rec->host) : json_null());
            json_object_set_new(o, "authorization",
                                rec->auth ? json_string(rec->auth) : json_null());
            json_object_set_new(o, "request_id", rec->rid ? json_string(rec->rid) : json_null());
            cm_req_reply_json(r, 200, o);
            return;
        }
    }
    cm_req_reply_json(r, 404, json_pack("{s:s}", "error", "nothing recorded for that path"));
}

static void handle_stats(struct cm_req *r, void *arg)
{
    (void)arg;
    cm_req_reply_json(r, 200,
                      json_pack("{s:O, s:I, s:I, s:I}", "requests", D.counts, "disconnects",
                                (json_int_t)D.disconnects, "active_streams",
                                (json_int_t)D.active_streams, "stalls", (json_int_t)D.stalls));
}

static void handle_wait(struct cm_req *r, void *arg)
{
    (void)arg;
    const char *want = cm_req_query(r, "disconnects");
    struct waiter *w = cm_xcalloc(1, sizeof *w);
    w->r = r;
    w->want = want ? strtol(want, NULL, 10) : 1;
    w->timeout = evtimer_new(D.base, waiter_timeout, w);
    struct timeval tv = {10, 0};
    evtimer_add(w->timeout, &tv);
    w->next = D.waiters;
    D.waiters = w;
    cm_req_on_abort(r, waiter_abort, w);
    waiters_check();
}

static void handle_release(struct cm_req *r, void *arg)
{
    (void)arg;
    D.releases++;
    for (struct stream *s = D.streams; s; s = s->next)
        stream_schedule(s, 0);
    cm_req_reply_json(r, 200, json_pack("{s:I}", "releases", (json_int_t)D.releases));
}

/* ------------------------------------------------------------ main */

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"host", required_argument, NULL, 'h'},
                                             {"port", required_argument, NULL, 'p'},
                                             {"port-file", required_argument, NULL, 'f'},
                                             {"version-string", required_argument, NULL, 'v'},
                                             {"chat-delay-ms", required_argument, NULL, 'd'},
                                             {"models", required_argument, NULL, 'm'},
                                             {"loaded", required_argument, NULL, 'l'},
                                             {"help", no_argument, NULL, 'H'},
                                             {NULL, 0, NULL, 0}};
    const char *host = "127.0.0.1", *port_file = NULL;
    int port = 11434, opt;
    D.version = "0.12.6";
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'f':
            port_file = optarg;
            break;
        case 'v':
            D.version = optarg;
            break;
        case 'd':
            D.chat_delay_ms = atol(optarg);
            break;
        case 'm':
            MH.installed = optarg;
            break;
        case 'l':
            MH.loaded = optarg;
            break;
        default:
            printf("Usage: ollama_double [--host H] [--port P] [--port-file F] "
                   "[--version-string V] [--chat-delay-ms MS] [--models A,B] [--loaded A,B]\n");
            return opt == 'H' ? 0 : 2;
        }
    }
    cm_log_init("ollama_double", CM_LOG_WARN, CM_LOG_TEXT);
    signal(SIGPIPE, SIG_IGN);
    D.base = event_base_new();
    D.counts = json_object();
    struct cm_http_server_opts so = {.host = host, .port = port, .idle_timeout_s = 300};
    D.srv = cm_http_server_new(D.base, &so);
    const unsigned all = CM_GET | CM_POST | CM_HEAD | CM_PUT | CM_DELETE | CM_OPTIONS | CM_PATCH;
    cm_http_server_route(D.srv, all, "/", 0, "root", handle_root, NULL);
    cm_http_server_route(D.srv, all, "/api/chat", 0, "chat", handle_chat, NULL);
    cm_http_server_route(D.srv, all, "/api/embed", 0, "embed", handle_embed, NULL);
    cm_http_server_route(D.srv, all, "/api/tags", 0, "tags", handle_tags, NULL);
    cm_http_server_route(D.srv, all, "/api/version", 0, "version", handle_version, NULL);
    cm_http_server_route(D.srv, all, "/api/ps", 0, "ps", handle_ps, NULL);
    cm_http_server_route(D.srv, CM_POST, "/_double/fault", 0, "fault", handle_fault, NULL);
    cm_http_server_route(D.srv, CM_GET, "/_double/last", 0, "last", handle_last, NULL);
    cm_http_server_route(D.srv, CM_GET, "/_double/stats", 0, "stats", handle_stats, NULL);
    cm_http_server_route(D.srv, CM_GET, "/_double/wait", 0, "wait", handle_wait, NULL);
    cm_http_server_route(D.srv, CM_POST, "/_double/release", 0, "release", handle_release, NULL);
    cm_http_server_route(D.srv, all, "/", CM_ROUTE_PREFIX, "not_found", handle_not_found, NULL);
    char err[256];
    if (cm_http_server_start(D.srv, err, sizeof err) != 0) {
        fprintf(stderr, "ollama_double: %s\n", err);
        return 1;
    }
    if (port_file && cm_http_server_write_port_file(D.srv, port_file) != 0) {
        fprintf(stderr, "ollama_double: cannot write %s\n", port_file);
        return 1;
    }
    fprintf(stderr, "ollama_double listening on %s:%d\n", host, cm_http_server_port(D.srv));
    struct event *st = evsignal_new(D.base, SIGTERM, on_signal, D.base);
    struct event *si = evsignal_new(D.base, SIGINT, on_signal, D.base);
    event_add(st, NULL);
    event_add(si, NULL);
    event_base_dispatch(D.base);
    cm_http_server_free(D.srv);
    event_free(st);
    event_free(si);
    for (int i = 0; i < 4; i++) {
        struct recorded *rec = &D.last[i];
        free(rec->path), free(rec->body), free(rec->host), free(rec->auth), free(rec->rid);
    }
    json_decref(D.counts);
    event_base_free(D.base);
    return 0;
}

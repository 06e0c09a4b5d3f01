/* embed_translate: see embed_translate.h. */
#include "embed_translate.h"

#include "chat_policy.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <float.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int check_input(const json_t *input, size_t *n, struct proxy_error *err)
{
    if (json_is_string(input)) {
        if (json_string_length(input) == 0) {
            proxy_error_set(err, 400, "input", "invalid_value",
                            "'input' cannot be an empty string.");
            return -1;
        }
        *n = 1;
        return 0;
    }
    if (!json_is_array(input) || json_array_size(input) == 0) {
        proxy_error_set(err, 400, "input", json_is_array(input) ? "empty_array" : "invalid_type",
                        "'input' must be a non-empty string or a non-empty array of strings.");
        return -1;
    }
    if (json_array_size(input) > EMBED_MAX_INPUTS) {
        proxy_error_set(err, 400, "input", "array_above_max_length",
                        "'input' has %zu items; at most %d are allowed.", json_array_size(input),
                        EMBED_MAX_INPUTS);
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(input, i, v)
    {
        char param[32];
        snprintf(param, sizeof param, "input[%zu]", i);
        if (json_is_integer(v) || json_is_array(v)) {
            proxy_error_set(err, 400, param, "invalid_type",
                            "Token arrays are not supported; send the text as strings.");
            return -1;
        }
        if (!json_is_string(v) || json_string_length(v) == 0) {
            proxy_error_set(err, 400, param, "invalid_value", "'%s' must be a non-empty string.",
                            param);
            return -1;
        }
    }
    *n = json_array_size(input);
    return 0;
}

int embed_request_translate(const json_t *oai, struct embed_request *out, struct proxy_error *err)
{
    memset(out, 0, sizeof *out);
    const char *model = proxy_require_model(oai, err);
    if (!model)
        return -1;
    json_t *input = json_object_get(oai, "input");
    if (!input) {
        proxy_error_set(err, 400, "input", "missing_required_parameter",
                        "Missing required parameter: 'input'.");
        return -1;
    }
    size_t n;
    if (check_input(input, &n, err) != 0)
        return -1;
    json_t *fmt = json_object_get(oai, "encoding_format");
    int base64 = 0;
    if (fmt && !json_is_null(fmt)) {
        const char *f = json_string_value(fmt);
        if (f && strcasecmp(f, "base64") == 0)
            base64 = 1;
        else if (!f || strcasecmp(f, "float") != 0) {
            proxy_error_set(err, 400, "encoding_format", "invalid_value",
                            "Invalid value for 'encoding_format'. Supported values: 'float', "
                            "'base64'.");
            return -1;
        }
    }
    json_t *native = json_pack("{s:s, s:O}", "model", model, "input", input);
    json_t *dims = json_object_get(oai, "dimensions");
    if (dims && !json_is_null(dims)) {
        if (!json_is_integer(dims) || json_integer_value(dims) < 1) {
            json_decref(native);
            proxy_error_set(err, 400, "dimensions", "invalid_value",
                            "'dimensions' must be a positive integer.");
            return -1;
        }
        json_object_set(native, "dimensions", dims);
    }
    /* Ollama controls the OpenAI layer hides. */
    json_t *ka = json_object_get(oai, "keep_alive");
    if (ka && !json_is_null(ka)) {
        json_t *v = chat_policy_keep_alive(ka, err);
        if (!v) {
            json_decref(native);
            return -1;
        }
        json_object_set_new(native, "keep_alive", v);
    }
    json_t *opts = json_object_get(oai, "options");
    if (opts && !json_is_null(opts)) {
        if (!json_is_object(opts)) {
            json_decref(native);
            proxy_error_set(err, 400, "options", "invalid_type", "'options' must be an object.");
            return -1;
        }
        if (chat_policy_check_options(opts, err) != 0) {
            json_decref(native);
            return -1;
        }
        json_object_set(native, "options", opts);
    }
    json_t *trunc = json_object_get(oai, "truncate");
    if (json_is_boolean(trunc))
        json_object_set(native, "truncate", trunc);

    out->model = cm_xstrdup(model);
    out->base64 = base64;
    out->n_inputs = n;
    out->native = native;
    return 0;
}

void embed_request_deinit(struct embed_request *req)
{
    free(req->model);
    json_decref(req->native);
    memset(req, 0, sizeof *req);
}

static json_t *vector_base64(const json_t *vec)
{
    size_t n = json_array_size(vec);
    unsigned char *raw = cm_xmalloc(n * 4 + 1);
    for (size_t i = 0; i < n; i++) {
        float f = (float)json_number_value(json_array_get(vec, i));
        uint32_t bits;
        memcpy(&bits, &f, 4);
        raw[4 * i] = (unsigned char)(bits & 0xff);
        raw[4 * i + 1] = (unsigned char)((bits >> 8) & 0xff);
        raw[4 * i + 2] = (unsigned char)((bits >> 16) & 0xff);
        raw[4 * i + 3] = (unsigned char)(bits >> 24);
    }
    char *b64 = cm_xmalloc(4 * ((n * 4 + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, raw, (int)(n * 4));
    json_t *s = json_string(b64);
    free(raw);
    free(b64);
    return s;
}

static int bad_reply(struct proxy_error *err, const char *what)
{
    proxy_error_set(err, 502, NULL, "upstream_error",
                    "The upstream model server returned an invalid embeddings reply (%s).", what);
    return -1;
}

/* Every value a finite number within float range (the float32 conversion
 * of anything else is undefined behaviour). */
static int vector_ok(const json_t *vec)
{
    if (!json_is_array(vec) || json_array_size(vec) == 0)
        return 0;
    for (size_t k = 0; k < json_array_size(vec); k++) {
        json_t *x = json_array_get(vec, k);
        if (!json_is_number(x))
            return 0;
        double d = json_number_value(x);
        if (!isfinite(d) || d > FLT_MAX || d < -FLT_MAX)
            return 0;
    }
    return 1;
}

/* The vectors in input order (borrowed, n entries) from either the native
 * "embeddings" array or an OpenAI-style "data" list whose "index" values
 * must name each input exactly once. */
static int collect_vectors(const json_t *native, size_t n, const json_t **out,
                           struct proxy_error *err)
{
    json_t *embs = json_object_get(native, "embeddings");
    json_t *data = json_object_get(native, "data");
    if (json_is_array(embs)) {
        if (json_array_size(embs) != n)
            return bad_reply(err, "wrong number of embeddings");
        for (size_t i = 0; i < n; i++)
            out[i] = json_array_get(embs, i);
        return 0;
    }
    if (!json_is_array(data) || json_array_size(data) != n)
        return bad_reply(err, "wrong number of embeddings");
    for (size_t i = 0; i < n; i++)
        out[i] = NULL;
    size_t i;
    json_t *d;
    json_array_foreach(data, i, d)
    {
        json_t *idx = json_object_get(d, "index");
        if (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
            (size_t)json_integer_value(idx) >= n)
            return bad_reply(err, "missing or out-of-range index");
        size_t k = (size_t)json_integer_value(idx);
        if (out[k])
            return bad_reply(err, "duplicate index");
        out[k] = json_object_get(d, "embedding");
    }
    return 0;
}

json_t *embed_response_translate(const json_t *native, const struct embed_request *req,
                                 long long *prompt_tokens, struct proxy_error *err)
{
    size_t n = req->n_inputs;
    const json_t **vecs = cm_xcalloc(n ? n : 1, sizeof *vecs);
    json_t *tok = json_object_get(native, "prompt_eval_count");
    if (collect_vectors(native, n, vecs, err) != 0)
        goto fail;
    if (tok && !(json_is_integer(tok) && json_integer_value(tok) >= 0)) {
        bad_reply(err, "prompt_eval_count is not a count");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (!vector_ok(vecs[i])) {
            bad_reply(err, "an embedding is not an array of float-range numbers");
            goto fail;
        }
    }
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_pack("{s:s, s:I}", "object", "embedding", "index", (json_int_t)i);
        json_object_set_new(e, "embedding",
                            req->base64 ? vector_base64(vecs[i]) : json_deep_copy(vecs[i]));
        json_array_append_new(data, e);
    }
    free(vecs);
    *prompt_tokens = tok ? (long long)json_integer_value(tok) : 0;
    return json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data, "model",
                     req->model, "usage", "prompt_tokens", (json_int_t)*prompt_tokens,
                     "total_tokens", (json_int_t)*prompt_tokens);
fail:
    free(vecs);
    return NULL;
}

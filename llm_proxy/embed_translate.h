/*
 * embed_translate: OpenAI /v1/embeddings <-> Ollama native /api/embed.
 *
 * Pure functions, no I/O. All inputs go to the upstream in one call.
 * encoding_format "base64" is the little-endian float32 bytes, base64
 * encoded (what the official SDKs request by default and decode).
 *
 * Ownership: returned json_t* are new references; struct embed_request owns
 * its members (embed_request_deinit).
 */
#ifndef EMBED_TRANSLATE_H
#define EMBED_TRANSLATE_H

#include "proxy_error.h"

#include <jansson.h>
#include <stddef.h>

#define EMBED_MAX_INPUTS 2048

struct embed_request {
    char *model;
    int base64;
    size_t n_inputs;
    json_t *native;
};

int embed_request_translate(const json_t *oai, struct embed_request *out, struct proxy_error *err);
void embed_request_deinit(struct embed_request *req);

/* NULL + err (502) when the upstream reply does not match the request. */
json_t *embed_response_translate(const json_t *native, const struct embed_request *req,
                                 long long *prompt_tokens, struct proxy_error *err);

#endif

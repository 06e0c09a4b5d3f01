/*
 * models_translate: Ollama GET /api/tags -> OpenAI model objects.
 * Pure functions; returned json_t* are new references, inputs borrowed.
 */
#ifndef MODELS_TRANSLATE_H
#define MODELS_TRANSLATE_H

#include <jansson.h>

/* {"object":"list","data":[...]} ([] when nothing is installed). */
json_t *models_list_translate(const json_t *tags);
/* The model whose id matches (a bare name also matches name:latest), or NULL. */
json_t *models_find_translate(const json_t *tags, const char *id);
/* RFC 3339 -> Unix seconds (0 when unparsable). */
long long models_parse_time(const char *rfc3339);

#endif

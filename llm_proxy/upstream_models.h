/*
 * upstream_models: one Ollama host's model names, from an /api/tags
 * (installed) or /api/ps (loaded) reply. Those replies are untrusted input:
 * at most UPSTREAM_MODELS_MAX entries are read, names must be 1..256 bytes
 * without control characters or blanks (others are skipped), and a reply
 * that is not {"models":[...]} leaves the list as it was.
 *
 * Ownership: the list owns its names; upstream_models_clear() frees them.
 */
#ifndef UPSTREAM_MODELS_H
#define UPSTREAM_MODELS_H

#include <stddef.h>

/* Largest accepted reply, entries read, name length. */
#define UPSTREAM_MODELS_MAX_BYTES (4u * 1024 * 1024)
#define UPSTREAM_MODELS_MAX 2048
#define UPSTREAM_MODEL_NAME_MAX 256

struct upstream_models {
    char **names; /* normalised "name:tag" */
    size_t n;
    int known; /* parsed at least once */
};

/* 1 when name may be used as a model name (see above). */
int upstream_model_name_ok(const char *name);
/* 0 and the list replaced, or -1 and the list unchanged. */
int upstream_models_parse(struct upstream_models *l, const char *text, size_t len);
/* 1 when model ("name" means "name:latest") is listed; case-insensitive. */
int upstream_models_has(const struct upstream_models *l, const char *model);
void upstream_models_clear(struct upstream_models *l);

#endif

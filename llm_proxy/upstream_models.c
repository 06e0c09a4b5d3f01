/* upstream_models: a host's model names (see upstream_models.h). */
#include "upstream_models.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void upstream_models_clear(struct upstream_models *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
    l->names = NULL;
    l->n = 0;
}

int upstream_model_name_ok(const char *name)
{
    size_t nl = name ? strlen(name) : 0;
    if (nl == 0 || nl > UPSTREAM_MODEL_NAME_MAX)
        return 0;
    for (const char *c = name; *c; c++)
        if ((unsigned char)*c < 0x21 || *c == 0x7f)
            return 0;
    return 1;
}

/* "name" or "name:tag" -> "name:tag" in buf; 0 when either form is unusable. */
static int normalise(const char *name, char *buf, size_t len)
{
    if (!upstream_model_name_ok(name))
        return 0;
    int n = snprintf(buf, len, "%s%s", name, strchr(name, ':') ? "" : ":latest");
    return n > 0 && n <= UPSTREAM_MODEL_NAME_MAX; /* the stored form is a valid name too */
}

int upstream_models_has(const struct upstream_models *l, const char *model)
{
    char want[UPSTREAM_MODEL_NAME_MAX + 16];
    if (!normalise(model, want, sizeof want))
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (strcasecmp(l->names[i], want) == 0)
            return 1;
    return 0;
}

/* {"models":[{"model"|"name": "..."}, ...]} */
int upstream_models_parse(struct upstream_models *l, const char *text, size_t len)
{
    json_t *j = cm_json_parse(text, len, NULL, 0);
    json_t *models = json_object_get(j, "models");
    if (!json_is_array(models)) {
        json_decref(j);
        return -1;
    }
    size_t cnt = json_array_size(models);
    if (cnt > UPSTREAM_MODELS_MAX)
        cnt = UPSTREAM_MODELS_MAX;
    char **names = cm_xcalloc(cnt ? cnt : 1, sizeof *names);
    size_t n = 0;
    for (size_t i = 0; i < cnt; i++) {
        json_t *m = json_array_get(models, i);
        const char *name = cm_json_str(m, "model");
        if (!name)
            name = cm_json_str(m, "name");
        char buf[UPSTREAM_MODEL_NAME_MAX + 16];
        if (name && normalise(name, buf, sizeof buf))
            names[n++] = cm_xstrdup(buf);
    }
    json_decref(j);
    upstream_models_clear(l);
    l->names = names;
    l->n = n;
    l->known = 1;
    return 0;
}

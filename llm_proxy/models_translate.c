/* models_translate: see models_translate.h. */
#include "models_translate.h"

#include "cm_alloc.h"
#include "cm_json.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

long long models_parse_time(const char *s)
{
    if (!s)
        return 0;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return 0;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    long long t = (long long)timegm(&tm);
    if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        int hh = 0, mm = 0;
        if (sscanf(p + 1, "%2d:%2d", &hh, &mm) == 2)
            t -= sign * (hh * 3600 + mm * 60);
    }
    return t;
}

static json_t *model_object(const json_t *entry, const char *id)
{
    const char *name = cm_json_str(entry, "model");
    if (!name)
        name = cm_json_str(entry, "name");
    if (!id)
        id = name;
    /* owned_by: the namespace ("user" of "user/model"), else "library". */
    char *owner = NULL;
    const char *slash = name ? strrchr(name, '/') : NULL;
    owner = slash ? cm_xstrndup(name, (size_t)(slash - name)) : cm_xstrdup("library");
    json_t *o = json_pack("{s:s, s:s, s:I, s:s}", "id", id ? id : "", "object", "model", "created",
                          (json_int_t)models_parse_time(cm_json_str(entry, "modified_at")),
                          "owned_by", owner);
    free(owner);
    return o;
}

json_t *models_list_translate(const json_t *tags)
{
    json_t *data = json_array();
    json_t *models = json_object_get(tags, "models");
    size_t i;
    json_t *m;
    json_array_foreach(models, i, m)
    {
        if (cm_json_str(m, "model") || cm_json_str(m, "name"))
            json_array_append_new(data, model_object(m, NULL));
    }
    return json_pack("{s:s, s:o}", "object", "list", "data", data);
}

json_t *models_find_translate(const json_t *tags, const char *id)
{
    json_t *models = json_object_get(tags, "models");
    char *with_tag = strchr(id, ':') ? NULL : cm_xasprintf("%s:latest", id);
    json_t *found = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(models, i, m)
    {
        const char *name = cm_json_str(m, "model");
        if (!name)
            name = cm_json_str(m, "name");
        if (name && (strcasecmp(name, id) == 0 || (with_tag && strcasecmp(name, with_tag) == 0))) {
            found = model_object(m, id);
            break;
        }
    }
    free(with_tag);
    return found;
}

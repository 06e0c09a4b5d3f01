/* libFuzzer: upstream_models (an Ollama host's /api/tags or /api/ps reply,
 * untrusted) on hostile input. Invariants: no crash or leak, at most
 * UPSTREAM_MODELS_MAX names kept, every kept name valid, and a rejected
 * reply leaves the previous list as it was. */
#include "upstream_models.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct upstream_models l = {0};
    upstream_models_parse(&l, "{\"models\":[{\"name\":\"seed:1\"}]}", 30);
    int rc = upstream_models_parse(&l, (const char *)data, size);
    if (rc != 0 && (l.n != 1 || !upstream_models_has(&l, "seed:1")))
        abort();
    if (l.n > UPSTREAM_MODELS_MAX)
        abort();
    for (size_t i = 0; i < l.n; i++)
        if (!upstream_model_name_ok(l.names[i]) || !upstream_models_has(&l, l.names[i]))
            abort();
    upstream_models_clear(&l);
    return 0;
}

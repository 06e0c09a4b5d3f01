/* proxy_error: see proxy_error.h. */
#include "proxy_error.h"

#include "cm_http_server.h"
#include "cm_json.h"

#include <stdarg.h>
#include <stdio.h>

void proxy_error_set(struct proxy_error *e, int status, const char *param, const char *code,
                     const char *fmt, ...)
{
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    e->reject_reason = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

const char *proxy_require_model(const json_t *oai, struct proxy_error *err)
{
    const char *model = cm_json_str(oai, "model");
    if (!model || !*model) {
        proxy_error_set(err, 400, "model", "missing_required_parameter",
                        "You must provide a model parameter.");
        return NULL;
    }
    return model;
}

const char *proxy_error_anthropic_type(int status)
{
    return cm_anthropic_error_type(status);
}

json_t *proxy_error_anthropic_json(const struct proxy_error *e)
{
    return json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                     proxy_error_anthropic_type(e->status), "message", e->message);
}

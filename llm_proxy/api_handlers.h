/*
 * api_handlers: the entry points of the Responses API and the Messages API
 * routes (arg = struct proxy *), registered in main.c.
 */
#ifndef API_HANDLERS_H
#define API_HANDLERS_H

#include "proxy.h"

void responses_handle(struct cm_req *r, void *arg);
void messages_handle(struct cm_req *r, void *arg);

#endif

/*
 * memory_api: the memories API on memory_worker's HTTP port.
 *   POST   /v1/memories/search   vector, full-text or hybrid (RRF) search
 *   GET    /v1/memories          newest first, cursor paging
 *   GET    /v1/memories/{id}     one memory (404 when unknown)
 *   DELETE /v1/memories/{id}     a memory and the chunk it was made from
 *   DELETE /v1/users/{user_id}   erasure of everything of a user (fenced)
 * Same access rule as the admin endpoints (worker_http_admin_allowed):
 * Bearer MEMORY_WORKER_API_KEY when set, else loopback clients only.
 *
 * Threads: handlers validate on the loop thread; a search's query is
 * embedded through llm_proxy with the asynchronous client (cm_http_client)
 * on the loop; PostgreSQL and Redis work runs on MEMORY_API_THREADS threads,
 * each with its own connections (never the pipeline's), fed by a bounded
 * FIFO (MEMORY_API_QUEUE; full: 429). So a slow pass never delays a search
 * and a search never holds a pipeline connection.
 *
 * A job's states (struct api_job.state, loop thread except RUNNING):
 *   EMBEDDING --embedding answered or failed--> QUEUED
 *   QUEUED --taken by an API thread--> RUNNING --result--> DONE (replied)
 *   any --client gone--> the reply is dropped (EMBEDDING: cancelled now)
 *
 * Ownership: memory_api_new borrows base, cfg and p (they outlive it).
 */
#ifndef MEMORY_API_H
#define MEMORY_API_H

#include "pipeline.h"
#include "worker_config.h"

struct event_base;
struct cm_http_server;
struct cm_req;

struct memory_api;

/* allowed: the admin access check (replies 403 itself when it refuses). */
typedef int (*memory_api_allowed_cb)(struct cm_req *r, void *arg);

struct memory_api *memory_api_new(struct event_base *base, const struct worker_config *cfg,
                                  struct pipeline *p, memory_api_allowed_cb allowed,
                                  void *allowed_arg);
/* Registers the routes on srv. */
void memory_api_routes(struct memory_api *api, struct cm_http_server *srv);
/* Stops the threads after the queued jobs, waits for every reply. Call
 * after the HTTP server was freed (so every client abort has run). */
void memory_api_free(struct memory_api *api);

#endif

/*
 * cm_http_probe: a blocking HTTP GET that answers "is this URL healthy?"
 * (status 200 within the timeout). For --healthcheck modes and readiness
 * checks run off the event loop; never call it on a loop thread.
 */
#ifndef CM_HTTP_PROBE_H
#define CM_HTTP_PROBE_H

/* 0 when url answers 200 within timeout_ms; else -1 with a reason in err
 * (may be NULL). */
int cm_http_probe(const char *url, long timeout_ms, char *err, unsigned long errlen);

/* "http://<host>:<port>/health", mapping a wildcard listen address
 * (0.0.0.0, ::) to 127.0.0.1. Writes into buf. */
void cm_http_probe_health_url(char *buf, unsigned long len, const char *host, long long port);

/* The --healthcheck mode of both services: probes the local /health of a
 * server listening on host:port; returns the process exit status (0
 * healthy, 1 not) after printing the reason to stderr. */
int cm_http_probe_healthcheck(const char *host, long long port);

#endif

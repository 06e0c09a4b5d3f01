/* cm_http_probe: blocking health probe (see cm_http_probe.h). */
#include "cm_http_probe.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

static size_t discard(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    (void)arg;
    return size * n;
}

int cm_http_probe(const char *url, long timeout_ms, char *err, unsigned long errlen)
{
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc == CURLE_OK && status == 200)
        return 0;
    if (err && errlen)
        snprintf(err, errlen, "%s (HTTP %ld)", curl_easy_strerror(rc), status);
    return -1;
}

void cm_http_probe_health_url(char *buf, unsigned long len, const char *host, long long port)
{
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 || !*host)
        host = "127.0.0.1";
    snprintf(buf, len, "http://%s:%lld/health", host, port);
}

int cm_http_probe_healthcheck(const char *host, long long port)
{
    char url[512], err[256];
    cm_http_probe_health_url(url, sizeof url, host, port);
    if (cm_http_probe(url, 3000, err, sizeof err) != 0) {
        fprintf(stderr, "unhealthy: %s\n", err);
        return 1;
    }
    return 0;
}

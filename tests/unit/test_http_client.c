/* Unit tests of cm_http_client's outgoing headers: values with CR or LF are
 * refused before anything is sent (defence in depth against header
 * injection), and long values reach the wire whole, never truncated. The
 * "server" is a plain loopback socket read by this test. */
#include "cm_http_client.h"
#include "cm_log.h"
#include "unit.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_done(struct cm_hc_req *req, enum cm_hc_result result, long status,
                    struct evbuffer *body, const char *errmsg, void *arg)
{
    (void)req, (void)result, (void)status, (void)body, (void)errmsg, (void)arg;
}

static const struct cm_hc_callbacks cbs = {.on_done = on_done};

static void value_check(void)
{
    CHECK(cm_hc_header_value_ok("abc-123_~!"));
    CHECK(cm_hc_header_value_ok(""));
    CHECK(!cm_hc_header_value_ok("a\r\nX-Evil: 1"));
    CHECK(!cm_hc_header_value_ok("a\nb"));
    CHECK(!cm_hc_header_value_ok("a\rb"));
    CHECK(!cm_hc_header_value_ok(NULL));
}

static void crlf_refused(void)
{
    struct event_base *base = event_base_new();
    struct cm_hc *hc = cm_hc_new(base);
    const char *bad[] = {"rid\r\n\r\nDELETE /api/delete HTTP/1.1", "rid\nX-Evil: 1", "rid\r"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cm_hc_opts o = {.method = "GET", .url = "http://127.0.0.1:9/", .request_id = bad[i]};
        CHECK(cm_hc_start(hc, &o, &cbs, NULL) == NULL);
        CHECK(!cm_hc_refused(hc));
        struct cm_hc_opts b = {.method = "GET", .url = "http://127.0.0.1:9/", .bearer = bad[i]};
        CHECK(cm_hc_start(hc, &b, &cbs, NULL) == NULL);
    }
    CHECK(cm_hc_active(hc) == 0);
    cm_hc_free(hc);
    event_base_free(base);
}

/* Runs the loop until the request head arrived on the listener; returns it. */
static char *receive_head(struct event_base *base, int lfd)
{
    static char head[8192];
    size_t len = 0;
    int cfd = -1;
    head[0] = '\0';
    for (int rounds = 0; rounds < 100000 && !strstr(head, "\r\n\r\n"); rounds++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        struct pollfd p = {cfd >= 0 ? cfd : lfd, POLLIN, 0};
        if (poll(&p, 1, 10) <= 0)
            continue;
        if (cfd < 0) {
            cfd = accept(lfd, NULL, NULL);
            continue;
        }
        ssize_t n = recv(cfd, head + len, sizeof head - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        head[len] = '\0';
    }
    if (cfd >= 0)
        close(cfd);
    return head;
}

static void long_values_whole(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(lfd, 4) == 0);
    getsockname(lfd, (struct sockaddr *)&a, &al);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", ntohs(a.sin_port));
    /* A proxy request id plus a 128-byte WebSocket id: over the 128 bytes
     * the header buffer used to hold. */
    char rid[220];
    memset(rid, 'r', sizeof rid - 1);
    rid[sizeof rid - 1] = '\0';
    rid[sizeof rid - 2] = 'Z';
    char token[300];
    memset(token, 't', sizeof token - 1);
    token[sizeof token - 1] = '\0';

    struct event_base *base = event_base_new();
    struct cm_hc *hc = cm_hc_new(base);
    struct cm_hc_opts o = {
        .method = "GET", .url = url, .request_id = rid, .bearer = token, .connect_timeout_s = 5};
    struct cm_hc_req *req = cm_hc_start(hc, &o, &cbs, NULL);
    CHECK(req != NULL);
    const char *head = receive_head(base, lfd);
    char want[512];
    snprintf(want, sizeof want, "X-Request-Id: %s\r\n", rid);
    CHECK(strstr(head, want) != NULL);
    snprintf(want, sizeof want, "Authorization: Bearer %s\r\n", token);
    CHECK(strstr(head, want) != NULL);
    if (req)
        cm_hc_cancel(req);
    cm_hc_free(hc);
    event_base_free(base);
    close(lfd);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    cm_log_init("test_http_client", CM_LOG_ERROR, CM_LOG_TEXT);
    static const struct unit_test tests[] = {
        {"header value check", value_check},
        {"CR/LF in X-Request-Id or bearer: refused, nothing sent", crlf_refused},
        {"long header values reach the wire whole", long_values_whole},
    };
    int rc = unit_run(tests, sizeof tests / sizeof tests[0]);
    curl_global_cleanup();
    return rc;
}

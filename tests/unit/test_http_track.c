/* Unit tests of the request framing rules (cm_http_framing.c) and of the
 * tracker that enforces them ahead of evhttp (cm_http_track.c): the strict
 * value parsers, the rewrites evhttp needs, and that no input leaves the
 * tracker untracked while a body may be read - it either follows the body
 * or has made evhttp refuse the request (REFUSED, with the reason). Every
 * input is also fed one byte at a time: the outcome must not depend on how
 * the bytes arrive. */
#include "cm_http_framing.h"
#include "cm_http_track.h"
#include "unit.h"

#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>

struct outcome {
    enum cm_http_track_state state;
    const char *code; /* refusal code, NULL for none */
    size_t body;
    char bytes[512]; /* the input as evhttp will read it */
    size_t len;
};

static int admit_budget = 1 << 20;
static long long admitted;

static int admit(void *arg, long long n)
{
    (void)arg;
    if (n > admit_budget)
        return -1;
    admitted += n;
    return 0;
}

static void run(const char *in, size_t len, size_t piece, struct outcome *o)
{
    struct cm_http_track t;
    cm_http_track_init(&t);
    t.admit = admit;
    struct evbuffer *buf = evbuffer_new();
    o->body = 0;
    for (size_t off = 0; off < len; off += piece) {
        size_t n = len - off < piece ? len - off : piece;
        evbuffer_add(buf, in + off, n);
        o->body += cm_http_track_feed(&t, buf, n);
    }
    o->state = t.state;
    o->code = t.refused ? t.refused->code : NULL;
    o->len = evbuffer_get_length(buf);
    CHECK(o->len < sizeof o->bytes);
    evbuffer_remove(buf, o->bytes, sizeof o->bytes - 1);
    o->bytes[o->len] = '\0';
    evbuffer_free(buf);
}

/* 1 when a line as evhttp reads it (up to LF, one CR before it dropped)
 * still holds a CR: evhttp refuses such a field line. */
static int has_line_with_cr(const struct outcome *o)
{
    size_t start = 0;
    for (size_t i = 0; i < o->len; i++) {
        if (o->bytes[i] != '\n')
            continue;
        size_t end = i > start && o->bytes[i - 1] == '\r' ? i - 1 : i;
        if (memchr(o->bytes + start, '\r', end - start))
            return 1;
        start = i + 1;
    }
    return 0;
}

/* Runs whole and byte by byte; both must agree. */
static void track(const char *in, size_t len, struct outcome *o)
{
    struct outcome bytewise;
    run(in, len, len ? len : 1, o);
    run(in, len, 1, &bytewise);
    CHECK(o->state == bytewise.state);
    CHECK(o->body == bytewise.body);
    CHECK((o->code == NULL) == (bytewise.code == NULL));
    if (o->code && bytewise.code)
        CHECK_STR(o->code, bytewise.code);
    CHECK(o->len == bytewise.len && memcmp(o->bytes, bytewise.bytes, o->len) == 0);
}

#define TRACK(lit, o) track(lit, sizeof lit - 1, o)

static void length_parser(void)
{
    long long v = -1;
    CHECK(cm_http_length_parse("65", &v) == 0 && v == 65);
    CHECK(cm_http_length_parse("00065", &v) == 0 && v == 65); /* 1*DIGIT */
    CHECK(cm_http_length_parse(" 65\t", &v) == 0 && v == 65);
    CHECK(cm_http_length_parse("0", &v) == 0 && v == 0);
    CHECK(cm_http_length_parse("1000000000000000000", &v) == 0);
    CHECK(cm_http_length_parse("1000000000000000001", &v) != 0);
    CHECK(cm_http_length_parse("99999999999999999999999", &v) != 0);
    const char *bad[] = {"+65", "-0", "", " ", "6 5", "65,65", "0x41", "65a", "6\r5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(cm_http_length_parse(bad[i], &v) != 0);
}

static int chunk_line(const char *s, long long *v)
{
    struct cm_http_chunk_size c;
    cm_http_chunk_size_init(&c);
    for (; *s; s++)
        if (cm_http_chunk_size_feed(&c, *s) != 0)
            return -1;
    *v = c.value;
    return c.state == 0 ? -1 : 0;
}

static void chunk_size_parser(void)
{
    long long v;
    CHECK(chunk_line("41", &v) == 0 && v == 0x41);
    CHECK(chunk_line("00aF", &v) == 0 && v == 0xaf);
    CHECK(chunk_line("5;name=\"v\"", &v) == 0 && v == 5);
    CHECK(chunk_line("5 ; x", &v) == 0 && v == 5);
    CHECK(chunk_line("5\t;x", &v) == 0 && v == 5);
    CHECK(chunk_line("fffffffffffffff", &v) == 0);
    const char *bad[] = {"0x41", "+41", "-0", " 41", "   ", ";ext", "", "4g", "ffffffffffffffff"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(chunk_line(bad[i], &v) != 0);
}

static void framing_check(void)
{
    struct evkeyvalq h;
    const char *code;
    char msg[160];
    TAILQ_INIT(&h);
    evhttp_add_header(&h, "Transfer-Encoding", "chunked");
    CHECK(cm_http_framing_check(&h, 1, 0, &code, msg, sizeof msg) == 0);
    CHECK(cm_http_framing_check(&h, 1, 1, &code, msg, sizeof msg) != 0); /* HTTP/1.0 */
    CHECK_STR(code, "invalid_transfer_encoding");
    evhttp_clear_headers(&h);
    evhttp_add_header(&h, "Content-Length", "+5");
    CHECK(cm_http_framing_check(&h, 1, 0, &code, msg, sizeof msg) != 0);
    CHECK_STR(code, "invalid_content_length");
    evhttp_clear_headers(&h);
    evhttp_add_header(&h, "Content-Length", "005");
    CHECK(cm_http_framing_check(&h, 1, 1, &code, msg, sizeof msg) == 0);
    evhttp_clear_headers(&h);
}

static void follows_bodies(void)
{
    struct outcome o;
    /* Content-Length, then a pipelined request: all 5 body bytes, nothing
     * else, back in HEAD. */
    admitted = 0;
    TRACK("POST /x HTTP/1.1\r\nContent-Length: 005\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n", &o);
    CHECK(o.state == CM_TRACK_HEAD && o.body == 5 && o.code == NULL);
    CHECK(admitted == 10); /* whole and byte by byte: 5 each, announced at the head */
    /* Chunked with extensions: ';' and a tab after the digits become spaces
     * (evhttp's strtoll needs a space), nothing in the data changes. */
    TRACK("POST /x HTTP/1.1\r\nTransfer-Encoding:\tChunked \r\n\r\n"
          "5;a=\";\"\r\nh;l;o\r\n3\t;b\r\nabc\r\n0;z\r\nX-T: t;1\r\n\r\n",
          &o);
    CHECK(o.state == CM_TRACK_HEAD && o.body == 8 && o.code == NULL);
    CHECK(memcmp(o.bytes + 18, "Transfer-Encoding: Chunked ", 27) == 0);
    CHECK(strstr(o.bytes, "5 a=\" \"\r\nh;l;o\r\n3  b\r\nabc\r\n0 z\r\nX-T: t;1") != NULL);
    /* No body for HEAD, a body for GET (evhttp reads it; cm_http_framing
     * refuses it afterwards). */
    TRACK("HEAD /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n", &o);
    CHECK(o.state == CM_TRACK_HEAD && o.body == 0);
    TRACK("GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", &o);
    CHECK(o.state == CM_TRACK_FIXED && o.body == 3);
    /* A long padded Transfer-Encoding (once: "stop tracking") is followed. */
    char in[600];
    int n = snprintf(in, sizeof in,
                     "POST / HTTP/1.1\r\nTransfer-Encoding:%300schunked\r\n\r\n3\r\n", "");
    track(in, (size_t)n, &o);
    CHECK(o.state == CM_TRACK_CHUNK_DATA && o.code == NULL);
}

struct refused_case {
    const char *in;
    size_t len;
    const char *code;
};
#define CASE(lit, code)                                                                            \
    {                                                                                              \
        lit, sizeof lit - 1, code                                                                  \
    }

static void refuses(void)
{
    static const struct refused_case cases[] = {
        CASE("POST / HTTP/1.1\r\nX: a\r\n b\r\nContent-Length: 9\r\n\r\n", "obsolete_line_folding"),
        CASE("POST / HTTP/1.1\r\nX: a\r\n\t\r\nContent-Length: 9\r\n\r\n", "obsolete_line_folding"),
        CASE("POST / HTTP/1.1\r\n \n\r\n", "obsolete_line_folding"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\0x\r\n\r\n", "invalid_header"),
        CASE("POST / HTTP/1.1\r\n\0\r\nContent-Length: 9\r\n\r\n", "invalid_header"),
        CASE("POST / HTTP/1.1\r\nX: a\rb\r\n\r\n", "invalid_header"),
        CASE("POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n", "invalid_header"),
        CASE("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "invalid_content_length"),
        CASE("POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n", "invalid_content_length"),
        CASE("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", "invalid_content_length"),
        CASE("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
             "invalid_content_length"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
             "invalid_transfer_encoding"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n", "invalid_transfer_encoding"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", "invalid_transfer_encoding"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x41\r\n", "invalid_chunk_size"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+41\r\n", "invalid_chunk_size"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n   \r\n", "invalid_chunk_size"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n", "invalid_chunk_size"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r5\r\n", "invalid_chunk_size"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\rx\r\n", "invalid_chunk_size"),
        CASE("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX: \0\r\n\r\n",
             "invalid_header"), /* in a trailer */
        CASE("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", "overloaded"),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct outcome o;
        track(cases[i].in, cases[i].len, &o);
        if (o.state != CM_TRACK_REFUSED || !o.code || strcmp(o.code, cases[i].code) != 0)
            fprintf(stderr, "case %zu: state %d code %s\n", i, o.state, o.code ? o.code : "-");
        CHECK(o.state == CM_TRACK_REFUSED);
        CHECK(o.code && strcmp(o.code, cases[i].code) == 0);
        CHECK(o.body == 0 || strstr(cases[i].in, "1\r\na") != NULL);
        /* What evhttp reads: a field line now holds a CR that neither ends
         * it nor starts a continuation; a chunk-size line a 'g'. */
        if (strcmp(cases[i].code, "invalid_chunk_size") == 0)
            CHECK(memchr(o.bytes, 'g', o.len) != NULL);
        else
            CHECK(has_line_with_cr(&o));
        CHECK(memchr(o.bytes, '\0', o.len) == NULL);
    }
}

static void refused_line_is_bounded(void)
{
    /* A refused line that never ends is cut at CM_TRACK_MAX_CHUNK_LINE. */
    struct cm_http_track t;
    cm_http_track_init(&t);
    struct evbuffer *buf = evbuffer_new();
    const char head[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x";
    evbuffer_add(buf, head, sizeof head - 1);
    cm_http_track_feed(&t, buf, sizeof head - 1);
    CHECK(t.state == CM_TRACK_REFUSED && !t.chunk_line_too_long);
    char junk[1024];
    memset(junk, 'a', sizeof junk);
    for (int i = 0; i < 8; i++) {
        evbuffer_add(buf, junk, sizeof junk);
        cm_http_track_feed(&t, buf, sizeof junk);
    }
    CHECK(t.chunk_line_too_long);
    evbuffer_free(buf);
}

UNIT_MAIN({"length_parser", length_parser}, {"chunk_size_parser", chunk_size_parser},
          {"framing_check", framing_check}, {"follows_bodies", follows_bodies},
          {"refuses", refuses}, {"refused_line_is_bounded", refused_line_is_bounded})

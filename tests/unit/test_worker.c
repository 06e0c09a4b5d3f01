/* Unit tests of memory_worker's pure parts: messages, chunking, backoff, num_ctx. */
#include "chunker.h"
#include "llm_client.h"
#include "message.h"
#include "pipeline.h"
#include "unit.h"

#include <math.h>
#include <stdlib.h>

static void parse_messages(void)
{
    struct message m;
    char err[200];
    const char *ok = "{\"role\":\"assistant\",\"content\":\"hi\",\"room_id\":42,\"timestamp\":"
                     "\"2024-05-27T10:00:00+02:00\",\"message_id\":\"x\",\"extra\":[1]}";
    CHECK(message_parse(ok, strlen(ok), 1 << 20, &m, err, sizeof err) == 0);
    CHECK_STR(m.role, "assistant");
    CHECK_STR(m.room_id, "42");
    CHECK_STR(m.message_id, "x");
    CHECK(m.ts == 1716796800);
    message_deinit(&m);
    const char *no_role = "{\"content\":\"x\",\"timestamp\":1716800000.5}";
    CHECK(message_parse(no_role, strlen(no_role), 1 << 20, &m, err, sizeof err) == 0);
    CHECK_STR(m.role, "user");
    CHECK(m.ts == 1716800000.5);
    message_deinit(&m);
    const char *bad[] = {"nope",
                         "[1]",
                         "{\"role\":\"user\"}",
                         "{\"content\":\"\"}",
                         "{\"content\":5}",
                         "{\"content\":\"x\",\"role\":7}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(message_parse(bad[i], strlen(bad[i]), 1 << 20, &m, err, sizeof err) == -1);
        CHECK(err[0] != '\0');
    }
    CHECK(message_parse(ok, strlen(ok), 10, &m, err, sizeof err) == -1);
    CHECK(strstr(err, "MAX_MESSAGE_BYTES") != NULL);
    CHECK(message_parse_time("2024-05-27T10:00:00Z") == 1716804000);
    CHECK(message_parse_time("2024-05-27T10:00:00.250Z") == 1716804000.25);
    CHECK(message_parse_time("yesterday") < 0);
}

static struct message mk(const char *content, const char *room)
{
    struct message m = {0};
    m.content = (char *)content;
    m.raw = (char *)content;
    m.raw_len = strlen(content);
    m.room_id = (char *)room;
    m.ts = -1;
    return m;
}

static void chunking(void)
{
    struct message msgs[7] = {mk("a1", "A"), mk("b1", "B"),           mk("a2", "A"), mk("a3", "A"),
                              mk("b2", "B"), mk("xxxxxxxxxxxx", "A"), mk("n1", NULL)};
    size_t n;
    struct chunk *c = chunker_split(msgs, 7, 2, 10, "u", "claim1", &n);
    /* Rooms in order of first appearance: A(a1,a2,a3,long), B(b1,b2), none(n1). */
    CHECK(n == 5);
    CHECK(c[0].count == 2 && strcmp(c[0].msgs[0].content, "a1") == 0 &&
          strcmp(c[0].msgs[1].content, "a2") == 0);
    CHECK(c[1].count == 1 && strcmp(c[1].msgs[0].content, "a3") == 0);
    CHECK(c[2].count == 1 && strcmp(c[2].msgs[0].content, "xxxxxxxxxxxx") == 0);
    CHECK(c[3].count == 2 && strcmp(c[3].room_id, "B") == 0);
    CHECK(c[4].count == 1 && c[4].room_id == NULL);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < c[i].count; k++)
            CHECK((c[i].room_id == NULL) == (c[i].msgs[k].room_id == NULL));
    /* Same claim -> same hashes; another claim -> different. */
    struct message again[7] = {mk("a1", "A"), mk("b1", "B"),           mk("a2", "A"), mk("a3", "A"),
                               mk("b2", "B"), mk("xxxxxxxxxxxx", "A"), mk("n1", NULL)};
    size_t n2;
    struct chunk *c2 = chunker_split(again, 7, 2, 10, "u", "claim1", &n2);
    CHECK(n2 == n && strcmp(c[0].hash, c2[0].hash) == 0 && strcmp(c[4].hash, c2[4].hash) == 0);
    chunker_free(c2);
    struct message other[7] = {mk("a1", "A"), mk("b1", "B"),           mk("a2", "A"), mk("a3", "A"),
                               mk("b2", "B"), mk("xxxxxxxxxxxx", "A"), mk("n1", NULL)};
    c2 = chunker_split(other, 7, 2, 10, "u", "claim2", &n2);
    CHECK(strcmp(c[0].hash, c2[0].hash) != 0);
    CHECK(strcmp(c[0].hash, c[1].hash) != 0);
    chunker_free(c2);
    chunker_free(c);
}

static void backoff_and_ctx(void)
{
    CHECK(pipeline_backoff(5, 600, 1, 1.0) == 5);
    CHECK(pipeline_backoff(5, 600, 1, 0.0) == 2.5);
    CHECK(pipeline_backoff(5, 600, 3, 1.0) == 20);
    CHECK(pipeline_backoff(5, 600, 30, 1.0) == 600);
    CHECK(pipeline_backoff(5, 600, 30, 0.0) == 300);
    CHECK(llm_num_ctx(100, 4096, 32768) == 4096);
    CHECK(llm_num_ctx(12000 * 3, 4096, 32768) == 16384);
    CHECK(llm_num_ctx(10000000, 4096, 32768) == 32768);
}

UNIT_MAIN(T(parse_messages), T(chunking), T(backoff_and_ctx))

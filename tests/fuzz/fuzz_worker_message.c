/* libFuzzer: memory_worker's Redis element parsing, chunking and hashing,
 * the stored-array round trip, user-id checks and escaping, and
 * thinking-residue stripping. Elements are separated by '\n'. */
#include "chunker.h"
#include "cm_think.h"
#include "message.h"
#include "user_id.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct message msgs[64];
    size_t n = 0;
    const char *p = (const char *)data, *end = p + size;
    while (p < end && n < 64) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char err[200];
        if (message_parse(p, len, 4096, &msgs[n], err, sizeof err) == 0)
            n++;
        (void)user_id_problem(p, len);
        free(user_id_escape(p, len));
        p += len + 1;
    }
    size_t nc;
    struct chunk *c = chunker_split(msgs, n, 3, 200, "user", "claim", &nc);
    chunker_free(c);
    /* What is stored with a chunk must read back. */
    char *json = message_array_json(msgs, n);
    struct message *back;
    size_t nb;
    char err[300];
    if (message_array_parse(json, strlen(json), &back, &nb, err, sizeof err) != 0 || nb != n)
        __builtin_trap();
    message_array_free(back, nb);
    free(json);
    for (size_t i = 0; i < n; i++)
        message_deinit(&msgs[i]);

    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    free(cm_think_strip_residue(text));
    (void)message_parse_time(text);
    free(text);
    return 0;
}

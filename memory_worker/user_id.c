/* user_id: validation and log-safe escaping of user ids (see user_id.h). */
#include "user_id.h"

#include "cm_alloc.h"

#include <stdio.h>
#include <string.h>

int user_id_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + n >= len)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n + 1;
    }
    return 1;
}

const char *user_id_problem(const char *id, size_t len)
{
    if (len == 0)
        return "empty user id";
    if (len > USER_ID_MAX)
        return "user id longer than 256 bytes";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c < 0x20 || c == 0x7f)
            return "user id contains a NUL or control byte";
    }
    if (!user_id_utf8_valid(id, len))
        return "user id is not valid UTF-8";
    return NULL;
}

char *user_id_escape(const char *id, size_t len)
{
    size_t shown = len > 120 ? 120 : len;
    char *out = cm_xmalloc(shown * 4 + 4);
    size_t o = 0;
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c == '\\') {
            out[o++] = '\\';
            out[o++] = '\\';
        } else if (c >= 0x21 && c < 0x7f && c != '"' && c != '=') {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
        }
    }
    if (shown < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

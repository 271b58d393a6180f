/* Unit tests for host/scrub.c: an API key echoed back by a server, as it is and in
 * each encoding a server or serializer might use, never survives a scrub, and the
 * text around it is left exactly as it was. */
#include <stdlib.h>
#include <string.h>

#include "scrub.h"
#include "tap.h"

#define KEY "sk-test-0123456789abcdefXYZ"

/* Scrub a copy of in and compare with want. */
static int scrubs_to(const char *in, const char *want)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", in);
    scrub_secret_str(buf, KEY);
    if (strcmp(buf, want) != 0) {
        printf("# got  '%s'\n# want '%s'\n", buf, want);
        return 0;
    }
    return 1;
}

static void test_literal(void)
{
    CHECK(scrubs_to("POST x: Bearer " KEY " and again " KEY ".", "POST x: Bearer *** and again ***."));
    CHECK(scrubs_to("nothing here", "nothing here"));
    char t[64] = "Bearer " KEY;
    CHECK(scrub_secret_str(t, NULL) == 0 && scrub_secret_str(t, "") == 0);
    CHECK_STR(t, "Bearer " KEY);
}

static void test_json_escapes(void)
{
    /* The report's case: "Bearer" escaped, and the key too. */
    CHECK(scrubs_to("{\"m\":\"You sent \\u0042\\u0065\\u0061rer \\u0073\\u006b-test-0123456789abcdefXYZ\"}",
                    "{\"m\":\"You sent \\u0042\\u0065\\u0061rer ***\"}"));
    /* Every character escaped, upper-case hex. */
    char all[512] = "{\"m\":\"";
    for (const char *k = KEY; *k; k++)
        snprintf(all + strlen(all), sizeof all - strlen(all), "\\u%04X", (unsigned)*k);
    strcat(all, "\"}");
    CHECK(scrubs_to(all, "{\"m\":\"***\"}"));
    /* JSON inside a JSON string: the escapes are themselves escaped. */
    CHECK(scrubs_to("{\"e\":\"{\\\"k\\\":\\\"\\\\u0073k-test-0123456789abcdefXYZ\\\"}\"}",
                    "{\"e\":\"{\\\"k\\\":\\\"***\\\"}\"}"));
    /* Escapes that look like the key but are not: left alone, byte for byte. */
    CHECK(scrubs_to("\\u0073k-test-0123456789abcdefXYQ \\u12 \\q %zz &#;",
                    "\\u0073k-test-0123456789abcdefXYQ \\u12 \\q %zz &#;"));
}

static void test_other_encodings(void)
{
    CHECK(scrubs_to("key=sk%2Dtest%2d0123456789abcdefXYZ&x=1", "key=***&x=1"));
    CHECK(scrubs_to("<p>&#115;&#x6B;-test-0123456789abcdefXYZ</p>", "<p>***</p>"));
    CHECK(scrubs_to("b'\\x73k-test-0123456789abcdef\\x58YZ'", "b'***'"));
    CHECK(scrubs_to("mixed: s\\u006b%2Dtest-0123&#52;56789abcdefXYZ!", "mixed: ***!"));
    /* A header echoed in base64 (Basic auth of user:KEY; the key at another offset). */
    char b[256] = "Authorization: Basic dXNlcjpzay10ZXN0LTAxMjM0NTY3ODlhYmNkZWZYWVo=";
    scrub_secret_str(b, KEY);
    CHECK(!strstr(b, "LTAxMjM0NTY3ODlhYmNkZWZY") && strstr(b, "***"));
    char c[256] = "eHNrLXRlc3QtMDEyMzQ1Njc4OWFiY2RlZlhZWiE=";
    scrub_secret_str(c, KEY);
    CHECK(!strstr(c, "MDEyMzQ1Njc4OWFiY2RlZl") && strstr(c, "***"));
    /* A key with a '/' that JSON may write as "\/". */
    char d[64] = "{\"k\":\"ab\\/cd\\/efgh\"}";
    scrub_secret_str(d, "ab/cd/efgh");
    CHECK_STR(d, "{\"k\":\"***\"}");
}

static void test_lengths(void)
{
    /* Binary text with NUL bytes: the length, not strlen, bounds it. */
    char bin[64];
    size_t n = 0;
    memcpy(bin, "a\0b", 3);
    n = 3;
    memcpy(bin + n, KEY, strlen(KEY));
    n += strlen(KEY);
    bin[n++] = '\0';
    bin[n++] = 'z';
    CHECK(scrub_secret(bin, &n, KEY) > 0);
    CHECK(n == 8 && memcmp(bin, "a\0b***\0z", 8) == 0);
    /* Secrets shorter than "***" are starred one for one: the text never grows. */
    char s[16] = "xabxab";
    scrub_secret_str(s, "ab");
    CHECK_STR(s, "x**x**");
}

/* Copies far apart in a text longer than one window (1 MiB), one across the window
 * boundary, escaped. */
static void test_long_text(void)
{
    size_t n = 3u << 20;
    char *big = malloc(n + 1);
    if (!big) {
        CHECK(0);
        return;
    }
    memset(big, 'a', n);
    big[n] = '\0';
    const char *esc = "\\u0073\\u006b-test-0123456789abcdefXYZ";
    size_t el = strlen(esc);
    size_t at[3] = {10, (1u << 20) - 20, n - el - 5};
    for (int i = 0; i < 3; i++)
        memcpy(big + at[i], esc, el);
    size_t len = n;
    CHECK(scrub_secret(big, &len, KEY) > 0);
    CHECK(len == n - 3 * (el - 3) && strlen(big) == len);
    CHECK(!strstr(big, "0123456789abcdef") && !strstr(big, "\\u0073"));
    free(big);
}

int main(void)
{
    RUN(test_literal);
    RUN(test_json_escapes);
    RUN(test_other_encodings);
    RUN(test_lengths);
    RUN(test_long_text);
    return tap_done();
}

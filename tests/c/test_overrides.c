/* test_overrides.c — the key=value parser: types, quoting, and every malformed form
 * a user can type, each with a message that names the setting. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "overrides.h"
#include "tap.h"

static ov_item parse_ok(const char *arg)
{
    ov_item it;
    char err[256] = "";
    if (ov_parse(arg, &it, err, sizeof err) != 0) {
        printf("# unexpected error for '%s': %s\n", arg, err);
        memset(&it, 0, sizeof it);
        it.type = (ov_type)-1;
    }
    return it;
}

static void test_types(void)
{
    ov_item it = parse_ok("lr=1e-4");
    CHECK(it.type == OV_FLOAT && it.d == 1e-4);
    CHECK_STR(it.key, "lr");
    ov_free(&it);
    it = parse_ok("steps=200");
    CHECK(it.type == OV_INT && it.i == 200);
    ov_free(&it);
    it = parse_ok("big=9223372036854775807");
    CHECK(it.type == OV_INT && it.i == INT64_MAX);
    ov_free(&it);
    it = parse_ok("bigger=9223372036854775808"); /* does not fit: a float, as in Lua */
    CHECK(it.type == OV_FLOAT);
    ov_free(&it);
    it = parse_ok("neg=-3");
    CHECK(it.type == OV_INT && it.i == -3);
    ov_free(&it);
    it = parse_ok("x=.5");
    CHECK(it.type == OV_FLOAT && it.d == 0.5);
    ov_free(&it);
    it = parse_ok("x=3.0");
    CHECK(it.type == OV_FLOAT && it.d == 3.0);
    ov_free(&it);
    it = parse_ok("flag=true");
    CHECK(it.type == OV_BOOL && it.b == 1);
    ov_free(&it);
    it = parse_ok("flag=false");
    CHECK(it.type == OV_BOOL && it.b == 0);
    ov_free(&it);
    it = parse_ok("teacher=nil");
    CHECK(it.type == OV_NIL);
    ov_free(&it);
    it = parse_ok("model=builtin:tiny");
    CHECK(it.type == OV_STRING);
    CHECK_STR(it.s, "builtin:tiny");
    ov_free(&it);
    it = parse_ok("url=http://127.0.0.1:8080/v1?a=b");
    CHECK(it.type == OV_STRING);
    CHECK_STR(it.s, "http://127.0.0.1:8080/v1?a=b"); /* only the first '=' splits */
    ov_free(&it);
    it = parse_ok("x=inf"); /* not a finite number: stays a string */
    CHECK(it.type == OV_STRING);
    ov_free(&it);
    it = parse_ok("x=0x10");
    CHECK(it.type == OV_STRING);
    ov_free(&it);
    it = parse_ok("opt.inner_2=1");
    CHECK_STR(it.key, "opt.inner_2");
    ov_free(&it);
}

static void test_quoted(void)
{
    ov_item it = parse_ok("name=\"123\"");
    CHECK(it.type == OV_STRING);
    CHECK_STR(it.s, "123");
    ov_free(&it);
    it = parse_ok("name=\"\"");
    CHECK(it.type == OV_STRING && it.slen == 0);
    ov_free(&it);
    it = parse_ok("name=\"say \\\"hi\\\" \\\\ ok\"");
    CHECK_STR(it.s, "say \"hi\" \\ ok");
    ov_free(&it);
    it = parse_ok("name=\"true\"");
    CHECK(it.type == OV_STRING);
    CHECK_STR(it.s, "true");
    ov_free(&it);
}

static void test_malformed(void)
{
    static const struct {
        const char *arg, *want;
    } bad[] = {
        {"=3", "malformed setting '=3': empty key"},
        {"lr=", "malformed setting 'lr=': no value"},
        {"1lr=3", "a key starts with a letter"},
        {"a..b=1", "empty part in a dotted key"},
        {"a.=1", "key ends with '.'"},
        {".a=1", "empty part in a dotted key"},
        {"a-b=1", "only letters, digits"},
        {"name=\"abc", "unterminated quoted string"},
        {"name=\"a\"b\"", "unescaped '\"' inside quotes"},
        {"name=\"abc\\\"", "unterminated quoted string"},
        {"noequals", "expected key=value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ov_item it;
        char err[256] = "";
        int rc = ov_parse(bad[i].arg, &it, err, sizeof err);
        if (rc == 0 || !strstr(err, bad[i].want)) {
            printf("# '%s' gave rc=%d err='%s', want '%s'\n", bad[i].arg, rc, err, bad[i].want);
            CHECK(0);
        }
        if (rc == 0)
            ov_free(&it);
    }
}

static void test_random_bytes_never_crash(void)
{
    /* Random printable and non-printable arguments: parse or fail cleanly; a parsed
     * integer prints back to the same digits. */
    uint64_t s = 42;
    char arg[40];
    for (int i = 0; i < 100000; i++) {
        size_t n = 1 + (s % 30);
        for (size_t k = 0; k < n; k++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            static const char alphabet[] = "ab_.=\"\\019e-+ .x\t";
            arg[k] = (s >> 60) < 12 ? alphabet[(s >> 33) % (sizeof alphabet - 1)]
                                    : (char)(1 + (s >> 40) % 255);
        }
        arg[n] = '\0';
        ov_item it;
        char err[256];
        if (ov_parse(arg, &it, err, sizeof err) == 0) {
            CHECK(it.key && strlen(it.key) > 0);
            if (it.type == OV_INT) {
                char back[32];
                snprintf(back, sizeof back, "%lld", it.i);
                const char *v = strchr(arg, '=') + 1;
                CHECK(strtoll(v, NULL, 10) == it.i);
            }
            ov_free(&it);
        } else {
            CHECK(strlen(err) > 0);
        }
    }
}

static void test_distance(void)
{
    CHECK(ov_distance("lrr", "lr") == 1);
    CHECK(ov_distance("setps", "steps") == 1); /* a swap counts once */
    CHECK(ov_distance("model", "model") == 0);
    CHECK(ov_distance("", "abc") == 3);
    CHECK(ov_distance("LR", "lr") == 0);
}

int main(void)
{
    RUN(test_types);
    RUN(test_quoted);
    RUN(test_malformed);
    RUN(test_random_bytes_never_crash);
    RUN(test_distance);
    return tap_done();
}

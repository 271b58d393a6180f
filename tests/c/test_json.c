/* test_json.c — the JSON core (json.c) and the Lua bridge (ljson.c): exactness of
 * numbers, escaping, UTF-8, errors with offsets, depth and cycle limits, and round
 * trips of random values. */
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lrl.h"
#include "tap.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next_u64(void)
{
    /* splitmix64: deterministic, so a failure reproduces */
    uint64_t z = (rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void test_double_shortest_roundtrip(void)
{
    jbuf b;
    jbuf_init(&b);
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint64_t bits = next_u64();
        double d;
        memcpy(&d, &bits, sizeof d);
        if (!isfinite(d))
            continue;
        b.len = 0;
        CHECK(json_write_double(&b, d) == 0);
        const char *s = jbuf_cstr(&b);
        double back = strtod(s, NULL);
        if (memcmp(&back, &d, sizeof d) != 0 && bad++ < 5)
            printf("# %s does not read back as %.17g\n", s, d);
    }
    CHECK(bad == 0);
    /* shortest: 0.1 is "0.1", not 0.10000000000000001 */
    b.len = 0;
    json_write_double(&b, 0.1);
    CHECK_STR(jbuf_cstr(&b), "0.1");
    b.len = 0;
    json_write_double(&b, 3.0);
    CHECK_STR(jbuf_cstr(&b), "3.0");
    b.len = 0;
    json_write_double(&b, -0.0);
    CHECK_STR(jbuf_cstr(&b), "-0.0");
    b.len = 0;
    json_write_double(&b, 1e300);
    CHECK_STR(jbuf_cstr(&b), "1e+300");
    jbuf_free(&b);
}

static void test_int_extremes(void)
{
    jbuf b;
    jbuf_init(&b);
    json_write_int(&b, INT64_MIN);
    CHECK_STR(jbuf_cstr(&b), "-9223372036854775808");
    b.len = 0;
    json_write_int(&b, INT64_MAX);
    CHECK_STR(jbuf_cstr(&b), "9223372036854775807");
    jbuf_free(&b);

    size_t pos = 0;
    int is_int;
    long long iv;
    double dv;
    const char *why;
    const char *s = "-9223372036854775808";
    CHECK(json_scan_number(s, strlen(s), &pos, &is_int, &iv, &dv, &why) == 0);
    CHECK(is_int && iv == INT64_MIN);
    s = "9223372036854775808"; /* one past: becomes a float */
    pos = 0;
    CHECK(json_scan_number(s, strlen(s), &pos, &is_int, &iv, &dv, &why) == 0);
    CHECK(!is_int && dv == 9223372036854775808.0);
    s = "012";
    pos = 0;
    CHECK(json_scan_number(s, strlen(s), &pos, &is_int, &iv, &dv, &why) == JSON_ESYNTAX);
    s = "1.";
    pos = 0;
    CHECK(json_scan_number(s, strlen(s), &pos, &is_int, &iv, &dv, &why) == JSON_ESYNTAX);
}

static void test_utf8_validation(void)
{
    static const struct {
        const char *s;
        size_t ok;
    } cases[] = {
        {"\x41", 1},           {"\xC3\xA9", 2},      {"\xE2\x82\xAC", 3},
        {"\xF0\x9F\x98\x80", 4}, {"\xC0\x80", 0},      /* overlong NUL */
        {"\xE0\x80\x80", 0},   /* overlong */         {"\xED\xA0\x80", 0}, /* surrogate */
        {"\xF4\x90\x80\x80", 0}, /* > U+10FFFF */     {"\x80", 0},
        {"\xC3", 0},           /* truncated */        {"\xFF", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].s);
        if (json_utf8_len((const unsigned char *)cases[i].s, n) != cases[i].ok) {
            printf("# case %zu\n", i);
            CHECK(0);
        }
    }
    jbuf b;
    jbuf_init(&b);
    size_t bad = 99;
    CHECK(json_write_string(&b, "ok\xFFno", 5, 0, &bad) == JSON_EUTF8);
    CHECK(bad == 2);
    CHECK(b.len == 0);
    CHECK(json_write_string(&b, "ok\xFFno", 5, 1, &bad) == 0);
    CHECK_STR(jbuf_cstr(&b), "\"ok\xEF\xBF\xBDno\"");
    b.len = 0;
    CHECK(json_write_string(&b, "a\"b\\c\n\x01\x7f", 8, 0, NULL) == 0);
    CHECK_STR(jbuf_cstr(&b), "\"a\\\"b\\\\c\\n\\u0001\\u007f\"");
    jbuf_free(&b);
}

static void test_scan_string_escapes(void)
{
    jbuf b;
    jbuf_init(&b);
    const char *why = NULL;
    const char *s = "\"\\u00e9\\ud83d\\ude00\\n\\/\"";
    size_t pos = 0;
    CHECK(json_scan_string(s, strlen(s), &pos, &b, &why) == 0);
    CHECK(pos == strlen(s));
    CHECK(b.len == 2 + 4 + 1 + 1);
    CHECK(memcmp(b.p, "\xC3\xA9\xF0\x9F\x98\x80\n/", b.len) == 0);
    const char *bad[] = {"\"\\ud83d\"", "\"\\udc00x\"", "\"a\nb\"", "\"\\q\"", "\"abc",
                         "\"\\u12\"", "\"\xC3(\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b.len = 0;
        pos = 0;
        if (json_scan_string(bad[i], strlen(bad[i]), &pos, &b, &why) != JSON_ESYNTAX) {
            printf("# accepted bad string %zu\n", i);
            CHECK(0);
        }
    }
    jbuf_free(&b);
}

static void test_bytes_escape_round_trip(void)
{
    /* Paths are bytes: JSON_UTF8_ESCAPE writes a byte that is not UTF-8 as \udcXX
     * (Python's surrogateescape), json_scan_string_ex(bytes) reads it back; valid
     * UTF-8 passes through; without `bytes` the escape stays an error. */
    const char raw[] = "r\xC3\xBCn \xE2\x9C\x93/\xFF\x80\xE2\x9C";
    size_t n = sizeof raw - 1;
    jbuf b, out;
    jbuf_init(&b);
    jbuf_init(&out);
    CHECK(json_write_string(&b, raw, n, JSON_UTF8_ESCAPE, NULL) == 0);
    CHECK_STR(jbuf_cstr(&b), "\"r\xC3\xBCn \xE2\x9C\x93/\\udcff\\udc80\\udce2\\udc9c\"");
    const char *why = NULL;
    size_t pos = 0;
    CHECK(json_scan_string_ex(b.p, b.len, &pos, &out, &why, 1) == 0);
    CHECK(pos == b.len);
    CHECK(out.len == n && memcmp(out.p, raw, n) == 0);
    out.len = 0;
    pos = 0;
    CHECK(json_scan_string(b.p, b.len, &pos, &out, &why) == JSON_ESYNTAX);
    /* Only U+DC80..U+DCFF are bytes; other lone surrogates stay errors. */
    const char *lone = "\"\\udc7f\"";
    out.len = 0;
    pos = 0;
    CHECK(json_scan_string_ex(lone, strlen(lone), &pos, &out, &why, 1) == JSON_ESYNTAX);
    jbuf_free(&b);
    jbuf_free(&out);
}

/* ---- through the Lua bridge ---- */

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "rl.core", luaopen_rl_core, 0);
    lua_pop(L, 1);
    luaL_requiref(L, "json", luaopen_rl_json, 1);
    lua_pop(L, 1);
    return L;
}

/* Run Lua code that must succeed and return true. */
static int lua_true(lua_State *L, const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK) {
        printf("# error: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    int r = lua_toboolean(L, -1);
    lua_settop(L, 0);
    if (!r)
        printf("# false: %s\n", code);
    return r;
}

/* Run code that must raise; return whether the message contains `want`. */
static int lua_fails_with(lua_State *L, const char *code, const char *want)
{
    int st = luaL_dostring(L, code);
    if (st == LUA_OK) {
        printf("# no error from: %s\n", code);
        lua_settop(L, 0);
        return 0;
    }
    const char *msg = luaL_tolstring(L, -1, NULL);
    int r = strstr(msg, want) != NULL;
    if (!r)
        printf("# error '%s' lacks '%s'\n", msg, want);
    lua_settop(L, 0);
    return r;
}

static void test_bridge_exact(void)
{
    lua_State *L = new_state();
    CHECK(lua_true(L, "local v = json.decode('9007199254740993') "
                      "return math.type(v) == 'integer' and v == 9007199254740993"));
    CHECK(lua_true(L, "return json.encode(9007199254740993) == '9007199254740993'"));
    CHECK(lua_true(L, "return json.encode(math.mininteger) == '-9223372036854775808'"));
    CHECK(lua_true(L, "return math.type(json.decode('2.0')) == 'float'"));
    CHECK(lua_true(L, "return json.encode(0.1) == '0.1' and json.encode(1/3) == "
                      "'0.3333333333333333'"));
    CHECK(lua_true(L, "return json.decode('null') == json.null and json.encode(json.null) "
                      "== 'null'"));
    CHECK(lua_true(L, "return json.encode({}) == '[]' and json.encode(json.object()) == '{}'"));
    CHECK(lua_true(L, "return json.encode(json.decode('{}')) == '{}'"));
    CHECK(lua_true(L, "return json.encode({1,2,{a=true}}) == '[1,2,{\"a\":true}]'"));
    CHECK(lua_true(L, "local t = json.decode('[1,null,3]') return #t == 3 and t[2] == json.null"));
    CHECK(lua_true(L, "return json.encode({b=1,a=2,c={z=1,y=2}}, {sort_keys=true}) == "
                      "'{\"a\":2,\"b\":1,\"c\":{\"y\":2,\"z\":1}}'"));
    CHECK(lua_true(L, "return json.encode({a={1,2}}, {indent=true}) == "
                      "'{\\n  \"a\": [\\n    1,\\n    2\\n  ]\\n}'"));
    CHECK(lua_true(L, "return json.decode(' \\n {\"\\\\u00e9\" : [ ] } ')['\\u{e9}'] ~= nil"));
    lua_close(L);
}

static void test_bridge_errors(void)
{
    lua_State *L = new_state();
    CHECK(lua_fails_with(L, "json.encode({a={b={0/0}}})", "NaN is not a JSON number at $.a.b[1]"));
    CHECK(lua_fails_with(L, "json.encode({x=1/0})", "infinity is not a JSON number at $.x"));
    CHECK(lua_fails_with(L, "json.encode({1, 2, x=3})", "mixes array items and object keys"));
    CHECK(lua_fails_with(L, "json.encode({[1]=1, [3]=3})", "array with holes"));
    CHECK(lua_fails_with(L, "json.encode({[true]=1})", "table key of type boolean"));
    CHECK(lua_fails_with(L, "local t = {} t.self = {t} json.encode(t)", "cycle"));
    CHECK(lua_fails_with(L, "json.encode({f=print})", "cannot encode a function at $.f"));
    CHECK(lua_fails_with(L, "json.encode({s='\\xff'})", "invalid UTF-8 at byte 0"));
    CHECK(lua_true(L, "return json.encode('\\xff', {replace_invalid_utf8=true}) == "
                      "'\"\\u{FFFD}\"'"));
    CHECK(lua_fails_with(L, "json.decode('{\"a\": [1, 2,, 3]}')",
                         "at byte 12 (line 1, column 13): unexpected character near"));
    CHECK(lua_fails_with(L, "json.decode('[1, 2')", "at end of input"));
    CHECK(lua_fails_with(L, "json.decode('{\"a\":1} x')", "trailing characters"));
    CHECK(lua_fails_with(L, "json.decode('NaN')", "unexpected word"));
    CHECK(lua_true(L, "local v = json.decode('[NaN, -Infinity]', {nonfinite=true}) "
                      "return v[1] ~= v[1] and v[2] == -math.huge"));
    CHECK(lua_fails_with(L, "json.decode(string.rep('[', 600) .. string.rep(']', 600))",
                         "nesting deeper than 500"));
    CHECK(lua_fails_with(L, "local t = {} local c = t for i = 1, 600 do c[1] = {} c = c[1] end "
                            "json.encode(t)", "nesting deeper than 500"));
    /* errors are rl error tables with a kind */
    CHECK(lua_true(L, "local ok, e = pcall(json.decode, '[') return not ok and e.kind == 'parse'"));
    CHECK(lua_true(L, "local ok, e = pcall(json.encode, 0/0) return not ok and e.kind == 'value'"));
    lua_close(L);
}

/* Build a random Lua value in C, round-trip it, compare deeply. */
static void push_random(lua_State *L, int depth)
{
    int kind = (int)(next_u64() % (depth > 4 ? 5 : 7));
    switch (kind) {
    case 0: lua_pushinteger(L, (lua_Integer)next_u64()); break;
    case 1: {
        uint64_t bits = next_u64();
        double d;
        memcpy(&d, &bits, sizeof d);
        if (!isfinite(d))
            d = (double)(bits % 1000) / 7.0;
        lua_pushnumber(L, d);
        break;
    }
    case 2: {
        char s[24];
        size_t n = next_u64() % sizeof s;
        for (size_t i = 0; i < n; i++) {
            /* ASCII including control characters and quotes */
            s[i] = (char)(next_u64() % 128);
        }
        lua_pushlstring(L, s, n);
        break;
    }
    case 3: lua_pushboolean(L, (int)(next_u64() & 1)); break;
    case 4: lua_pushlightuserdata(L, NULL); break;
    case 5: {
        int n = (int)(next_u64() % 5);
        lua_createtable(L, n, 0);
        for (int i = 1; i <= n; i++) {
            push_random(L, depth + 1);
            lua_rawseti(L, -2, i);
        }
        break;
    }
    default: {
        int n = (int)(next_u64() % 5) + 1;
        lua_createtable(L, 0, n);
        for (int i = 0; i < n; i++) {
            lua_pushfstring(L, "k%d_%d", i, (int)(next_u64() % 100));
            push_random(L, depth + 1);
            lua_rawset(L, -3);
        }
    }
    }
}

static void test_bridge_random_roundtrip(void)
{
    lua_State *L = new_state();
    int loaded = luaL_dostring(L,
                  "return function(a, b) "
                  "  local function eq(x, y) "
                  "    if type(x) ~= type(y) then return false end "
                  "    if type(x) == 'number' then "
                  "      return math.type(x) == math.type(y) and string.pack('n', x) == "
                  "string.pack('n', y) or (math.type(x) == 'integer' and x == y) end "
                  "    if type(x) ~= 'table' then return x == y end "
                  "    for k, v in pairs(x) do if not eq(v, y[k]) then return false end end "
                  "    for k in pairs(y) do if x[k] == nil then return false end end "
                  "    return true end "
                  "  return eq(a, b) end");
    CHECK(loaded == LUA_OK);
    int eq = lua_gettop(L);
    int bad = 0;
    for (int i = 0; i < 3000; i++) {
        push_random(L, 0);
        int v = lua_gettop(L);
        size_t n;
        const char *s = ljson_encode(L, v, 0, &n);
        ljson_decode(L, s, n, 0);
        lua_pushvalue(L, eq);
        lua_pushvalue(L, v);
        lua_pushvalue(L, -3);
        lua_call(L, 2, 1);
        if (!lua_toboolean(L, -1) && bad++ < 3)
            printf("# round trip differs for %s\n", s);
        lua_settop(L, eq);
    }
    CHECK(bad == 0);
    lua_close(L);
}

int main(void)
{
    RUN(test_double_shortest_roundtrip);
    RUN(test_int_extremes);
    RUN(test_utf8_validation);
    RUN(test_scan_string_escapes);
    RUN(test_bytes_escape_round_trip);
    RUN(test_bridge_exact);
    RUN(test_bridge_errors);
    RUN(test_bridge_random_roundtrip);
    return tap_done();
}

/* fuzz_json.c — libFuzzer target for the JSON bridge's decoder (ljson_decode).
 * Invariants: decoding never crashes or leaks; what decodes re-encodes, and the
 * re-encoded text decodes and encodes to the same bytes (a fixed point). */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lrl.h"

static int roundtrip(lua_State *L)
{
    const char *s = lua_touserdata(L, 1);
    size_t n = (size_t)lua_tointeger(L, 2);
    int flags = (int)lua_tointeger(L, 3);
    ljson_decode(L, s, n, flags);
    size_t n1, n2;
    const char *e1 = ljson_encode(L, -1, flags | LJSON_SORT_KEYS, &n1);
    ljson_decode(L, e1, n1, flags);
    const char *e2 = ljson_encode(L, -1, flags | LJSON_SORT_KEYS, &n2);
    if (n1 != n2 || memcmp(e1, e2, n1) != 0)
        abort(); /* encode(decode(.)) must be a fixed point */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A fresh state per input: everything allocated is freed before the input ends,
     * so libFuzzer's leak check (which runs when mallocs outnumber frees within an
     * input) finds real leaks only, and stays fast. */
    lua_State *L = luaL_newstate();
    if (!L)
        return 0;
    luaL_requiref(L, "rl.core", luaopen_rl_core, 0);
    luaL_requiref(L, "rl.json", luaopen_rl_json, 0);
    lua_settop(L, 0);
    /* The first byte picks the engine channel's options: non-finite numbers, and
     * strings as bytes (\udcXX escapes, host/json.h JSON_UTF8_ESCAPE). */
    int flags = (size && (data[0] & 1) ? LJSON_NONFINITE : 0) |
                (size && (data[0] & 2) ? LJSON_BYTES : 0);
    lua_pushcfunction(L, roundtrip);
    lua_pushlightuserdata(L, (void *)data);
    lua_pushinteger(L, (lua_Integer)size);
    lua_pushinteger(L, flags);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
        /* a decode error must be an rl error table of kind parse */
        if (!lua_istable(L, -1))
            abort();
        lua_getfield(L, -1, "kind");
        const char *k = lua_tostring(L, -1);
        if (!k || (strcmp(k, "parse") != 0 && strcmp(k, "value") != 0))
            abort();
    }
    lua_close(L);
    return 0;
}

/* lrandom.c — rl.random: save and restore the state of Lua's math.random, so a
 * resumed run draws the same numbers an uninterrupted one would.
 *
 * Reliance on Lua internals: in Lua 5.4's lmathlib.c, math.random and
 * math.randomseed are C closures sharing one upvalue, a full userdata holding the
 * xoshiro256** state (RanState: four 64-bit words, 32 bytes; on platforms without a
 * 64-bit integer type, eight 32-bit halves in the same 32 bytes). Nothing public
 * exposes it, so this module reads and writes those bytes. Because that layout is
 * not an API, luaopen checks it at run time: it saves the state, draws, restores,
 * and requires the same draws again (and leaves the state as it found it). A Lua
 * whose math.random differs fails that check with an "internal" error instead of
 * silently resuming with different numbers. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lrl.h"

#define STATE_BYTES 32

/* Push math.random's state userdata (the first upvalue of the original
 * math.random) or raise. */
static unsigned char *state_ptr(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "rl.random.fn");
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_getfield(L, -1, "math");
        lua_remove(L, -2);
        if (lua_type(L, -1) != LUA_TTABLE)
            rl_raise(L, "internal", 0, "rl.random: the math library is not loaded");
        lua_getfield(L, -1, "random");
        lua_remove(L, -2);
        if (!lua_iscfunction(L, -1))
            rl_raise(L, "internal", 0, "rl.random: math.random is not Lua's C function");
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, "rl.random.fn");
    }
    const char *up = lua_getupvalue(L, -1, 1);
    if (!up || lua_type(L, -1) != LUA_TUSERDATA || lua_rawlen(L, -1) != STATE_BYTES)
        rl_raise(L, "internal", 0,
                 "rl.random: math.random's state is not the 32-byte userdata of Lua 5.4's "
                 "lmathlib; cannot checkpoint it");
    unsigned char *p = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return p;
}

static void to_hex(const unsigned char *p, char out[2 * STATE_BYTES + 1])
{
    for (int i = 0; i < STATE_BYTES; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

/* rl.random.state() -> 64 hex digits (the state bytes in memory order). */
static int l_state(lua_State *L)
{
    unsigned char *p = state_ptr(L);
    char hex[2 * STATE_BYTES + 1];
    to_hex(p, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* rl.random.set_state(hex): restore what state() returned. */
static int l_set_state(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char buf[STATE_BYTES];
    if (n != 2 * STATE_BYTES)
        return rl_raise(L, "value", 0, "rl.random.set_state: expected %d hex digits, got %d",
                        2 * STATE_BYTES, (int)n);
    for (int i = 0; i < STATE_BYTES; i++) {
        int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return rl_raise(L, "value", 0, "rl.random.set_state: not a hex string");
        buf[i] = (unsigned char)(hi << 4 | lo);
    }
    unsigned char *p = state_ptr(L);
    memcpy(p, buf, STATE_BYTES);
    return 0;
}

/* Draw k raw 64-bit values with math.random(0) into out. */
static void draw(lua_State *L, lua_Integer *out, int k)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "rl.random.fn");
    for (int i = 0; i < k; i++) {
        lua_pushvalue(L, -1);
        lua_pushinteger(L, 0);
        lua_call(L, 1, 1);
        out[i] = lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* rl.random.check() -> true: the run-time verification described above. */
static int l_check(lua_State *L)
{
    unsigned char *p = state_ptr(L), saved[STATE_BYTES];
    memcpy(saved, p, STATE_BYTES);
    lua_Integer a[4], b[4];
    draw(L, a, 4);
    int moved = memcmp(saved, p, STATE_BYTES) != 0;
    memcpy(p, saved, STATE_BYTES);
    draw(L, b, 4);
    memcpy(p, saved, STATE_BYTES);
    if (!moved || memcmp(a, b, sizeof a) != 0)
        return rl_raise(L, "internal", 0,
                        "rl.random: restoring math.random's state does not reproduce its "
                        "draws; this Lua's lmathlib differs from 5.4's");
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg random_funcs[] = {
    {"state", l_state},
    {"set_state", l_set_state},
    {"check", l_check},
    {NULL, NULL},
};

int luaopen_rl_random(lua_State *L)
{
    lua_pushcfunction(L, l_check);
    lua_call(L, 0, 0);
    luaL_newlib(L, random_funcs);
    return 1;
}

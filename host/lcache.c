/* lcache.c — rl.cache: the SQLite score cache (host/cache.c) as a Lua handle, the
 * judge's score parser (host/judge_parse.c) and SHA-256 keys.
 *
 *   local c = rl.cache.open(path)      -- handle; c:get(keys), c:put(entries), c:count()
 *   rl.cache.key(part1, part2, ...)    -- hex SHA-256 over length-prefixed parts
 *   rl.cache.parse_score(text, {mode=, field=, lo=, hi=}) -> score | nil, why, code
 *   rl.cache.parse_verdict(text) -> "A"|"B"|"T" | nil, why */
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "judge_parse.h"
#include "lrl.h"

#define CACHE_MT "rl.cache"

typedef struct Handle {
    cache *c;
} Handle;

static int h_gc(lua_State *L)
{
    Handle *h = luaL_checkudata(L, 1, CACHE_MT);
    cache_close(h->c);
    h->c = NULL;
    return 0;
}

static Handle *check_open(lua_State *L)
{
    Handle *h = luaL_checkudata(L, 1, CACHE_MT);
    if (!h->c)
        rl_raise(L, "usage", 0, "rl.cache: the handle is closed");
    return h;
}

/* rl.cache.open(path [, {busy_ms=, readonly=}]) */
static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    cache_params p;
    cache_default_params(&p);
    if (lua_istable(L, 2)) {
        if (lua_getfield(L, 2, "busy_ms") == LUA_TNUMBER)
            p.busy_ms = (int)lua_tointeger(L, -1);
        if (lua_getfield(L, 2, "readonly") != LUA_TNIL)
            p.readonly = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    Handle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->c = NULL;
    luaL_setmetatable(L, CACHE_MT);
    char err[512];
    if (cache_open(&p, path, &h->c, err, sizeof err) < 0)
        return rl_raise(L, "io", 0, "rl.cache: %s", err);
    return 1;
}

/* c:get(keys) -> list where each entry is {reward=, raw=, meta=} or false. */
static int h_get(lua_State *L)
{
    Handle *h = check_open(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 2);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        const char *key = lua_tostring(L, -1);
        if (!key)
            return luaL_argerror(L, 2, "keys must be strings");
        cache_entry e;
        char err[512];
        int rc = cache_get(h->c, key, &e, err, sizeof err);
        lua_pop(L, 1);
        if (rc < 0)
            return rl_raise(L, "io", 1, "rl.cache: %s", err);
        if (!e.found) {
            lua_pushboolean(L, 0);
        } else {
            lua_createtable(L, 0, 3);
            lua_pushnumber(L, e.reward);
            lua_setfield(L, -2, "reward");
            if (e.raw) {
                lua_pushstring(L, e.raw);
                lua_setfield(L, -2, "raw");
            }
            if (e.meta) {
                lua_pushstring(L, e.meta);
                lua_setfield(L, -2, "meta");
            }
        }
        lua_rawseti(L, -2, i);
    }
    return 1;
}

/* c:put(entries) with entries = list of {key=, reward=, raw=, meta=}; one transaction. */
static int h_put(lua_State *L)
{
    Handle *h = check_open(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 2);
    if (n == 0)
        return 0;
    /* Arrays in userdata boxes: freed by GC whatever raises below. */
    const char **keys = lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0);
    const char **raws = lua_newuserdatauv(L, (size_t)n * sizeof *raws, 0);
    const char **metas = lua_newuserdatauv(L, (size_t)n * sizeof *metas, 0);
    double *rewards = lua_newuserdatauv(L, (size_t)n * sizeof *rewards, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 2, i) != LUA_TTABLE)
            return luaL_argerror(L, 2, "entries must be tables");
        if (lua_getfield(L, -1, "key") != LUA_TSTRING)
            return luaL_argerror(L, 2, "entry without a string key");
        keys[i - 1] = lua_tostring(L, -1); /* anchored by the entry table */
        lua_pop(L, 1);
        int isnum;
        lua_getfield(L, -1, "reward");
        rewards[i - 1] = lua_tonumberx(L, -1, &isnum);
        if (!isnum)
            return luaL_argerror(L, 2, "entry without a numeric reward");
        lua_pop(L, 1);
        raws[i - 1] = lua_getfield(L, -1, "raw") == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_pop(L, 1);
        metas[i - 1] = lua_getfield(L, -1, "meta") == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_pop(L, 2);
    }
    char err[512];
    if (cache_put_many(h->c, (size_t)n, keys, rewards, raws, metas, err, sizeof err) < 0)
        return rl_raise(L, "io", 1, "rl.cache: %s", err);
    return 0;
}

static int h_count(lua_State *L)
{
    Handle *h = check_open(L);
    lua_pushinteger(L, cache_count(h->c));
    return 1;
}

/* rl.cache.key(...): SHA-256 over each part's length and bytes, so ("ab","c") and
 * ("a","bc") differ. */
static int l_key(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checkstack(L, 2 * n + 2, "too many key parts");
    for (int i = 1; i <= n; i++) {
        size_t len;
        luaL_tolstring(L, i, &len);
        lua_pushfstring(L, "%d:", (int)len);
        lua_insert(L, -2); /* the length prefix goes before its part */
    }
    lua_concat(L, 2 * n);
    size_t len;
    const char *all = lua_tolstring(L, -1, &len);
    char hex[65];
    cache_sha256_hex(all, len, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* rl.cache.parse_score(text [, {mode="brackets"|"json", field=, lo=, hi=}])
 * -> score | nil, reason, code ("noscore"|"number"|"range") */
static int l_parse_score(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    judge_parse_params p;
    judge_parse_default_params(&p);
    if (lua_istable(L, 2)) {
        if (lua_getfield(L, 2, "mode") == LUA_TSTRING)
            p.mode = strcmp(lua_tostring(L, -1), "json") == 0 ? JUDGE_PARSE_JSON
                                                              : JUDGE_PARSE_BRACKETS;
        if (lua_getfield(L, 2, "field") == LUA_TSTRING)
            p.field = lua_tostring(L, -1); /* anchored by the options table */
        if (lua_getfield(L, 2, "lo") == LUA_TNUMBER)
            p.lo = lua_tonumber(L, -1);
        if (lua_getfield(L, 2, "hi") == LUA_TNUMBER)
            p.hi = lua_tonumber(L, -1);
        lua_pop(L, 4);
    }
    double v;
    char err[160];
    int rc = judge_parse_score(&p, s, n, &v, err, sizeof err);
    if (rc == JUDGE_OK) {
        lua_pushnumber(L, v);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, rc == JUDGE_E_RANGE ? "range" : rc == JUDGE_E_NUMBER ? "number" : "noscore");
    return 3;
}

static int l_parse_verdict(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[160];
    int v = judge_parse_verdict(s, n, err, sizeof err);
    if (v) {
        char c = (char)v;
        lua_pushlstring(L, &c, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static const luaL_Reg h_methods[] = {
    {"get", h_get}, {"put", h_put}, {"count", h_count}, {"close", h_gc}, {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"open", l_open},
    {"key", l_key},
    {"parse_score", l_parse_score},
    {"parse_verdict", l_parse_verdict},
    {NULL, NULL},
};

int luaopen_rl_cache(lua_State *L)
{
    if (luaL_newmetatable(L, CACHE_MT)) {
        luaL_newlib(L, h_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, h_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, h_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    return 1;
}

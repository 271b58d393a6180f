/* lrl.c — rl.core: the error type, interruption, command-line settings, versions.
 * lua/rl/init.lua merges this table (and the other C submodules) into `rl`. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lrl.h"
#include "overrides.h"
#include "sig.h"
#include "version.h"

/* __tostring of error tables: "WHERE: KIND error: MESSAGE". */
static int error_tostring(lua_State *L)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (lua_getfield(L, 1, "where") == LUA_TSTRING)
        luaL_addvalue(&b);
    else
        lua_pop(L, 1);
    if (lua_getfield(L, 1, "kind") == LUA_TSTRING) {
        luaL_addvalue(&b);
        luaL_addstring(&b, " error: ");
    } else {
        lua_pop(L, 1);
    }
    if (lua_getfield(L, 1, "message") != LUA_TNIL) {
        luaL_tolstring(L, -1, NULL);
        lua_remove(L, -2);
        luaL_addvalue(&b);
    } else {
        lua_pop(L, 1);
        luaL_addstring(&b, "(no message)");
    }
    luaL_pushresult(&b);
    return 1;
}

void rl_error_init(lua_State *L)
{
    if (luaL_newmetatable(L, RL_ERROR_MT)) {
        lua_pushcfunction(L, error_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "rl.error");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}

/* Push "FILE:LINE: " for the recipe line an error belongs to: the first Lua frame at
 * or above `level` that is not the rl library itself (lua/rl/), so a bad option
 * given to rl.endpoint{} names the recipe's line rather than the wrapper that passed
 * it on; luaL_where(L, level) when no such frame exists. */
static void push_where(lua_State *L, int level)
{
    lua_Debug ar;
    for (int lv = level; lv < level + 64 && lua_getstack(L, lv, &ar); lv++) {
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0)
            continue;
        if (strstr(ar.source, "/lua/rl/") != NULL)
            continue;
        lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
        return;
    }
    luaL_where(L, level);
}

static void pusherror_v(lua_State *L, int level, const char *kind, int retryable,
                        const char *fmt, va_list ap)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushvfstring(L, fmt, ap);
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, retryable);
    lua_setfield(L, -2, "retryable");
    if (level > 0) {
        push_where(L, level);
        lua_setfield(L, -2, "where");
    }
    rl_error_init(L);
    luaL_setmetatable(L, RL_ERROR_MT);
}

void rl_pusherror(lua_State *L, int level, const char *kind, int retryable, const char *fmt,
                  ...)
{
    va_list ap;
    va_start(ap, fmt);
    pusherror_v(L, level, kind, retryable, fmt, ap);
    va_end(ap);
}

int rl_raise(lua_State *L, const char *kind, int retryable, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pusherror_v(L, 1, kind, retryable, fmt, ap);
    va_end(ap);
    return lua_error(L);
}

/* rl.error{kind=, message=, retryable=, ...} or rl.error(kind, message [, level]):
 * make (not raise) an error value; fields beyond these ride along. `where` is the
 * caller's position unless given. */
static int l_error(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING) {
        const char *kind = lua_tostring(L, 1);
        const char *msg = luaL_optstring(L, 2, "");
        int level = (int)luaL_optinteger(L, 3, 1);
        rl_pusherror(L, level, kind, 0, "%s", msg);
        return 1;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    if (lua_getfield(L, 1, "kind") != LUA_TSTRING)
        luaL_argerror(L, 1, "error table needs a string 'kind'");
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "where") == LUA_TNIL) {
        push_where(L, 1);
        lua_setfield(L, 1, "where");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "retryable") == LUA_TNIL) {
        lua_pushboolean(L, 0);
        lua_setfield(L, 1, "retryable");
    }
    lua_pop(L, 1);
    rl_error_init(L);
    luaL_setmetatable(L, RL_ERROR_MT);
    return 1;
}

/* rl.is_error(v [, kind]) */
static int l_is_error(lua_State *L)
{
    int r = 0;
    if (lua_istable(L, 1) && lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, RL_ERROR_MT);
        r = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (r && !lua_isnoneornil(L, 2)) {
            lua_getfield(L, 1, "kind");
            r = lua_rawequal(L, -1, 2);
        }
    }
    lua_pushboolean(L, r);
    return 1;
}

static int l_interrupted(lua_State *L)
{
    lua_pushboolean(L, sig_level() > 0);
    return 1;
}

/* rl.core.overrides(): the parsed command-line settings, in order, as
 * {key=, value=, type=, arg=} (a copy; main.c keeps the original in the registry). */
static int l_overrides(lua_State *L)
{
    lua_newtable(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, "rl.overrides") != LUA_TTABLE) {
        lua_pop(L, 1);
        return 1;
    }
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_newtable(L);
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
        lua_rawseti(L, -4, i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 1;
}

/* rl.core.distance(a, b): edit distance, for "did you mean" suggestions. */
static int l_distance(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)ov_distance(luaL_checkstring(L, 1), luaL_checkstring(L, 2)));
    return 1;
}

static const luaL_Reg core_funcs[] = {
    {"distance", l_distance},
    {"error", l_error},
    {"is_error", l_is_error},
    {"interrupted", l_interrupted},
    {"overrides", l_overrides},
    {NULL, NULL},
};

int luaopen_rl_core(lua_State *L)
{
    rl_error_init(L);
    luaL_newlib(L, core_funcs);
    luaL_getmetatable(L, RL_ERROR_MT);
    lua_setfield(L, -2, "error_mt");
    lua_pushliteral(L, RLHOST_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, version_python());
    lua_setfield(L, -2, "python_version");
    lua_pushstring(L, version_curl());
    lua_setfield(L, -2, "curl_version");
    lua_pushstring(L, version_cjson());
    lua_setfield(L, -2, "cjson_version");
    lua_getfield(L, LUA_REGISTRYINDEX, "rl.home");
    lua_setfield(L, -2, "home");
    return 1;
}

/* runtime.c — see runtime.h. Modelled on lua.c: every call is protected, the message
 * handler adds a traceback, a second SIGINT stops Lua through a hook. */
#include "runtime.h"

#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lrl.h"
#include "sig.h"

/* C submodules available to require; lua/rl/init.lua merges them into `rl`. */
static const luaL_Reg preloads[] = {
    {"rl.core", luaopen_rl_core},
    {"rl.json", luaopen_rl_json},
    {"rl.endpoint_c", luaopen_rl_endpoint}, {"rl.cache", luaopen_rl_cache}, {"rl.rewards", luaopen_rl_rewards},
    {"rl.fs", luaopen_rl_fs},
    {"rl.random", luaopen_rl_random},
    {"rl.cmodel", luaopen_rl_cmodel}, /* host/lmodel.c */
    {"rl.service_c", luaopen_rl_service}, /* host/lservice.c */
    {NULL, NULL},
};

typedef struct Alloc {
    size_t used, limit;
} Alloc;

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    Alloc *a = ud;
    if (ptr == NULL)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        a->used -= osize;
        return NULL;
    }
    if (a->limit && nsize > osize && a->used + (nsize - osize) > a->limit)
        return NULL; /* Lua turns this into a memory error, reported, not a crash */
    void *p = realloc(ptr, nsize);
    if (p)
        a->used = a->used - osize + nsize;
    return p;
}

static int l_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "rlhost: unprotected Lua error: %s\n", msg ? msg : "(not a string)");
    return 0; /* then abort(), as lua does */
}

static lua_State *volatile active; /* the state a second SIGINT stops */

static void stop_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    rl_pusherror(L, 1, "interrupted", 0, "interrupted by a second SIGINT");
    lua_error(L);
}

/* Runs inside the signal handler: lua_sethook is async-signal-safe (see lua.c). */
static void on_second_sigint(void)
{
    if (active)
        lua_sethook(active, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Keep error tables as they are (so a fallback policy, and rt_report, can read
 * kind); record the traceback beside them. Other values become a string with the
 * traceback appended, as lua.c does. */
static int msghandler(lua_State *L)
{
    if (lua_istable(L, 1)) {
        luaL_traceback(L, L, NULL, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, "rl.traceback");
        lua_settop(L, 1);
        return 1;
    }
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int rt_docall(lua_State *L, int narg, int nres)
{
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    active = L;
    int status = lua_pcall(L, narg, nres, base);
    active = NULL;
    lua_remove(L, base);
    return status;
}

static const char *error_kind(lua_State *L, int idx)
{
    const char *kind = NULL;
    if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "kind");
        kind = lua_tostring(L, -1); /* interned: stays valid while the table lives */
        lua_pop(L, 1);
    }
    return kind;
}

int rt_report(lua_State *L, int status)
{
    if (status == LUA_OK)
        return EXIT_OK;
    if (status == LUA_ERRMEM) {
        fprintf(stderr, "rlhost: not enough memory (Lua allocation failed)\n");
        lua_pop(L, 1);
        return EXIT_RUNTIME;
    }
    int code = EXIT_RUNTIME;
    const char *kind = error_kind(L, -1);
    if (kind && (strcmp(kind, "config") == 0 || strcmp(kind, "usage") == 0))
        code = EXIT_USAGE;
    else if (kind && strcmp(kind, "interrupted") == 0)
        code = EXIT_INTERRUPTED;
    const char *msg;
    int has_tostring = luaL_getmetafield(L, -1, "__tostring") != LUA_TNIL;
    if (has_tostring)
        lua_pop(L, 1);
    if (lua_istable(L, -1) && !has_tostring) {
        /* A plain table (error{kind=..., message=...} without rl.error): print its
         * fields, not "table: 0x...". */
        lua_getfield(L, -1, "kind");
        lua_getfield(L, -2, "message"); /* stack: err, kind, message */
        const char *k = lua_isstring(L, -2) ? lua_tostring(L, -2) : NULL;
        const char *m = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
        if (m)
            msg = k ? lua_pushfstring(L, "%s error: %s", k, m) : lua_pushfstring(L, "error: %s", m);
        else if (k)
            msg = lua_pushfstring(L, "%s error (the error table has no message)", k);
        else
            msg = lua_pushliteral(L, "(error object is a table value with no message)");
        lua_replace(L, -3); /* err, msg, message */
        lua_pop(L, 1);
    } else {
        msg = luaL_tolstring(L, -1, NULL);
    }
    fprintf(stderr, "%s\n", msg);
    lua_pop(L, 1);
    if (lua_istable(L, -1) && code == EXIT_RUNTIME) {
        lua_getfield(L, LUA_REGISTRYINDEX, "rl.traceback");
        if (lua_isstring(L, -1))
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    fflush(stderr);
    lua_pop(L, 1);
    return code;
}

int rt_report_load(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "rlhost: %s\n", msg ? msg : "cannot load the recipe");
    lua_pop(L, 1);
    return EXIT_USAGE;
}

static void set_path(lua_State *L, const char *home, const char *script_dir)
{
    lua_getglobal(L, "package");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;", home, home);
    luaL_addvalue(&b);
    if (script_dir) {
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", script_dir, script_dir);
        luaL_addvalue(&b);
    }
    lua_getfield(L, -2, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

static int open_all(lua_State *L)
{
    const char *home = lua_touserdata(L, 1);
    const char *script_dir = lua_touserdata(L, 2);
    luaL_openlibs(L);
    lua_pushstring(L, home);
    lua_setfield(L, LUA_REGISTRYINDEX, "rl.home");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *r = preloads; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
    lua_pop(L, 1);
    set_path(L, home, script_dir);
    return 0;
}

lua_State *rt_new(const char *home, const char *script_dir, size_t mem_limit)
{
    Alloc *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->limit = mem_limit;
    lua_State *L = lua_newstate(l_alloc, a);
    if (!L) {
        free(a);
        return NULL;
    }
    lua_atpanic(L, l_panic);
    lua_gc(L, LUA_GCGEN, 0, 0); /* as lua.c does */
    lua_pushcfunction(L, open_all);
    lua_pushlightuserdata(L, (void *)home);
    lua_pushlightuserdata(L, (void *)script_dir);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        fprintf(stderr, "rlhost: cannot start Lua: %s\n", lua_tostring(L, -1));
        rt_close(L);
        return NULL;
    }
    sig_install(on_second_sigint);
    return L;
}

void rt_close(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    lua_close(L);
    free(ud);
}

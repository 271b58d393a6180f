/* lreward.c — rl.rewards: the native reward functions (host/rewards.c) and the code
 * sandbox (host/sandbox.c) for lua/rl/reward.lua, which builds the rl.reward.*
 * scorer objects on top. */
#include <stdlib.h>
#include <string.h>

#include "lrl.h"
#include "rewards.h"
#include "sandbox.h"

#define RE_MT "rl.rewards.regex"
#define SBOX_MT "rl.rewards.sandbox_box"

/* {ignore_case=false, strip=true}: strip trims both ends and collapses whitespace
 * runs, which is what "the same answer" means for generated text. */
static int flags_of(lua_State *L, int idx, int strip_default)
{
    int f = strip_default ? RW_SPACE : 0;
    if (lua_istable(L, idx)) {
        if (lua_getfield(L, idx, "ignore_case") != LUA_TNIL && lua_toboolean(L, -1))
            f |= RW_CASEFOLD;
        if (lua_getfield(L, idx, "strip") != LUA_TNIL)
            f = lua_toboolean(L, -1) ? (f | RW_SPACE) : (f & ~RW_SPACE);
        lua_pop(L, 2);
    }
    return f;
}

/* exact(text, expected [, {ignore_case=, strip=}]) -> 0|1 */
static int l_exact(lua_State *L)
{
    size_t n, m;
    const char *a = luaL_checklstring(L, 1, &n), *b = luaL_checklstring(L, 2, &m);
    lua_pushnumber(L, rewards_exact(a, n, b, m, flags_of(L, 3, 1)));
    return 1;
}

/* contains_count(text, needles [, opts]) -> count */
static int l_contains(lua_State *L)
{
    size_t n;
    const char *t = luaL_checklstring(L, 1, &n);
    luaL_checktype(L, 2, LUA_TTABLE);
    int k = (int)luaL_len(L, 2);
    int c = 0, f = flags_of(L, 3, 0);
    for (int i = 1; i <= k; i++) {
        lua_rawgeti(L, 2, i);
        size_t l;
        const char *nd = lua_tolstring(L, -1, &l);
        if (!nd)
            return luaL_argerror(L, 2, "needles must be strings");
        c += rewards_contains_count(t, n, &nd, &l, 1, f);
        lua_pop(L, 1);
    }
    lua_pushinteger(L, c);
    return 1;
}

static int re_gc(lua_State *L)
{
    rewards_regex *r = luaL_checkudata(L, 1, RE_MT);
    rewards_regex_free(r);
    return 0;
}

static int rx_match(lua_State *L)
{
    rewards_regex *r = luaL_checkudata(L, 1, RE_MT);
    const char *t = luaL_checkstring(L, 2);
    lua_pushboolean(L, rewards_regex_match(r, t));
    return 1;
}

/* regex(pattern [, opts]) -> compiled pattern with :match(text) */
static int l_regex(lua_State *L)
{
    const char *pat = luaL_checkstring(L, 1);
    int f = flags_of(L, 2, 0);
    rewards_regex *r = lua_newuserdatauv(L, sizeof *r, 0);
    r->ok = 0;
    if (luaL_newmetatable(L, RE_MT)) {
        lua_pushcfunction(L, re_gc);
        lua_setfield(L, -2, "__gc");
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, rx_match);
        lua_setfield(L, -2, "match");
        lua_setfield(L, -2, "__index");
    }
    lua_setmetatable(L, -2);
    char err[200];
    if (rewards_regex_compile(r, pat, f, err, sizeof err) < 0)
        return rl_raise(L, "config", 0, "rl.reward.regex: bad pattern '%s': %s", pat, err);
    return 1;
}

/* length(len, {target=, tolerance=, scale=, shape=, side=}) -> reward */
static int l_length(lua_State *L)
{
    double len = luaL_checknumber(L, 1);
    rewards_length_params p;
    rewards_length_default_params(&p);
    if (lua_istable(L, 2)) {
        if (lua_getfield(L, 2, "target") == LUA_TNUMBER) p.target = lua_tonumber(L, -1);
        if (lua_getfield(L, 2, "tolerance") == LUA_TNUMBER) p.tolerance = lua_tonumber(L, -1);
        if (lua_getfield(L, 2, "scale") == LUA_TNUMBER) p.scale = lua_tonumber(L, -1);
        lua_pop(L, 3);
        static const char *const shapes[] = {"linear", "quadratic", "gaussian", "step", NULL};
        static const char *const sides[] = {"both", "max", "min", NULL};
        lua_getfield(L, 2, "shape");
        if (!lua_isnil(L, -1))
            p.shape = luaL_checkoption(L, -1, NULL, shapes);
        lua_getfield(L, 2, "side");
        if (!lua_isnil(L, -1))
            p.side = luaL_checkoption(L, -1, NULL, sides);
        lua_pop(L, 2);
    }
    lua_pushnumber(L, rewards_length(len, &p));
    return 1;
}

/* count(text, "chars"|"words"|"bytes") -> n */
static int l_count(lua_State *L)
{
    size_t n;
    const char *t = luaL_checklstring(L, 1, &n);
    const char *u = luaL_optstring(L, 2, "chars");
    size_t c = strcmp(u, "words") == 0 ? rewards_count_words(t, n)
             : strcmp(u, "bytes") == 0 ? n : rewards_count_chars(t, n);
    lua_pushinteger(L, (lua_Integer)c);
    return 1;
}

/* json(text [, required_keys]) -> 0|1, why */
static int l_json(lua_State *L)
{
    size_t n;
    const char *t = luaL_checklstring(L, 1, &n);
    int k = lua_istable(L, 2) ? (int)luaL_len(L, 2) : 0;
    const char **req = k ? lua_newuserdatauv(L, (size_t)k * sizeof *req, 0) : NULL;
    for (int i = 0; i < k; i++) {
        lua_rawgeti(L, 2, i + 1);
        req[i] = lua_tostring(L, -1); /* anchored by the keys table */
        lua_pop(L, 1);
        if (!req[i])
            return luaL_argerror(L, 2, "required keys must be strings");
    }
    char why[128];
    double r = rewards_json(t, n, req, k, why, sizeof why);
    lua_pushnumber(L, r);
    if (r)
        return 1;
    lua_pushstring(L, why);
    return 2;
}

typedef struct SBox {
    sandbox_result r;
    const char **argv;
    sandbox_file *files;
} SBox;

static int sbox_gc(lua_State *L)
{
    SBox *b = luaL_checkudata(L, 1, SBOX_MT);
    sandbox_result_free(&b->r);
    free(b->argv);
    free(b->files);
    b->argv = NULL;
    b->files = NULL;
    return 0;
}

static double num_field(lua_State *L, int idx, const char *k, double dflt)
{
    double v = dflt;
    if (lua_getfield(L, idx, k) == LUA_TNUMBER)
        v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* run(argv, files, stdin, limits) -> {reason=, exit=, signal=, stdout=, stderr=,
 * wall_ms=, isolated=, no_sockets=, disk_capped=, detail=}; limits {cpu=, mem_mb=,
 * fsize_mb=, disk_mb=, nproc=, timeout=, max_output=, require_isolation=}. Setup
 * failures come back as reason = "setup". */
static int l_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t in_len = 0;
    const char *in = luaL_optlstring(L, 3, "", &in_len);
    sandbox_params p;
    sandbox_default_params(&p);
    if (lua_istable(L, 4)) {
        p.cpu_s = num_field(L, 4, "cpu", p.cpu_s);
        p.mem_bytes = (size_t)(num_field(L, 4, "mem_mb", (double)(p.mem_bytes >> 20)) * 1048576.0);
        p.fsize_bytes = (size_t)(num_field(L, 4, "fsize_mb", (double)p.fsize_bytes / 1048576.0) * 1048576.0);
        p.disk_bytes = (size_t)(num_field(L, 4, "disk_mb", (double)p.disk_bytes / 1048576.0) * 1048576.0);
        p.nproc = (int)num_field(L, 4, "nproc", p.nproc);
        p.wall_s = num_field(L, 4, "timeout", p.wall_s);
        p.max_output = (size_t)num_field(L, 4, "max_output", (double)p.max_output);
        lua_getfield(L, 4, "require_isolation");
        p.require_isolation = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int argc = (int)luaL_len(L, 1);
    if (argc < 1)
        return luaL_argerror(L, 1, "a non-empty argv list");
    int nf = 0;
    if (lua_istable(L, 2)) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return luaL_argerror(L, 2, "files map names to contents (strings)");
            nf++;
            lua_pop(L, 1);
        }
    }
    SBox *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, SBOX_MT)) {
        lua_pushcfunction(L, sbox_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    b->argv = calloc((size_t)argc + 1, sizeof *b->argv);
    b->files = calloc((size_t)nf + 1, sizeof *b->files);
    if (!b->argv || !b->files)
        return luaL_error(L, "not enough memory");
    for (int i = 0; i < argc; i++) {
        lua_rawgeti(L, 1, i + 1);
        b->argv[i] = lua_tostring(L, -1); /* anchored by the argv table */
        lua_pop(L, 1);
        if (!b->argv[i])
            return luaL_argerror(L, 1, "argv entries must be strings");
    }
    int k = 0;
    if (nf) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            b->files[k].name = lua_tostring(L, -2);
            b->files[k].data = lua_tolstring(L, -1, &b->files[k].len);
            k++;
            lua_pop(L, 1);
        }
    }
    char err[300];
    int rc = sandbox_run(&p, b->argv, b->files, nf, in, in_len, &b->r, err, sizeof err);
    lua_createtable(L, 0, 11);
    lua_pushstring(L, sandbox_reason_name(b->r.reason));
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, rc < 0 ? err : b->r.detail);
    lua_setfield(L, -2, "detail");
    lua_pushinteger(L, b->r.exit_code);
    lua_setfield(L, -2, "exit");
    lua_pushinteger(L, b->r.signal);
    lua_setfield(L, -2, "signal");
    lua_pushlstring(L, b->r.out ? b->r.out : "", b->r.out_len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, b->r.err ? b->r.err : "", b->r.err_len);
    lua_setfield(L, -2, "stderr");
    lua_pushnumber(L, b->r.wall_ms);
    lua_setfield(L, -2, "wall_ms");
    lua_pushboolean(L, b->r.isolated);
    lua_setfield(L, -2, "isolated");
    lua_pushboolean(L, b->r.no_sockets);
    lua_setfield(L, -2, "no_sockets");
    lua_pushboolean(L, b->r.disk_capped);
    lua_setfield(L, -2, "disk_capped");
    return 1;
}

static const luaL_Reg funcs[] = {
    {"exact", l_exact}, {"contains_count", l_contains}, {"regex", l_regex},
    {"length", l_length}, {"count", l_count}, {"json", l_json}, {"run", l_run},
    {NULL, NULL},
};

int luaopen_rl_rewards(lua_State *L)
{
    luaL_newlib(L, funcs);
    return 1;
}

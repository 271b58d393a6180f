/* lservice.c — rl.service_c: child server processes (host/service.c) for
 * lua/rl/server.lua.
 *
 *   rl.service_c.start{argv={...}, cwd=, log=, term_ms=}
 *       -> handle; raises kind "config" when the program cannot be run, "io" when
 *          the log file cannot be opened
 *   handle:pid(), handle:running(), handle:exit_text()
 *   handle:wait_ready(url, timeout_s, probe_s) -> "ready" | "exited" | "timeout"
 *       | "interrupted", last HTTP status, last failure text
 *   handle:stop() -> how it ended; also on __gc and __close (to-be-closed variables)
 *   rl.service_c.free_port() -> a loopback port free a moment ago */
#include <stdlib.h>
#include <string.h>

#include "lrl.h"
#include "service.h"

#define SERVICE_MT "rl.service"

typedef struct Handle {
    service *s; /* NULL until started, and after stop */
} Handle;

static Handle *check(lua_State *L)
{
    return luaL_checkudata(L, 1, SERVICE_MT);
}

static int h_stop(lua_State *L)
{
    Handle *h = check(L);
    if (h->s) {
        service_stop(h->s);
        lua_pushstring(L, service_exit_text(h->s));
        service_free(h->s);
        h->s = NULL;
        return 1;
    }
    lua_pushliteral(L, "stopped");
    return 1;
}

static int h_pid(lua_State *L)
{
    Handle *h = check(L);
    if (!h->s)
        return 0;
    lua_pushinteger(L, service_pid(h->s));
    return 1;
}

static int h_running(lua_State *L)
{
    Handle *h = check(L);
    lua_pushboolean(L, h->s && service_running(h->s));
    return 1;
}

static int h_exit_text(lua_State *L)
{
    Handle *h = check(L);
    lua_pushstring(L, h->s ? service_exit_text(h->s) : "stopped");
    return 1;
}

static int h_wait_ready(lua_State *L)
{
    Handle *h = check(L);
    const char *url = luaL_checkstring(L, 2);
    double timeout = luaL_checknumber(L, 3);
    double probe = luaL_optnumber(L, 4, 2.0);
    if (!h->s)
        return rl_raise(L, "usage", 0, "the server was stopped");
    long status = 0;
    char err[512];
    int rc = service_wait_ready(h->s, url, (long)(timeout * 1000), (long)(probe * 1000), &status,
                                err, sizeof err);
    lua_pushstring(L, rc == SERVICE_OK ? "ready" : rc == SERVICE_EDEAD ? "exited"
                      : rc == SERVICE_EINTR ? "interrupted" : "timeout");
    lua_pushinteger(L, status);
    lua_pushstring(L, err);
    return 3;
}

static int h_tostring(lua_State *L)
{
    Handle *h = check(L);
    if (h->s)
        lua_pushfstring(L, "rl.service(pid %d, %s)", (int)service_pid(h->s),
                        service_exit_text(h->s));
    else
        lua_pushliteral(L, "rl.service(stopped)");
    return 1;
}

/* A NULL-terminated array of the strings in the list at idx, in a userdata pushed on
 * the stack (collected with it: nothing to free on a raise). The strings are the
 * list's, which the caller keeps on the stack. */
static const char **string_array(lua_State *L, int idx, const char *what)
{
    size_t n = lua_rawlen(L, idx);
    const char **a = lua_newuserdatauv(L, (n + 1) * sizeof *a, 0);
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, idx, (lua_Integer)i) != LUA_TSTRING)
            rl_raise(L, "config", 0, "%s[%d] must be a string", what, (int)i);
        a[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1); /* still referenced by the list */
    }
    a[n] = NULL;
    return a;
}

static int l_start(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    service_params p;
    service_default_params(&p);
    if (lua_getfield(L, 1, "argv") != LUA_TTABLE || lua_rawlen(L, -1) == 0)
        return rl_raise(L, "config", 0, "rl.server: 'argv' must be a non-empty list of strings");
    p.argv = string_array(L, 2, "rl.server: argv"); /* 3 */
    lua_getfield(L, 1, "log");                        /* 4 */
    p.log_path = lua_tostring(L, 4);
    if (!p.log_path)
        return rl_raise(L, "config", 0, "rl.server: 'log' must be a file path");
    lua_getfield(L, 1, "cwd"); /* 5 */
    p.cwd = lua_tostring(L, 5);
    lua_getfield(L, 1, "term_ms"); /* 6 */
    if (lua_isinteger(L, 6))
        p.term_ms = (int)lua_tointeger(L, 6);
    /* The handle exists before the child does, so nothing raises in between. */
    Handle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->s = NULL;
    luaL_setmetatable(L, SERVICE_MT);
    char err[1024];
    service *s;
    int rc = service_start(&s, &p, err, sizeof err);
    if (rc != SERVICE_OK)
        return rl_raise(L, rc == SERVICE_EIO ? "io" : "config", 0, "rl.server: %s", err);
    h->s = s;
    return 1;
}

static int l_free_port(lua_State *L)
{
    int port;
    char err[256];
    if (service_free_port(&port, err, sizeof err) != SERVICE_OK)
        return rl_raise(L, "io", 0, "rl.server: %s", err);
    lua_pushinteger(L, port);
    return 1;
}

static const luaL_Reg methods[] = {
    {"stop", h_stop},
    {"pid", h_pid},
    {"running", h_running},
    {"exit_text", h_exit_text},
    {"wait_ready", h_wait_ready},
    {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"start", l_start},
    {"free_port", l_free_port},
    {NULL, NULL},
};

int luaopen_rl_service(lua_State *L)
{
    if (luaL_newmetatable(L, SERVICE_MT)) {
        lua_pushcfunction(L, h_stop);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, h_stop);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, h_tostring);
        lua_setfield(L, -2, "__tostring");
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    return 1;
}

/* lrl.h — what the binding files (host/l*.c) share: the rl error type and the
 * registration of C submodules. Only bindings include lua.h; only they raise. */
#ifndef RLHOST_LRL_H
#define RLHOST_LRL_H

#include <lauxlib.h>
#include <lua.h>

/* Metatable of error values raised by primitives: tables
 * {kind=, message=, retryable=, where=, ...} whose __tostring prints
 * "WHERE: KIND error: MESSAGE". */
#define RL_ERROR_MT "rl.error"

/* Push a new error table. `level` is as for luaL_where (1 = the Lua function that
 * called the C function raising, 0 = no position). Kinds in use: config, usage,
 * parse, value, io, timeout, crash, http, rate_limit, oom, interrupted, internal. */
void rl_pusherror(lua_State *L, int level, const char *kind, int retryable, const char *fmt,
                  ...);
/* Push an error as rl_pusherror does (level 1) and raise it. Never returns. */
int rl_raise(lua_State *L, const char *kind, int retryable, const char *fmt, ...);
/* Ensure the rl.error metatable exists (called by luaopen_rl_core). */
void rl_error_init(lua_State *L);

/* C submodules, each returning a table; merged into `rl` by lua/rl/init.lua. */
int luaopen_rl_core(lua_State *L);
int luaopen_rl_json(lua_State *L);
int luaopen_rl_endpoint(lua_State *L), luaopen_rl_cache(lua_State *L), luaopen_rl_rewards(lua_State *L);
int luaopen_rl_fs(lua_State *L);     /* host/lfs.c */
int luaopen_rl_random(lua_State *L); /* host/lrandom.c */
int luaopen_rl_cmodel(lua_State *L); /* host/lmodel.c */
int luaopen_rl_service(lua_State *L); /* host/lservice.c */

/* The JSON bridge for other bindings. Both raise on failure (kind "value" for
 * values JSON cannot carry, "parse" for bad text, naming the key path or byte
 * offset) and hold no C memory across the raise.
 *
 * ljson_encode: encode the value at idx and push the text as a Lua string;
 * returns a pointer into it (valid while the string stays on the stack).
 * ljson_decode: decode s[0..n) and push the value; s must stay valid during the
 * call (keep it on the Lua stack if it came from C). */
#define LJSON_SORT_KEYS 1    /* objects with keys in byte order (reproducible output) */
#define LJSON_NONFINITE 2    /* NaN/Infinity allowed (the engine channel only) */
#define LJSON_REPLACE_UTF8 4 /* invalid UTF-8 becomes U+FFFD instead of an error */
const char *ljson_encode(lua_State *L, int idx, int flags, size_t *len);
void ljson_decode(lua_State *L, const char *s, size_t n, int flags);

#endif

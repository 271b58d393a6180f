/* runtime.h — the embedded Lua state: creation, protected calls with a traceback
 * handler, error reports and the exit statuses they map to. */
#ifndef RLHOST_RUNTIME_H
#define RLHOST_RUNTIME_H

#include <lua.h>

/* Exit statuses (README, --help). */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

/* A new state with the standard libraries, the rl C modules preloaded, the
 * registry's rl.home set and package.path pointing at <home>/lua and `script_dir`
 * (NULL: none). A memory limit in bytes applies when `mem_limit` > 0. NULL when
 * the state cannot be made. */
lua_State *rt_new(const char *home, const char *script_dir, size_t mem_limit);
void rt_close(lua_State *L);
/* Call the function below `narg` arguments through lua_pcall with the traceback
 * message handler and SIGINT handling. Returns the lua_pcall status. */
int rt_docall(lua_State *L, int narg, int nres);
/* Print the error on top of the stack to stderr (message first, then the traceback
 * unless it is a configuration error) and pop it. Returns the exit status it maps
 * to: 2 for kind config/usage, 130 for kind interrupted, else 1. */
int rt_report(lua_State *L, int status);
/* Print a load (syntax, missing file) error and pop it. Returns EXIT_USAGE. */
int rt_report_load(lua_State *L);

#endif

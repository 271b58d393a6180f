/* repl.h — `rlhost -i`: an interactive loop in the manner of lua.c. */
#ifndef RLHOST_REPL_H
#define RLHOST_REPL_H

#include <lua.h>

/* Read, evaluate, print until end of input. Expressions print their values;
 * incomplete statements continue on the next line; `rl` is a global. */
void repl_run(lua_State *L);

#endif

/* repl.h — `rlhost -i`: an interactive loop in the manner of lua.c, with values
 * pretty-printed, Tab completion of names and history in ~/.rlhost_history (with
 * GNU readline on a terminal), a `help` command, and errors reported at the line
 * typed. The Lua half is lua/rl/repl.lua. */
#ifndef RLHOST_REPL_H
#define RLHOST_REPL_H

#include <lua.h>

/* Read, evaluate, print until end of input. Expressions print their values;
 * incomplete statements continue on the next line; `rl` is a global. */
void repl_run(lua_State *L);

/* Stack: the recipe's loaded chunk (left in place). When that chunk returns, its
 * top-level locals are copied into globals for the REPL that follows. */
void repl_keep_locals(lua_State *L);

#endif

/* home.h — where rlhost finds its Lua library, engine scripts and recipes.
 * Plain C.
 *
 * The home is $RLHOST_HOME when set; otherwise it is found from the executable's
 * own path: <bin>/.. when that holds lua/rl/init.lua (the source tree, with the
 * binary in build/), else <bin>/../share/rlhost (an installed tree). So the binary
 * works from any working directory. */
#ifndef RLHOST_HOME_H
#define RLHOST_HOME_H

#include <stddef.h>

/* Fill out with the home directory (no trailing slash). 0 ok; -1 with err filled. */
int home_find(char *out, size_t outlen, char *err, size_t errlen);
/* The Python virtual environment: $RLHOST_VENV, else <home>/.venv, else the path
 * written in <home>/venv by `make install`. 0 ok; -1 with err filled. */
int home_venv(const char *home, char *out, size_t outlen, char *err, size_t errlen);
/* The recipe file for `name` as typed on the command line: `name` itself when it
 * is a file; else a bare name (`sft`, `sft.lua`) is <home>/recipes/NAME.lua and a
 * relative path (`recipes/sft.lua`) is taken under <home>, so shipped recipes run
 * from any directory. 0 with the path in out; -1 with err naming every place
 * looked at. */
int home_recipe(const char *home, const char *name, char *out, size_t outlen, char *err,
                size_t errlen);

#endif

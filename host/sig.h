/* sig.h — SIGINT as a request, not a kill: the first one asks the recipe to finish
 * its step (rl.interrupted()), the second stops it at once. Plain C.
 *
 * Waits in the core (HTTP transfers, worker replies, child processes) poll
 * sig_level() and give up when it reaches 2, so a second Ctrl-C is never stuck
 * behind a slow request. */
#ifndef RLHOST_SIG_H
#define RLHOST_SIG_H

/* Install the SIGINT handler. `on_second` runs inside the handler on the second
 * SIGINT and must be async-signal-safe (lua_sethook is). Also ignores SIGXFSZ, so
 * a write over the file-size limit fails with EFBIG instead of killing the host. */
void sig_install(void (*on_second)(void));
/* Restore the default action (used before re-raising to die by the signal). */
void sig_restore(void);
/* 0: no SIGINT yet; 1: one (finish up); 2 or more: stop now. */
int sig_level(void);
/* Forget earlier SIGINTs (tests). */
void sig_reset(void);

#endif

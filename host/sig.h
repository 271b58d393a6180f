/* sig.h — SIGINT, SIGTERM and SIGHUP as a request, not a kill: the first one asks the
 * recipe to finish its step (rl.interrupted()) and checkpoint, the second stops it at
 * once. The exit status then names the first signal the shell way (128 + its number:
 * 130 SIGINT, 143 SIGTERM, 129 SIGHUP). Plain C.
 *
 * Waits in the core (HTTP transfers, worker replies, child processes) poll
 * sig_level() and give up when it reaches 2, so a second signal is never stuck
 * behind a slow request. */
#ifndef RLHOST_SIG_H
#define RLHOST_SIG_H

/* Install the handler for SIGINT, SIGTERM and SIGHUP. `on_second` runs inside the
 * handler on the second of them and must be async-signal-safe (lua_sethook is).
 * Also ignores SIGXFSZ, so a write over the file-size limit fails with EFBIG
 * instead of killing the host. */
void sig_install(void (*on_second)(void));
/* Restore the default actions (used before re-raising to die by the signal). */
void sig_restore(void);
/* 0: no signal yet; 1: one (finish up); 2 or more: stop now. */
int sig_level(void);
/* The first signal received (SIGINT, SIGTERM or SIGHUP), 0 if none. */
int sig_first(void);
/* Its name without "SIG" ("INT", "TERM", "HUP"), "" if none. */
const char *sig_first_name(void);
/* The exit status for a run stopped by a signal: 128 + sig_first() (130 if none). */
int sig_exit_status(void);
/* Forget earlier signals (tests, the REPL). */
void sig_reset(void);

#endif

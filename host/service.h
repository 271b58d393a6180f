/* service.h — long-running child processes that a recipe starts and talks to over the
 * network (an OpenAI-compatible server: llama.cpp's, vLLM, a test server). Plain C
 * (no lua.h).
 *
 * Unlike host/proc.h (a child on pipes speaking a line protocol), a service writes
 * its stdout and stderr to a log file and reads /dev/null, so nothing has to drain
 * it. It runs in its own process group (a Ctrl-C at the terminal reaches the host
 * only; stopping signals the whole group) and never outlives the host: it is started
 * with PR_SET_PDEATHSIG = SIGKILL (armed between fork and exec, and checked against a
 * host that died before it was armed), so a host killed by SIGKILL takes it along.
 * That signal reaches the service's own process only: children the service forks
 * are stopped with the group by service_stop, not by the host's death.
 *
 * Waits are bounded and give up at sig_level() >= 2 (a second Ctrl-C). */
#ifndef RLHOST_SERVICE_H
#define RLHOST_SERVICE_H

#include <stddef.h>
#include <sys/types.h>

enum {
    SERVICE_OK = 0,
    SERVICE_ENOMEM = -1,   /* allocation failed */
    SERVICE_ESPAWN = -2,   /* the program could not be started (err says why) */
    SERVICE_ETIMEOUT = -3, /* not ready by the deadline */
    SERVICE_EDEAD = -4,    /* the service exited (before it was ready) */
    SERVICE_EINTR = -5,    /* a second SIGINT ended the wait */
    SERVICE_EIO = -6,      /* a system call failed (err says which) */
};

typedef struct service service;

typedef struct service_params {
    const char *const *argv; /* argv[0]: a path, or a name looked up on PATH; the
                                child gets the host's environment (rl.server sets
                                more through env(1)) */
    const char *cwd;         /* working directory of the child; NULL = the host's */
    const char *log_path;    /* stdout and stderr are appended here (created 0644) */
    int term_ms;             /* on stop: SIGTERM to the group, wait this long, SIGKILL */
} service_params;

void service_default_params(service_params *p);

/* Start the program. On success *out owns it (service_free). A program that cannot
 * be executed (not found, not executable) is SERVICE_ESPAWN with the reason, and no
 * child is left behind. */
int service_start(service **out, const service_params *p, char *err, size_t errlen);

pid_t service_pid(const service *s);
/* 1 while the service runs (reaps it without blocking once it exited). */
int service_running(service *s);
/* "running", or how it ended ("exited with status 1", "killed by signal SIGKILL"). */
const char *service_exit_text(const service *s);

/* Poll `url` with HTTP GET (each attempt at most probe_ms) until it answers 200, the
 * service exits (SERVICE_EDEAD), timeout_ms pass (SERVICE_ETIMEOUT; *last_status is
 * the last HTTP status seen, 0 for none, and err the last failure) or a second SIGINT
 * arrives (SERVICE_EINTR). */
int service_wait_ready(service *s, const char *url, long timeout_ms, long probe_ms,
                       long *last_status, char *err, size_t errlen);

/* Stop: SIGTERM to the process group, wait up to term_ms for the service to exit,
 * then SIGKILL to the group, and reap. Idempotent. Returns the wait status, or -1 if
 * it had already been reaped. */
int service_stop(service *s);

/* Stop (if running) and free. NULL is a no-op. */
void service_free(service *s);

/* A TCP port on 127.0.0.1 that was free when asked (the kernel's choice for port 0).
 * Another process may take it before the service binds it: callers that can, retry. */
int service_free_port(int *port, char *err, size_t errlen);

#endif

/* proc.h — child processes over pipes, with deadlines. Plain C (no lua.h).
 *
 * A proc is one child with its stdin and stdout as pipes for a line protocol (the
 * engine worker speaks JSON Lines) and its stderr read line by line, each line handed
 * to a log callback and kept in a ring of the last PROC_TAIL_LINES lines for crash
 * reports. The child runs in its own process group, so a Ctrl-C at the terminal
 * reaches the host only; the host decides when the child stops. The child's
 * environment has RLHOST_PARENT_PID=<the host's pid>: posix_spawn cannot arm
 * PR_SET_PDEATHSIG, so a child that must not outlive a host killed by SIGKILL arms
 * it itself and exits if getppid() already differs (scripts/rlengine/worker.py).
 *
 * Every wait polls in bounded slices and gives up with PROC_EINTR once sig_level()
 * (host/sig.h) reaches 2. Every descriptor is close-on-exec. SIGPIPE never reaches
 * the host: a write to a dead child is a status, not a signal. */
#ifndef RLHOST_PROC_H
#define RLHOST_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum {
    PROC_OK = 0,
    PROC_ENOMEM = -1,   /* allocation failed */
    PROC_ESPAWN = -2,   /* the child could not be started (err says why) */
    PROC_ETIMEOUT = -3, /* the deadline passed before a whole line arrived */
    PROC_EINTR = -4,    /* a second SIGINT/SIGTERM/SIGHUP (sig_level() >= 2) ended it */
    PROC_EDEAD = -5,    /* the child closed its stdout or died; see proc_exit_text() */
    PROC_ELONG = -6,    /* a line longer than max_line (the rest of it is dropped) */
    PROC_EIO = -7,      /* a system call failed (err says which) */
};

/* ---- line splitting (no I/O; a fuzz target) --------------------------------------
 *
 * Bytes go in as they arrive, in pieces of any size; whole lines come out. A line
 * longer than `max` is cut: lines_next returns its first `max` bytes with
 * LINES_LONG and drops the rest up to its newline, so the stream stays in step. */
typedef struct lines {
    char *p;       /* buffered bytes p[start..len) */
    size_t start;  /* first byte not yet returned */
    size_t len;    /* bytes in use */
    size_t cap;    /* bytes allocated */
    size_t max;    /* longest line returned whole (without its newline) */
    int skipping;  /* inside the dropped tail of an overlong line */
} lines;

enum { LINES_NONE = 0, LINES_LINE = 1, LINES_LONG = 2 };

void lines_init(lines *lb, size_t max);
void lines_free(lines *lb);
/* Append n bytes. Returns 0 or PROC_ENOMEM. Lines returned earlier by lines_next
 * become invalid. */
int lines_feed(lines *lb, const char *data, size_t n);
/* The next whole line: *line and *len point into the buffer (no newline; a trailing
 * '\r' is kept), valid until the next lines_feed. Returns LINES_LINE, LINES_LONG
 * (first `max` bytes of an overlong line) or LINES_NONE (need more bytes). */
int lines_next(lines *lb, const char **line, size_t *len);
/* Bytes buffered that are not yet a whole line (a partial line at end of input). */
size_t lines_pending(const lines *lb);

/* ---- processes ----------------------------------------------------------------- */

#define PROC_TAIL_LINES 20

typedef struct proc proc;

typedef struct proc_params {
    const char *const *argv; /* argv[0] is the file executed: a path, no PATH search */
    const char *const *env;  /* "NAME=VALUE" entries set over the host's environment;
                                NULL-terminated; may be NULL */
    const char *cwd;         /* working directory of the child; NULL = the host's */
    size_t max_line;         /* longest stdout line accepted (bytes) */
    size_t max_log_line;     /* stderr lines are cut at this length */
    int grace_ms;            /* on close: wait this long after end of input */
    int term_ms;             /* then this long after SIGTERM before SIGKILL */
    /* Called with each stderr line of the child (no newline), from inside the proc_*
     * call that read it. NULL: lines only go to the tail ring. */
    void (*on_log)(void *ud, pid_t pid, const char *line, size_t len);
    void *log_ud;
} proc_params;

void proc_default_params(proc_params *p);

/* Start a child. On success *out owns it (free with proc_close). */
int proc_spawn(proc **out, const proc_params *p, char *err, size_t errlen);

/* Milliseconds on the monotonic clock, for deadlines. */
int64_t proc_now_ms(void);

/* Write all n bytes to the child's stdin by `deadline_ms` (proc_now_ms() based; < 0 =
 * none), reading its stderr meanwhile so neither side can block the other. */
int proc_write(proc *pr, const void *buf, size_t n, int64_t deadline_ms, char *err,
               size_t errlen);
/* Read the next stdout line (no newline) by the deadline; *line is valid until the
 * next call on pr. PROC_EDEAD when the child closed stdout: it is reaped (waiting at
 * most a grace period, then killed) and proc_exit_text() describes how it ended. */
int proc_read_line(proc *pr, const char **line, size_t *len, int64_t deadline_ms, char *err,
                   size_t errlen);

/* The child's pid (still valid after it died, until proc_close). */
pid_t proc_pid(const proc *pr);
/* 1 while the child has not been reaped. */
int proc_running(const proc *pr);
/* How the child ended, e.g. "exited with status 3" or "killed by signal SIGKILL";
 * "running" before then. */
const char *proc_exit_text(const proc *pr);
/* Raw wait status (valid once proc_running() is 0). */
int proc_wait_status(const proc *pr);
/* The last stderr lines (oldest first, newline-separated) into out. */
void proc_stderr_tail(const proc *pr, char *out, size_t outlen);

/* Forward whatever stderr the child has written, without waiting. */
void proc_drain_log(proc *pr);

/* Stop now: SIGKILL to the child's process group, then reap. */
void proc_kill(proc *pr);

/* End the child and free everything: close its stdin (end of input), wait grace_ms
 * for it to exit, SIGTERM its process group, wait term_ms, SIGKILL, reap. Returns
 * the wait status (or -1 if it was already reaped or could not be). NULL is a no-op. */
int proc_close(proc *pr);

#endif

/* sandbox.h — run an untrusted program (generated code) in a child process with
 * limits, for rewards that execute code.
 *
 * Plain C. What the child gets:
 *  - an empty temporary working directory holding only the files given, removed
 *    afterwards;
 *  - resource limits: CPU seconds, address space, file size, process count, open
 *    files, no core dumps;
 *  - a wall-clock deadline after which the whole process group is SIGKILLed;
 *  - when the host runs as root (or may otherwise create namespaces): new network,
 *    mount and PID namespaces. Then the program has no network at all (not even
 *    loopback: the new namespace's lo is down), /tmp, /var/tmp, /dev/shm and
 *    /run/lock (the usual world-writable places) are private throwaway tmpfs mounts, every process it starts dies with it, and it
 *    runs as uid/gid 65534 (nobody), so the rest of the file system is read-only to
 *    it and the process limit is enforced (the kernel exempts root from it).
 *  - Where namespaces cannot be created (an unprivileged host without user
 *    namespaces) the program runs with the HOST'S NETWORK ACCESS and user id:
 *    limits and the deadline still apply, but it can open connections and write
 *    wherever the host user can. sandbox_result.isolated says which case applied;
 *    sandbox_params.require_isolation refuses to run in the second case.
 *  - captured stdout/stderr up to max_output bytes each; more ends the run.
 */
#ifndef RLHOST_SANDBOX_H
#define RLHOST_SANDBOX_H

#include <stddef.h>

/* Why a run ended (sandbox_result.reason). */
enum {
    SB_OK = 0,      /* exited with status 0 */
    SB_EXIT,        /* exited with a non-zero status */
    SB_SIGNAL,      /* killed by a signal not explained below */
    SB_TIMEOUT,     /* the wall-clock deadline passed */
    SB_CPU,         /* the CPU-time limit was reached */
    SB_MEMORY,      /* an allocation failed under the address-space limit */
    SB_FILE_SIZE,   /* the file-size limit was reached */
    SB_OUTPUT,      /* stdout or stderr exceeded max_output */
    SB_SETUP,       /* the sandbox could not be set up, or the program not started */
    SB_INTERRUPTED, /* a second SIGINT */
};

typedef struct sandbox_params {
    double cpu_s;          /* CPU seconds (RLIMIT_CPU, rounded up) */
    size_t mem_bytes;      /* address space (RLIMIT_AS) */
    size_t fsize_bytes;    /* largest file it may write (RLIMIT_FSIZE) */
    int nproc;             /* processes for the sandbox user (RLIMIT_NPROC) */
    double wall_s;         /* wall-clock deadline */
    size_t max_output;     /* captured bytes per stream */
    int require_isolation; /* 1: fail with SB_SETUP instead of running unisolated */
    const char *tmp_base;  /* parent of the working directory (NULL: $TMPDIR or /tmp) */
} sandbox_params;

typedef struct sandbox_file {
    const char *name; /* a plain file name (no '/') */
    const char *data;
    size_t len;
} sandbox_file;

typedef struct sandbox_result {
    int reason;          /* SB_* */
    int exit_code;       /* when it exited */
    int signal;          /* when a signal ended it */
    char *out, *err;     /* captured stdout/stderr, NUL-terminated (sandbox_result_free) */
    size_t out_len, err_len;
    double wall_ms;      /* start to end */
    int isolated;        /* 1: namespaces and the unprivileged user applied */
    char detail[256];    /* a sentence for reports */
} sandbox_result;

void sandbox_default_params(sandbox_params *p);

/* Write files into a fresh working directory, run argv[0] (looked up in PATH) there
 * with stdin_data on its stdin, and fill r. Returns 0 when the program ran (whatever
 * its outcome; see r->reason), negative with err filled (and r->reason = SB_SETUP)
 * when it could not. The directory is removed in every case. */
int sandbox_run(const sandbox_params *p, const char *const *argv, const sandbox_file *files,
                int nfiles, const char *stdin_data, size_t stdin_len, sandbox_result *r,
                char *err, size_t errlen);

void sandbox_result_free(sandbox_result *r);

/* "ok", "exit", "signal", "timeout", "cpu", "memory", "file_size", "output",
 * "setup", "interrupted". */
const char *sandbox_reason_name(int reason);

#endif

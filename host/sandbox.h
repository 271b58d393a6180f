/* sandbox.h — run an untrusted program (generated code) in a child process with
 * limits, for rewards that execute code.
 *
 * Plain C. What the child gets:
 *  - an empty temporary working directory holding only the files given, removed
 *    afterwards;
 *  - resource limits: CPU seconds, address space, file size, process count, open
 *    files, no core dumps, and a cap on the total bytes it may write (disk_bytes);
 *  - a wall-clock deadline after which the whole process group is SIGKILLed;
 *  - no sockets: a seccomp filter makes socket() fail (EACCES) for every address
 *    family, so neither the network nor a Unix socket on the file system (whatever
 *    its mode) can be reached; socketpair() works for SOCK_STREAM pairs only, and
 *    io_uring is refused. The filter needs no privileges; where the kernel lacks
 *    seccomp, sandbox_result.no_sockets is 0.
 *  - when the host runs as root (or may otherwise create namespaces): new network,
 *    mount, IPC and PID namespaces. Then the program has no network at all (not even
 *    loopback: the new namespace's lo is down, and abstract Unix sockets belong to
 *    the network namespace), every mount is read-only to it except one tmpfs of
 *    disk_bytes, seen as /tmp (the working directory is /tmp/work), /var/tmp,
 *    /dev/shm and /run/lock, and thrown away afterwards; every process it starts
 *    dies with it, and it runs as uid/gid 65534 (nobody), so the process limit is
 *    enforced (the kernel exempts root from it).
 *  - Where namespaces cannot be created (an unprivileged host without user
 *    namespaces) the program runs with the HOST'S USER ID and file system access:
 *    limits, the socket filter and the deadline still apply, the disk cap is an
 *    accounting check of the working directory only (measured every 100 ms, so a fast
 *    writer may overshoot briefly), and it can write wherever the host user can.
 *    sandbox_result.isolated says which case applied; sandbox_params.require_isolation
 *    refuses to run in the second case (or without the socket filter).
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
    SB_DISK,        /* the total-disk limit (disk_bytes) was reached */
};

typedef struct sandbox_params {
    double cpu_s;          /* CPU seconds (RLIMIT_CPU, rounded up) */
    size_t mem_bytes;      /* address space (RLIMIT_AS) */
    size_t fsize_bytes;    /* largest file it may write (RLIMIT_FSIZE) */
    size_t disk_bytes;     /* all files it may write together, inputs included */
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
    int no_sockets;      /* 1: the seccomp filter refused it every socket */
    int disk_capped;     /* 1: disk_bytes bounds everything it could write (read-only
                          * mounts plus one tmpfs); 0: only its working directory is
                          * counted (unisolated, a kernel without mount_setattr, or
                          * a root that is not a mount point, as in a plain chroot) */
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
 * "setup", "interrupted", "disk". */
const char *sandbox_reason_name(int reason);

#endif

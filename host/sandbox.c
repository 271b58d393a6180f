/* sandbox.c — see sandbox.h.
 *
 * Process layout when isolated (the host may create namespaces):
 *   host ── middle (root, new net+mount namespaces, outside the new PID namespace)
 *             └─ init (PID 1 of the new PID namespace: reaps, relays the status)
 *                  └─ program (uid nobody, rlimits, execs the command)
 * The extra init exists because the kernel ignores default-action signals sent to a
 * namespace's PID 1 (SIGXCPU, SIGXFSZ would not stop it); running the program as PID
 * 2 keeps ordinary signal semantics, and init's exit kills everything left in the
 * namespace, including processes that left the process group. Unisolated, the host's
 * child is the program itself. */
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sig.h"

#define NOBODY 65534

void sandbox_default_params(sandbox_params *p)
{
    p->cpu_s = 5;
    p->mem_bytes = 512u << 20;
    p->fsize_bytes = 16u << 20;
    p->nproc = 32;
    p->wall_s = 10;
    p->max_output = 64u << 10;
    p->require_isolation = 0;
    p->tmp_base = NULL;
}

const char *sandbox_reason_name(int r)
{
    static const char *const names[] = {"ok",     "exit",      "signal", "timeout",
                                        "cpu",    "memory",    "file_size", "output",
                                        "setup",  "interrupted"};
    return r >= 0 && r <= SB_INTERRUPTED ? names[r] : "setup";
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Remove a tree the program may have made hostile (mode 000 directories). */
static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        chmod(path, 0700);
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)) != NULL) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                    continue;
                char sub[PATH_MAX];
                if (snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) < (int)sizeof sub)
                    rm_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* ---- child side: only async-signal-safe calls between fork and exec ---- */

static void report(int fd, char tag, int val)
{
    char b[16];
    int n = 0;
    b[n++] = tag;
    unsigned v = (unsigned)val;
    char d[12];
    int k = 0;
    do {
        d[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && k < 11);
    while (k)
        b[n++] = d[--k];
    b[n++] = ';';
    ssize_t w = write(fd, b, (size_t)n);
    (void)w;
}

static void set_limit(int res, rlim_t soft, rlim_t hard)
{
    struct rlimit rl = {soft, hard};
    setrlimit(res, &rl);
}

static void close_from(int lo, int keep)
{
    for (int fd = lo; fd < 1024; fd++)
        if (fd != keep)
            close(fd);
}

/* The program: limits, unprivileged user, exec. Never returns. */
static void become_program(const sandbox_params *p, const char *const *argv, int st, int isolated)
{
    rlim_t cpu = (rlim_t)(p->cpu_s < 1 ? 1 : p->cpu_s + 0.999);
    set_limit(RLIMIT_CPU, cpu, cpu + 1); /* SIGXCPU first, SIGKILL a second later */
    set_limit(RLIMIT_AS, p->mem_bytes, p->mem_bytes);
    set_limit(RLIMIT_FSIZE, p->fsize_bytes, p->fsize_bytes);
    set_limit(RLIMIT_CORE, 0, 0);
    set_limit(RLIMIT_NOFILE, 64, 64);
    /* RLIMIT_NPROC counts every process of the real user: meaningful for the
     * sandbox's own uid, but for the host's user it would count the user's other
     * processes too (and root is exempt), so it is set only when isolated. */
    if (isolated)
        set_limit(RLIMIT_NPROC, (rlim_t)p->nproc, (rlim_t)p->nproc);
    if (isolated && geteuid() == 0) {
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
            report(st, 'S', errno);
            _exit(127);
        }
    }
    static char *const env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "TMPDIR=/tmp",
                                "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", NULL};
    report(st, isolated ? 'I' : 'U', 0);
    close_from(3, st);
    execvpe(argv[0], (char *const *)argv, env);
    report(st, 'E', errno);
    _exit(127);
}

/* SIGKILL when the parent dies (a host killed by SIGKILL cannot clean up), and exit
 * now if it already has: the check closes the window between fork and prctl. A
 * parent outside the child's PID namespace shows as 0 and cannot be checked. */
static void die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (parent && getppid() != parent)
        _exit(127);
}

static pid_t host_pid; /* set before fork, read by the child */

static void private_tmp(const char *dir)
{
    struct stat s;
    if (stat(dir, &s) == 0 && S_ISDIR(s.st_mode))
        mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777");
}

static void run_child(const sandbox_params *p, const char *const *argv, const char *work,
                      int in, int out, int err, int st)
{
    setpgid(0, 0);
    die_with_parent(host_pid);
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    /* The middle and init never exec, so close-on-exec does not help them: the
     * host's end of the stdin pipe must go now or the program never sees EOF. */
    close_from(3, st);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL); /* the host's handlers (sig.c) must not run in the middle */
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL); /* the host ignores it; ignored stays ignored across exec */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (chdir(work) < 0) {
        report(st, 'S', errno);
        _exit(127);
    }
    int isolated = unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID) == 0;
    if (!isolated) {
        if (p->require_isolation) {
            report(st, 'N', errno);
            _exit(127);
        }
        become_program(p, argv, st, 0);
    }
    /* Mounts made here stay in the new mount namespace. The working directory lives
     * under the real /tmp, which the private tmpfs hides; it is bound back in at
     * /tmp/work so that paths the program derives from getcwd() still resolve. */
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    int wfd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (wfd >= 0 && mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777") == 0) {
        char src[32] = "/proc/self/fd/", digits[12]; /* no stdio between fork and exec */
        int nd = 0, v = wfd, at = 14;
        do {
            digits[nd++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        while (nd)
            src[at++] = digits[--nd];
        src[at] = '\0';
        if (mkdir("/tmp/work", 0755) < 0 || mount(src, "/tmp/work", NULL, MS_BIND, NULL) < 0 ||
            chdir("/tmp/work") < 0) {
            report(st, 'S', errno);
            _exit(127);
        }
    }
    private_tmp("/var/tmp");
    private_tmp("/dev/shm");
    private_tmp("/run/lock");
    pid_t init = fork();
    if (init == 0) /* init's end ends the namespace, and with it the program */
        die_with_parent(0); /* the middle is outside init's PID namespace */
    if (init < 0) {
        report(st, 'S', errno);
        _exit(127);
    }
    if (init > 0) { /* middle: wait for init, exit like it */
        int ws;
        while (waitpid(init, &ws, 0) < 0 && errno == EINTR)
            ;
        _exit(WIFEXITED(ws) ? WEXITSTATUS(ws) : 127);
    }
    pid_t prog = fork();
    if (prog < 0) {
        report(st, 'S', errno);
        _exit(127);
    }
    if (prog == 0)
        become_program(p, argv, st, 1);
    close_from(3, st);
    for (;;) { /* init: reap everything, relay the program's end */
        int ws;
        pid_t w = waitpid(-1, &ws, 0);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            _exit(127);
        if (w != prog)
            continue;
        if (WIFSIGNALED(ws)) {
            report(st, 'K', WTERMSIG(ws));
            _exit(128 + WTERMSIG(ws));
        }
        report(st, 'X', WEXITSTATUS(ws));
        _exit(WEXITSTATUS(ws));
    }
}

/* ---- parent side -------------------------------------------------------- */

typedef struct Cap {
    char *p;
    size_t len, cap, max;
    int over;
} Cap;

static int cap_read(int fd, Cap *c)
{
    char buf[8192];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n == 0 ? 0 : (errno == EAGAIN ? 1 : 0); /* 0: closed */
        size_t take = (size_t)n;
        if (c->len + take > c->max) {
            take = c->max - c->len;
            c->over = 1;
        }
        if (c->len + take + 1 > c->cap) {
            size_t nc = c->cap ? c->cap * 2 : 4096;
            while (nc < c->len + take + 1)
                nc *= 2;
            char *q = realloc(c->p, nc);
            if (!q)
                return 0;
            c->p = q;
            c->cap = nc;
        }
        memcpy(c->p + c->len, buf, take);
        c->len += take;
        c->p[c->len] = '\0';
    }
}

static int has(const Cap *c, const char *needle) { return c->p && strstr(c->p, needle); }

int sandbox_run(const sandbox_params *p, const char *const *argv, const sandbox_file *files,
                int nfiles, const char *stdin_data, size_t stdin_len, sandbox_result *r,
                char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->reason = SB_SETUP;
    err[0] = '\0';
    const char *tmp = p->tmp_base ? p->tmp_base : getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    char base[PATH_MAX], work[PATH_MAX + 8];
    if (snprintf(base, sizeof base, "%s/rlhost-sbx-XXXXXX", tmp) >= (int)sizeof base ||
        !mkdtemp(base)) {
        snprintf(err, errlen, "cannot make a sandbox directory under %s: %s", tmp, strerror(errno));
        return -1;
    }
    snprintf(work, sizeof work, "%s/work", base);
    int root = geteuid() == 0;
    int fds[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    int rc = -1;
    pid_t pid = -1;
    Cap out = {0}, errc = {0}, stc = {0};
    out.max = errc.max = p->max_output;
    stc.max = 256;
    if (mkdir(work, 0700) < 0 || (root && (chmod(base, 0711) < 0 || chown(work, NOBODY, NOBODY) < 0))) {
        snprintf(err, errlen, "cannot prepare the sandbox directory: %s", strerror(errno));
        goto done;
    }
    for (int i = 0; i < nfiles; i++) {
        if (!files[i].name[0] || strchr(files[i].name, '/') || !strcmp(files[i].name, "..")) {
            snprintf(err, errlen, "bad sandbox file name '%s'", files[i].name);
            goto done;
        }
        char path[PATH_MAX * 2];
        snprintf(path, sizeof path, "%s/%s", work, files[i].name);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen, "cannot write %s: %s", files[i].name, strerror(errno));
            goto done;
        }
        size_t off = 0;
        while (off < files[i].len) {
            ssize_t w = write(fd, files[i].data + off, files[i].len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        if (root && fchown(fd, NOBODY, NOBODY) < 0)
            off = (size_t)-1;
        close(fd);
        if (off != files[i].len) {
            snprintf(err, errlen, "cannot write %s", files[i].name);
            goto done;
        }
    }
    /* fds: 0,1 stdin; 2,3 stdout; 4,5 stderr; 6,7 status (close-on-exec) */
    if (pipe2(fds, O_CLOEXEC) < 0 || pipe2(fds + 2, O_CLOEXEC) < 0 ||
        pipe2(fds + 4, O_CLOEXEC) < 0 || pipe2(fds + 6, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto done;
    }
    double t0 = now_ms();
    host_pid = getpid();
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        goto done;
    }
    if (pid == 0)
        run_child(p, argv, work, fds[0], fds[3], fds[5], fds[7]);
    setpgid(pid, pid); /* also here: no race with the kill below */
    close(fds[0]);
    close(fds[3]);
    close(fds[5]);
    close(fds[7]);
    fds[0] = fds[3] = fds[5] = fds[7] = -1;
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    fcntl(fds[2], F_SETFL, O_NONBLOCK);
    fcntl(fds[4], F_SETFL, O_NONBLOCK);
    fcntl(fds[6], F_SETFL, O_NONBLOCK);
    size_t in_off = 0;
    if (stdin_len == 0) {
        close(fds[1]);
        fds[1] = -1;
    }
    int ws = 0, reaped = 0, killed_for = -1;
    double deadline = t0 + p->wall_s * 1000.0;
    while (!reaped) {
        struct pollfd pf[4];
        int np = 0;
        int idx_out = -1, idx_err = -1, idx_st = -1, idx_in = -1;
        if (fds[2] >= 0) { idx_out = np; pf[np++] = (struct pollfd){fds[2], POLLIN, 0}; }
        if (fds[4] >= 0) { idx_err = np; pf[np++] = (struct pollfd){fds[4], POLLIN, 0}; }
        if (fds[6] >= 0) { idx_st = np; pf[np++] = (struct pollfd){fds[6], POLLIN, 0}; }
        if (fds[1] >= 0) { idx_in = np; pf[np++] = (struct pollfd){fds[1], POLLOUT, 0}; }
        poll(pf, (nfds_t)np, 20);
        if (idx_out >= 0 && pf[idx_out].revents && !cap_read(fds[2], &out)) {
            close(fds[2]);
            fds[2] = -1;
        }
        if (idx_err >= 0 && pf[idx_err].revents && !cap_read(fds[4], &errc)) {
            close(fds[4]);
            fds[4] = -1;
        }
        if (idx_st >= 0 && pf[idx_st].revents && !cap_read(fds[6], &stc)) {
            close(fds[6]);
            fds[6] = -1;
        }
        if (idx_in >= 0 && pf[idx_in].revents) {
            ssize_t w = write(fds[1], stdin_data + in_off, stdin_len - in_off);
            if (w > 0)
                in_off += (size_t)w;
            if ((w < 0 && errno != EAGAIN) || in_off == stdin_len) {
                close(fds[1]);
                fds[1] = -1;
            }
        }
        pid_t w = waitpid(pid, &ws, WNOHANG);
        if (w == pid) {
            reaped = 1;
            break;
        }
        if (killed_for >= 0)
            continue;
        if (out.over || errc.over)
            killed_for = SB_OUTPUT;
        else if (now_ms() > deadline)
            killed_for = SB_TIMEOUT;
        else if (sig_level() >= 2)
            killed_for = SB_INTERRUPTED;
        if (killed_for >= 0)
            kill(-pid, SIGKILL);
    }
    kill(-pid, SIGKILL); /* stragglers in the group (unisolated case) */
    /* What is already in the pipes; anything still holding them open is dead or dying. */
    if (fds[2] >= 0)
        cap_read(fds[2], &out);
    if (fds[4] >= 0)
        cap_read(fds[4], &errc);
    if (fds[6] >= 0)
        cap_read(fds[6], &stc);
    r->wall_ms = now_ms() - t0;
    r->isolated = stc.p && strchr(stc.p, 'I') != NULL;
    int exec_errno = -1, setup_errno = -1, relayed_sig = 0, noiso = 0;
    for (const char *s = stc.p; s && *s;) {
        char tag = *s++;
        int v = atoi(s);
        if (tag == 'E') exec_errno = v;
        if (tag == 'S') setup_errno = v;
        if (tag == 'N') noiso = 1;
        if (tag == 'K') relayed_sig = v;
        const char *semi = strchr(s, ';');
        s = semi ? semi + 1 : s + strlen(s);
    }
    r->exit_code = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
    r->signal = relayed_sig ? relayed_sig : WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
    if (relayed_sig)
        r->exit_code = -1;
    rc = 0;
    if (killed_for >= 0) {
        r->reason = killed_for;
        r->signal = SIGKILL;
        r->exit_code = -1;
        snprintf(r->detail, sizeof r->detail, "%s",
                 killed_for == SB_TIMEOUT ? "killed at the wall-clock deadline"
                 : killed_for == SB_OUTPUT ? "killed: output over the capture limit"
                                           : "killed: interrupted by a second SIGINT");
    } else if (noiso) {
        r->reason = SB_SETUP;
        snprintf(err, errlen, "no isolation available (network namespace refused) and "
                              "require_isolation is set");
        rc = -1;
    } else if (setup_errno >= 0 || exec_errno >= 0) {
        r->reason = SB_SETUP;
        snprintf(err, errlen, "%s: %s", exec_errno >= 0 ? "cannot run the program" : "sandbox setup",
                 strerror(exec_errno >= 0 ? exec_errno : setup_errno));
        if (exec_errno >= 0 && argv[0])
            snprintf(err, errlen, "cannot run %s: %s", argv[0], strerror(exec_errno));
        rc = -1;
    } else if (r->signal) {
        int s = r->signal;
        r->reason = s == SIGXCPU || (s == SIGKILL && r->wall_ms >= p->cpu_s * 1000) ? SB_CPU
                    : s == SIGXFSZ                                              ? SB_FILE_SIZE
                    : (s == SIGSEGV || s == SIGABRT || s == SIGBUS) &&
                            (has(&errc, "alloc") || has(&errc, "memory"))
                        ? SB_MEMORY
                        : SB_SIGNAL;
        snprintf(r->detail, sizeof r->detail, "killed by signal %d (%s)", s, strsignal(s));
    } else if (r->exit_code == 0) {
        r->reason = SB_OK;
    } else {
        /* Limits that surface as failed calls rather than signals: name them. */
        r->reason = has(&errc, "MemoryError") || has(&errc, "Cannot allocate memory") ||
                            has(&errc, "bad_alloc") || has(&errc, "out of memory")
                        ? SB_MEMORY
                    : has(&errc, "File too large") ? SB_FILE_SIZE
                                                   : SB_EXIT;
        snprintf(r->detail, sizeof r->detail, "exited with status %d", r->exit_code);
    }
    if (r->reason == SB_MEMORY)
        snprintf(r->detail, sizeof r->detail, "ran out of memory under the %zu MiB limit",
                 p->mem_bytes >> 20);
    else if (r->reason == SB_CPU)
        snprintf(r->detail, sizeof r->detail, "CPU limit of %g s reached", p->cpu_s);
    else if (r->reason == SB_FILE_SIZE)
        snprintf(r->detail, sizeof r->detail, "file size limit of %zu bytes reached",
                 p->fsize_bytes);
    r->out = out.p ? out.p : calloc(1, 1);
    r->out_len = out.len;
    r->err = errc.p ? errc.p : calloc(1, 1);
    r->err_len = errc.len;
    out.p = errc.p = NULL;
done:
    for (int i = 0; i < 8; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(out.p);
    free(errc.p);
    free(stc.p);
    rm_tree(base);
    return rc;
}

void sandbox_result_free(sandbox_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

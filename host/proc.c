/* proc.c — see proc.h. posix_spawn rather than fork: the host may hold an embedded
 * interpreter with torch threads and gigabytes mapped, and a vfork-style spawn neither
 * copies that nor runs anything non-async-signal-safe in a forked copy of it. */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sig.h"

extern char **environ;

#define SLICE_MS 100 /* longest single poll: bounds how late a 2nd Ctrl-C is seen */
#define TAIL_LEN 256 /* bytes kept of each stderr line in the tail ring */

/* ---- lines ---------------------------------------------------------------------- */

void lines_init(lines *lb, size_t max)
{
    memset(lb, 0, sizeof *lb);
    lb->max = max ? max : 1;
}

void lines_free(lines *lb)
{
    free(lb->p);
    lb->p = NULL;
    lb->start = lb->len = lb->cap = 0;
    lb->skipping = 0;
}

int lines_feed(lines *lb, const char *data, size_t n)
{
    if (n == 0)
        return 0;
    /* Reclaim the returned prefix before growing; moving only when it is at least
     * half the buffer keeps the cost amortised linear. */
    if (lb->start && (lb->start == lb->len || lb->start >= lb->cap / 2)) {
        memmove(lb->p, lb->p + lb->start, lb->len - lb->start);
        lb->len -= lb->start;
        lb->start = 0;
    }
    if (lb->len + n < lb->len)
        return PROC_ENOMEM;
    if (lb->len + n > lb->cap) {
        size_t cap = lb->cap ? lb->cap : 4096;
        while (cap < lb->len + n) {
            if (cap > (size_t)-1 / 2)
                return PROC_ENOMEM;
            cap *= 2;
        }
        char *p = realloc(lb->p, cap);
        if (!p)
            return PROC_ENOMEM;
        lb->p = p;
        lb->cap = cap;
    }
    memcpy(lb->p + lb->len, data, n);
    lb->len += n;
    return 0;
}

int lines_next(lines *lb, const char **line, size_t *len)
{
    for (;;) {
        char *a = lb->p + lb->start;
        size_t avail = lb->len - lb->start;
        if (avail == 0)
            return LINES_NONE;
        char *nl = memchr(a, '\n', avail);
        if (lb->skipping) {
            if (!nl) {
                lb->start = lb->len; /* drop it all: an overlong line must not grow us */
                return LINES_NONE;
            }
            lb->start = (size_t)(nl + 1 - lb->p);
            lb->skipping = 0;
            continue;
        }
        if (nl) {
            size_t n = (size_t)(nl - a);
            lb->start = (size_t)(nl + 1 - lb->p);
            *line = a;
            *len = n > lb->max ? lb->max : n;
            return n > lb->max ? LINES_LONG : LINES_LINE;
        }
        if (avail > lb->max) {
            *line = a;
            *len = lb->max;
            lb->start = lb->len;
            lb->skipping = 1;
            return LINES_LONG;
        }
        return LINES_NONE;
    }
}

size_t lines_pending(const lines *lb) { return lb->skipping ? 0 : lb->len - lb->start; }

/* ---- processes ------------------------------------------------------------------ */

struct proc {
    pid_t pid;
    int in_fd, out_fd, err_fd; /* host ends; -1 once closed */
    int reaped, status;
    lines out, err;
    proc_params prm;
    char exit_text[96];
    char tail[PROC_TAIL_LINES][TAIL_LEN];
    int tail_next, tail_count;
};

void proc_default_params(proc_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_line = (size_t)256 << 20; /* engine replies carry every token's log-prob */
    p->max_log_line = 4096;
    p->grace_ms = 5000;
    p->term_ms = 2000;
}

int64_t proc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pid_t proc_pid(const proc *pr) { return pr->pid; }
int proc_running(const proc *pr) { return !pr->reaped; }
int proc_wait_status(const proc *pr) { return pr->status; }
const char *proc_exit_text(const proc *pr) { return pr->reaped ? pr->exit_text : "running"; }

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static const char *signame(int sig, char *buf, size_t n)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    const char *a = sigabbrev_np(sig);
    if (a) {
        snprintf(buf, n, "SIG%s", a);
        return buf;
    }
#endif
    snprintf(buf, n, "%d", sig);
    return buf;
}

static void set_reaped(proc *pr, int status)
{
    pr->reaped = 1;
    pr->status = status;
    char sn[32];
    if (WIFEXITED(status))
        snprintf(pr->exit_text, sizeof pr->exit_text, "exited with status %d",
                 WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(pr->exit_text, sizeof pr->exit_text, "killed by signal %s",
                 signame(WTERMSIG(status), sn, sizeof sn));
    else
        snprintf(pr->exit_text, sizeof pr->exit_text, "ended (wait status %d)", status);
}

/* Reap without blocking; 1 if the child is gone. */
static int try_reap(proc *pr)
{
    if (pr->reaped)
        return 1;
    int st;
    pid_t r;
    do
        r = waitpid(pr->pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == pr->pid) {
        set_reaped(pr, st);
        return 1;
    }
    if (r < 0 && errno == ECHILD) { /* reaped elsewhere (a SIGCHLD handler): not ours now */
        pr->reaped = 1;
        pr->status = -1;
        snprintf(pr->exit_text, sizeof pr->exit_text, "ended (reaped elsewhere)");
        return 1;
    }
    return 0;
}

static void log_line(proc *pr, const char *s, size_t n)
{
    while (n && (s[n - 1] == '\r'))
        n--;
    char *slot = pr->tail[pr->tail_next];
    size_t k = n < TAIL_LEN - 1 ? n : TAIL_LEN - 1;
    memcpy(slot, s, k);
    slot[k] = '\0';
    pr->tail_next = (pr->tail_next + 1) % PROC_TAIL_LINES;
    if (pr->tail_count < PROC_TAIL_LINES)
        pr->tail_count++;
    if (pr->prm.on_log)
        pr->prm.on_log(pr->prm.log_ud, pr->pid, s, n);
}

static void flush_log_lines(proc *pr)
{
    const char *l;
    size_t n;
    int r;
    while ((r = lines_next(&pr->err, &l, &n)) != LINES_NONE)
        log_line(pr, l, n);
}

/* Read what stderr has now (non-blocking); at end of file close it and pass on a
 * last partial line. */
static void read_err(proc *pr)
{
    char buf[8192];
    while (pr->err_fd >= 0) {
        ssize_t r = read(pr->err_fd, buf, sizeof buf);
        if (r > 0) {
            if (lines_feed(&pr->err, buf, (size_t)r) != 0) {
                lines_free(&pr->err); /* out of memory: lose log lines, not the call */
                lines_init(&pr->err, pr->prm.max_log_line);
            }
            flush_log_lines(pr);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        close_fd(&pr->err_fd); /* EOF or error */
        size_t left = lines_pending(&pr->err);
        if (left)
            log_line(pr, pr->err.p + pr->err.start, left);
        lines_free(&pr->err);
        return;
    }
}

void proc_drain_log(proc *pr)
{
    if (pr)
        read_err(pr);
}

void proc_stderr_tail(const proc *pr, char *out, size_t outlen)
{
    if (!outlen)
        return;
    out[0] = '\0';
    size_t k = 0;
    int first = (pr->tail_next - pr->tail_count + PROC_TAIL_LINES) % PROC_TAIL_LINES;
    for (int i = 0; i < pr->tail_count && k + 1 < outlen; i++) {
        const char *s = pr->tail[(first + i) % PROC_TAIL_LINES];
        int w = snprintf(out + k, outlen - k, "%s%s", i ? "\n" : "", s);
        if (w < 0)
            break;
        k += (size_t)w;
    }
}

/* Wait up to ms for the child to exit, forwarding its stderr; 1 if reaped. */
static int wait_exit(proc *pr, int ms)
{
    int64_t end = proc_now_ms() + ms;
    for (;;) {
        read_err(pr);
        if (try_reap(pr))
            return 1;
        int64_t left = end - proc_now_ms();
        if (left <= 0)
            return 0;
        if (pr->err_fd >= 0) {
            struct pollfd pf = {.fd = pr->err_fd, .events = POLLIN};
            poll(&pf, 1, left < 10 ? (int)left : 10);
        } else {
            struct timespec ts = {0, 5 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

static void kill_group(proc *pr, int sig)
{
    if (!pr->reaped && kill(-pr->pid, sig) != 0)
        kill(pr->pid, sig); /* the group may not exist yet if setpgid raced */
}

static void reap_blocking(proc *pr)
{
    while (!pr->reaped) {
        int st;
        pid_t r = waitpid(pr->pid, &st, 0);
        if (r == pr->pid)
            set_reaped(pr, st);
        else if (r < 0 && errno != EINTR)
            try_reap(pr);
    }
}

void proc_kill(proc *pr)
{
    if (!pr || pr->reaped)
        return;
    kill_group(pr, SIGKILL);
    reap_blocking(pr);
    read_err(pr);
}

/* The child closed stdout: it is ending (or broken). Collect how it ended. */
static void finish_dead(proc *pr)
{
    if (!wait_exit(pr, pr->prm.grace_ms)) {
        kill_group(pr, SIGKILL);
        reap_blocking(pr);
    }
    read_err(pr);
}

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *a)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, a, strerror(errno));
    return code;
}

/* Move fd to a number above 2 (so that dup2 onto 0..2 in the child always clears
 * close-on-exec) and make it close-on-exec. */
static int high_fd(int fd)
{
    if (fd > 2)
        return fd;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return n;
}

static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    fds[0] = high_fd(fds[0]);
    fds[1] = high_fd(fds[1]);
    if (fds[0] < 0 || fds[1] < 0) {
        if (fds[0] >= 0)
            close(fds[0]);
        if (fds[1] >= 0)
            close(fds[1]);
        return -1;
    }
    return 0;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* environ with `set` entries, then `own`, replacing same-named ones; a malloc'd array
 * of borrowed strings. */
static char **build_env(const char *const *set, const char *own)
{
    size_t ne = 0, ns = 0;
    while (environ && environ[ne])
        ne++;
    while (set && set[ns])
        ns++;
    char **env = malloc((ne + ns + 2) * sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < ne; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int replaced = strncmp(own, environ[i], nl) == 0 && own[nl] == '=';
        for (size_t j = 0; j < ns && !replaced; j++)
            replaced = strncmp(set[j], environ[i], nl) == 0 && set[j][nl] == '=';
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < ns; j++)
        env[k++] = (char *)set[j];
    env[k++] = (char *)own;
    env[k] = NULL;
    return env;
}

/* The child's side of a spawn: pipes onto 0..2, no other inherited descriptor, its
 * working directory, its own process group, default signal dispositions and mask. */
static void spawn_actions(posix_spawn_file_actions_t *fa, posix_spawnattr_t *at,
                          const proc_params *p, int in0, int out1, int err1)
{
    posix_spawn_file_actions_adddup2(fa, in0, 0);
    posix_spawn_file_actions_adddup2(fa, out1, 1);
    posix_spawn_file_actions_adddup2(fa, err1, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    /* Descriptors the host opened without close-on-exec (Lua's io.open does) must
     * not leak into a long-lived child. */
    posix_spawn_file_actions_addclosefrom_np(fa, 3);
#endif
    if (p->cwd)
        posix_spawn_file_actions_addchdir_np(fa, p->cwd);
    /* Own process group: a terminal Ctrl-C reaches the host, not the child, and a
     * kill of the group also ends anything the child started. Signal dispositions
     * and mask start from the defaults, whatever the host set for itself. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setpgroup(at, 0);
    posix_spawnattr_setsigmask(at, &none);
    posix_spawnattr_setsigdefault(at, &all);
    posix_spawnattr_setflags(at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                     POSIX_SPAWN_SETSIGDEF);
}

int proc_spawn(proc **out, const proc_params *p, char *err, size_t errlen)
{
    *out = NULL;
    if (!p->argv || !p->argv[0]) {
        snprintf(err, errlen, "proc_spawn: no program given");
        return PROC_ESPAWN;
    }
    proc *pr = calloc(1, sizeof *pr);
    if (!pr) {
        snprintf(err, errlen, "out of memory");
        return PROC_ENOMEM;
    }
    pr->prm = *p;
    pr->in_fd = pr->out_fd = pr->err_fd = -1;
    lines_init(&pr->out, p->max_line);
    lines_init(&pr->err, p->max_log_line);
    snprintf(pr->exit_text, sizeof pr->exit_text, "not started");

    int in[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1};
    int rc = PROC_ESPAWN;
    char **env = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int fa_ok = 0, at_ok = 0;

    if (make_pipe(in) || make_pipe(outp) || make_pipe(errp)) {
        rc = fail(err, errlen, PROC_EIO, "cannot make pipes for %s: %s", p->argv[0]);
        goto out;
    }
    /* posix_spawn cannot arm PR_SET_PDEATHSIG in the child; a child that can (the
     * engine worker) arms it itself and checks its parent is still this pid. */
    char parent[48];
    snprintf(parent, sizeof parent, "RLHOST_PARENT_PID=%ld", (long)getpid());
    env = build_env(p->env, parent);
    if (!env || posix_spawn_file_actions_init(&fa) != 0) {
        snprintf(err, errlen, "out of memory");
        rc = PROC_ENOMEM;
        goto out;
    }
    fa_ok = 1;
    if (posix_spawnattr_init(&at) != 0) {
        snprintf(err, errlen, "out of memory");
        rc = PROC_ENOMEM;
        goto out;
    }
    at_ok = 1;
    spawn_actions(&fa, &at, p, in[0], outp[1], errp[1]);
    int e = posix_spawn(&pr->pid, p->argv[0], &fa, &at, (char *const *)p->argv, env);
    if (e != 0) {
        errno = e;
        rc = fail(err, errlen, PROC_ESPAWN, "cannot start %s: %s", p->argv[0]);
        goto out;
    }
    close(in[0]);
    close(outp[1]);
    close(errp[1]);
    in[0] = outp[1] = errp[1] = -1;
    pr->in_fd = in[1];
    pr->out_fd = outp[0];
    pr->err_fd = errp[0];
    in[1] = outp[0] = errp[0] = -1;
    set_nonblock(pr->in_fd);
    set_nonblock(pr->out_fd);
    set_nonblock(pr->err_fd);
    snprintf(pr->exit_text, sizeof pr->exit_text, "running");
    *out = pr;
    pr = NULL;
    rc = PROC_OK;
out:
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (at_ok)
        posix_spawnattr_destroy(&at);
    free(env);
    for (int i = 0; i < 2; i++) {
        close_fd(&in[i]);
        close_fd(&outp[i]);
        close_fd(&errp[i]);
    }
    if (pr) {
        lines_free(&pr->out);
        lines_free(&pr->err);
        free(pr);
    }
    return rc;
}

/* write() that reports EPIPE instead of raising SIGPIPE, without touching the
 * host's disposition: block it, and swallow one that this write made pending. */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t n)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    ssize_t r = write(fd, buf, n);
    int saved = errno;
    if (r < 0 && errno == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return r;
}

static int wait_status(proc *pr, int64_t deadline_ms, char *err, size_t errlen)
{
    if (sig_level() >= 2) {
        snprintf(err, errlen, "interrupted by a second signal (SIGINT, SIGTERM or SIGHUP)");
        return PROC_EINTR;
    }
    if (deadline_ms >= 0 && proc_now_ms() >= deadline_ms) {
        snprintf(err, errlen, "no reply from process %d before the deadline", (int)pr->pid);
        return PROC_ETIMEOUT;
    }
    return PROC_OK;
}

static int poll_slice(int64_t deadline_ms)
{
    if (deadline_ms < 0)
        return SLICE_MS;
    int64_t left = deadline_ms - proc_now_ms();
    return left <= 0 ? 0 : left < SLICE_MS ? (int)left : SLICE_MS;
}

static int dead(proc *pr, char *err, size_t errlen)
{
    finish_dead(pr);
    snprintf(err, errlen, "process %d %s", (int)pr->pid, pr->exit_text);
    return PROC_EDEAD;
}

int proc_write(proc *pr, const void *buf, size_t n, int64_t deadline_ms, char *err,
               size_t errlen)
{
    const char *p = buf;
    if (pr->in_fd < 0)
        return dead(pr, err, errlen);
    while (n) {
        ssize_t w = write_nosigpipe(pr->in_fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EPIPE) {
            close_fd(&pr->in_fd);
            return dead(pr, err, errlen);
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            snprintf(err, errlen, "cannot write to process %d: %s", (int)pr->pid,
                     strerror(errno));
            return PROC_EIO;
        }
        int st = wait_status(pr, deadline_ms, err, errlen);
        if (st)
            return st;
        struct pollfd pf[2] = {{.fd = pr->in_fd, .events = POLLOUT},
                               {.fd = pr->err_fd, .events = POLLIN}};
        if (poll(pf, pr->err_fd >= 0 ? 2 : 1, poll_slice(deadline_ms)) > 0 &&
            pf[1].revents)
            read_err(pr);
    }
    return PROC_OK;
}

int proc_read_line(proc *pr, const char **line, size_t *len, int64_t deadline_ms, char *err,
                   size_t errlen)
{
    char buf[65536];
    for (;;) {
        int r = lines_next(&pr->out, line, len);
        if (r == LINES_LINE)
            return PROC_OK;
        if (r == LINES_LONG) {
            snprintf(err, errlen, "a line from process %d is longer than %zu bytes",
                     (int)pr->pid, pr->out.max);
            return PROC_ELONG;
        }
        if (pr->out_fd < 0)
            return dead(pr, err, errlen);
        int st = wait_status(pr, deadline_ms, err, errlen);
        if (st)
            return st;
        struct pollfd pf[2] = {{.fd = pr->out_fd, .events = POLLIN},
                               {.fd = pr->err_fd, .events = POLLIN}};
        int np = poll(pf, pr->err_fd >= 0 ? 2 : 1, poll_slice(deadline_ms));
        if (np < 0 && errno != EINTR) {
            snprintf(err, errlen, "poll: %s", strerror(errno));
            return PROC_EIO;
        }
        if (np <= 0)
            continue;
        if (pr->err_fd >= 0 && pf[1].revents)
            read_err(pr);
        if (!pf[0].revents)
            continue;
        for (;;) {
            ssize_t got = read(pr->out_fd, buf, sizeof buf);
            if (got > 0) {
                if (lines_feed(&pr->out, buf, (size_t)got) != 0) {
                    snprintf(err, errlen, "out of memory reading from process %d",
                             (int)pr->pid);
                    return PROC_ENOMEM;
                }
                if ((size_t)got < sizeof buf)
                    break;
                continue;
            }
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            close_fd(&pr->out_fd); /* EOF (or a read error): the stream is over */
            break;
        }
    }
}

int proc_close(proc *pr)
{
    if (!pr)
        return -1;
    close_fd(&pr->in_fd); /* end of input: the polite way to ask a worker to stop */
    if (!pr->reaped) {
        /* Keep reading stdout too, so a child blocked writing replies can finish. */
        int64_t end = proc_now_ms() + pr->prm.grace_ms;
        char buf[4096];
        while (!try_reap(pr) && proc_now_ms() < end && sig_level() < 2) {
            struct pollfd pf[2] = {{.fd = pr->out_fd, .events = POLLIN},
                                   {.fd = pr->err_fd, .events = POLLIN}};
            poll(pf, 2, 10); /* negative fds are ignored by poll */
            if (pf[0].revents) {
                ssize_t r = read(pr->out_fd, buf, sizeof buf);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                    close_fd(&pr->out_fd);
            }
            if (pf[1].revents)
                read_err(pr);
        }
        if (!pr->reaped) {
            kill_group(pr, SIGTERM);
            if (!wait_exit(pr, sig_level() >= 2 ? 0 : pr->prm.term_ms)) {
                kill_group(pr, SIGKILL);
                reap_blocking(pr);
            }
        }
    }
    read_err(pr);
    int status = pr->status;
    close_fd(&pr->out_fd);
    close_fd(&pr->err_fd);
    lines_free(&pr->out);
    lines_free(&pr->err);
    free(pr);
    return status;
}

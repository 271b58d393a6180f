/* service.c — long-running child processes with a log file (see service.h). */
#include "service.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "sig.h"

extern char **environ;

struct service {
    pid_t pid;
    int reaped;
    int status;
    int term_ms;
    char exit_text[64];
};

void service_default_params(service_params *p)
{
    memset(p, 0, sizeof *p);
    p->term_ms = 5000;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void set_reaped(service *s, int status)
{
    s->reaped = 1;
    s->status = status;
    if (WIFEXITED(status)) {
        snprintf(s->exit_text, sizeof s->exit_text, "exited with status %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        const char *a = sigabbrev_np(WTERMSIG(status));
        if (a)
            snprintf(s->exit_text, sizeof s->exit_text, "killed by signal SIG%s", a);
        else
            snprintf(s->exit_text, sizeof s->exit_text, "killed by signal %d", WTERMSIG(status));
    } else {
        snprintf(s->exit_text, sizeof s->exit_text, "ended (wait status %d)", status);
    }
}

/* The program's path: argv0 itself when it has a '/', else the first executable
 * PATH entry. Found in the parent, so the child only calls execve. */
static int resolve(const char *argv0, char *out, size_t outlen)
{
    if (strchr(argv0, '/'))
        return snprintf(out, outlen, "%s", argv0) < (int)outlen ? 0 : -1;
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n && (size_t)snprintf(out, outlen, "%.*s/%s", (int)n, path, argv0) < outlen
            && access(out, X_OK) == 0)
            return 0;
        path += n + (end ? 1 : 0);
    }
    return -1;
}

/* In the child, between fork and exec: async-signal-safe calls only. Reports a
 * failure's errno on `report` and exits 127. */
static void child(const char *path, char *const argv[], const char *cwd, int logfd, int nullfd,
                  int report, pid_t parent)
{
    int e = 0;
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(127); /* the host is already gone */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    /* The host ignores SIGPIPE and catches these; a server expects the defaults. */
    sigaction(SIGPIPE, &dfl, NULL);
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGHUP, &dfl, NULL);
    if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
        e = errno;
    else if (cwd && chdir(cwd) != 0)
        e = errno;
    else {
        execve(path, argv, environ);
        e = errno;
    }
    ssize_t w = write(report, &e, sizeof e);
    (void)w;
    _exit(127);
}

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *a)
{
    int e = errno;
    snprintf(err, errlen, fmt, a, strerror(e));
    return code;
}

int service_start(service **out, const service_params *p, char *err, size_t errlen)
{
    *out = NULL;
    if (!p->argv || !p->argv[0] || !p->log_path) {
        snprintf(err, errlen, "service_start: no program or no log file given");
        return SERVICE_ESPAWN;
    }
    char path[PATH_MAX];
    if (resolve(p->argv[0], path, sizeof path) != 0) {
        snprintf(err, errlen, "cannot run '%s': not found on PATH", p->argv[0]);
        return SERVICE_ESPAWN;
    }
    int logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0)
        return fail(err, errlen, SERVICE_EIO, "cannot open the log file %s: %s", p->log_path);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int pipefd[2] = {-1, -1};
    service *s = calloc(1, sizeof *s);
    int rc = SERVICE_OK;
    if (!s || nullfd < 0) {
        snprintf(err, errlen, "out of memory or descriptors starting %s", p->argv[0]);
        rc = SERVICE_ENOMEM;
        goto out;
    }
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        rc = fail(err, errlen, SERVICE_EIO, "cannot make a pipe for %s: %s", p->argv[0]);
        goto out;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = fail(err, errlen, SERVICE_ESPAWN, "cannot fork for %s: %s", p->argv[0]);
        goto out;
    }
    if (pid == 0)
        child(path, (char *const *)p->argv, p->cwd, logfd, nullfd, pipefd[1], parent);
    setpgid(pid, pid); /* also here: no race with an early stop */
    close(pipefd[1]);
    pipefd[1] = -1;
    int e = 0;
    ssize_t r;
    do
        r = read(pipefd[0], &e, sizeof e);
    while (r < 0 && errno == EINTR);
    s->pid = pid;
    s->term_ms = p->term_ms;
    snprintf(s->exit_text, sizeof s->exit_text, "running");
    if (r == (ssize_t)sizeof e) { /* exec failed: reap the child, report why */
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        snprintf(err, errlen, "cannot run %s: %s", path, strerror(e));
        rc = SERVICE_ESPAWN;
        goto out;
    }
    *out = s;
    s = NULL;
out:
    free(s);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (nullfd >= 0)
        close(nullfd);
    close(logfd);
    return rc;
}

pid_t service_pid(const service *s) { return s->pid; }

const char *service_exit_text(const service *s) { return s->exit_text; }

int service_running(service *s)
{
    if (s->reaped)
        return 0;
    int st;
    pid_t r;
    do
        r = waitpid(s->pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == s->pid) {
        set_reaped(s, st);
        return 0;
    }
    if (r < 0 && errno == ECHILD) { /* reaped elsewhere */
        s->reaped = 1;
        s->status = -1;
        snprintf(s->exit_text, sizeof s->exit_text, "ended (reaped elsewhere)");
        return 0;
    }
    return 1;
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* One GET; the HTTP status (0 when no response came) and err on failure. */
static long probe(const char *url, long timeout_ms, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "curl_easy_init failed");
        return 0;
    }
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*"); /* a loopback probe never goes via a proxy */
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    long status = 0;
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(err, errlen, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
    curl_easy_cleanup(c);
    return status;
}

int service_wait_ready(service *s, const char *url, long timeout_ms, long probe_ms,
                       long *last_status, char *err, size_t errlen)
{
    long long end = now_ms() + timeout_ms;
    *last_status = 0;
    snprintf(err, errlen, "no answer yet");
    for (;;) {
        if (sig_level() >= 2) {
            snprintf(err, errlen, "interrupted");
            return SERVICE_EINTR;
        }
        if (!service_running(s)) {
            snprintf(err, errlen, "%s", s->exit_text);
            return SERVICE_EDEAD;
        }
        long long left = end - now_ms();
        if (left <= 0)
            return SERVICE_ETIMEOUT;
        char perr[256] = "";
        long st = probe(url, probe_ms < left ? probe_ms : (long)left, perr, sizeof perr);
        if (st == 200)
            return SERVICE_OK;
        *last_status = st;
        if (st)
            snprintf(err, errlen, "HTTP status %ld", st);
        else
            snprintf(err, errlen, "%s", perr);
        left = end - now_ms();
        sleep_ms(left < 100 ? (left > 0 ? (long)left : 0) : 100);
    }
}

/* Wait up to ms for the leader to exit without reaping it (its pid, and so the
 * group id, stays reserved while we signal the group). 1 once it exited. */
static int exited_within(service *s, int ms)
{
    long long end = now_ms() + ms;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        int r = waitid(P_PID, (id_t)s->pid, &si, WEXITED | WNOHANG | WNOWAIT);
        if (r == 0 && si.si_pid == s->pid)
            return 1;
        if (r < 0 && errno != EINTR)
            return 1; /* ECHILD: nothing left to wait for */
        if (now_ms() >= end)
            return 0;
        sleep_ms(10);
    }
}

int service_stop(service *s)
{
    if (!s || s->reaped)
        return -1;
    kill(-s->pid, SIGTERM);
    if (!exited_within(s, s->term_ms))
        kill(-s->pid, SIGKILL);
    /* Members the service forked go with the group, the leader exited or not. */
    kill(-s->pid, SIGKILL);
    int st;
    pid_t r;
    do
        r = waitpid(s->pid, &st, 0);
    while (r < 0 && errno == EINTR);
    if (r == s->pid)
        set_reaped(s, st);
    else
        service_running(s);
    return s->reaped ? s->status : -1;
}

void service_free(service *s)
{
    if (!s)
        return;
    service_stop(s);
    free(s);
}

int service_free_port(int *port, char *err, size_t errlen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errlen, SERVICE_EIO, "cannot make a socket%s: %s", "");
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0
        || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        int rc = fail(err, errlen, SERVICE_EIO, "cannot find a free port%s: %s", "");
        close(fd);
        return rc;
    }
    *port = ntohs(a.sin_port);
    close(fd);
    return SERVICE_OK;
}

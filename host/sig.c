/* sig.c — see sig.h. */
#include "sig.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t level;
static void (*second_cb)(void);

static void on_sigint(int signo)
{
    (void)signo;
    if (level < 2)
        level++;
    if (level == 1) {
        static const char msg[] =
            "\nrlhost: interrupt: finishing the current step (Ctrl-C again to stop now)\n";
        ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)r;
    } else if (second_cb) {
        second_cb();
    }
}

void sig_install(void (*on_second)(void))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    second_cb = on_second;
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: blocking waits return EINTR and look at level */
    sigaction(SIGINT, &sa, NULL);
    /* A write past RLIMIT_FSIZE (a file-size quota, `ulimit -f`) must fail with
     * EFBIG like a full disk does, so the caller reports it (a checkpoint write
     * names the file); by default SIGXFSZ kills the host with no message. CPython
     * ignores it the same way, but the embedded one leaves signals to us.
     * Children get default dispositions back (proc.c, sandbox.c). */
    signal(SIGXFSZ, SIG_IGN);
}

void sig_restore(void)
{
    signal(SIGINT, SIG_DFL);
}

int sig_level(void) { return level; }

void sig_reset(void) { level = 0; }

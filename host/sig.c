/* sig.c — see sig.h. */
#include "sig.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t level;
static volatile sig_atomic_t first;
static void (*second_cb)(void);

static const int handled[] = {SIGINT, SIGTERM, SIGHUP};

static void say(const char *msg, size_t n)
{
    ssize_t r = write(STDERR_FILENO, msg, n);
    (void)r;
}

/* Only async-signal-safe calls: write(2) of fixed texts. */
static void on_signal(int signo)
{
    if (level < 2)
        level++;
    if (level == 1) {
        first = signo;
        static const char intr[] =
            "\nrlhost: interrupt: finishing the current step (Ctrl-C again to stop now)\n";
        static const char term[] = "rlhost: SIGTERM: finishing the current step and "
                                   "checkpointing (send it again to stop now)\n";
        static const char hup[] = "rlhost: SIGHUP: finishing the current step and "
                                  "checkpointing (send it again to stop now)\n";
        if (signo == SIGTERM)
            say(term, sizeof term - 1);
        else if (signo == SIGHUP)
            say(hup, sizeof hup - 1);
        else
            say(intr, sizeof intr - 1);
    } else if (second_cb) {
        second_cb();
    }
}

void sig_install(void (*on_second)(void))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    second_cb = on_second;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaddset(&sa.sa_mask, handled[i]); /* one handler at a time: level and first agree */
    sa.sa_flags = 0; /* no SA_RESTART: blocking waits return EINTR and look at level */
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaction(handled[i], &sa, NULL);
    /* A write past RLIMIT_FSIZE (a file-size quota, `ulimit -f`) must fail with
     * EFBIG like a full disk does, so the caller reports it (a checkpoint write
     * names the file); by default SIGXFSZ kills the host with no message. CPython
     * ignores it the same way, but the embedded one leaves signals to us.
     * Children get default dispositions back (proc.c, sandbox.c). */
    signal(SIGXFSZ, SIG_IGN);
}

void sig_restore(void)
{
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        signal(handled[i], SIG_DFL);
}

int sig_level(void) { return level; }

int sig_first(void) { return first; }

const char *sig_first_name(void)
{
    switch (first) {
    case SIGINT: return "INT";
    case SIGTERM: return "TERM";
    case SIGHUP: return "HUP";
    default: return "";
    }
}

int sig_exit_status(void) { return first ? 128 + first : 130; }

void sig_reset(void)
{
    level = 0;
    first = 0;
}

/* sandbox.c — see sandbox.h.
 *
 * Process layout when isolated (the host may create namespaces):
 *   host ── middle (root, new net+mount+IPC namespaces, outside the new PID namespace)
 *             └─ init (PID 1 of the new PID namespace: reaps, relays the status)
 *                  └─ program (uid nobody, rlimits, seccomp filter, execs the command)
 * The extra init exists because the kernel ignores default-action signals sent to a
 * namespace's PID 1 (SIGXCPU, SIGXFSZ would not stop it); running the program as PID
 * 2 keeps ordinary signal semantics, and init's exit kills everything left in the
 * namespace, including processes that left the process group. Unisolated, the host's
 * child is the program itself.
 *
 * The child reports what it applied on a status pipe as "<tag><number>;" items:
 * I/U isolated or not, F socket filter installed, C the disk cap covers every
 * writable place, D the disk cap was reached, S/E setup/exec errno, N isolation
 * refused, K/X the program's signal/exit status (relayed by init). */
#include "sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sig.h"

#define NOBODY 65534
/* A size-limited tmpfs with less free than this after the run was filled up: a write
 * that fails with ENOSPC leaves at most a partial page behind. */
#define DISK_SLACK 65536
/* Unisolated accounting: the work directory is measured this often, and a tree with
 * more entries than this counts as over the limit (walking it would be the attack). */
#define DU_EVERY_MS 100
#define DU_MAX_ENTRIES 20000

void sandbox_default_params(sandbox_params *p)
{
    p->cpu_s = 5;
    p->mem_bytes = 512u << 20;
    p->fsize_bytes = 16u << 20;
    p->disk_bytes = 64u << 20;
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
                                        "setup",  "interrupted", "disk"};
    return r >= 0 && r <= SB_DISK ? names[r] : "setup";
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

/* Bytes allocated under path (st_blocks, so sparse files count what they use) and
 * entries seen; stops counting once *entries passes DU_MAX_ENTRIES. */
static void du_tree(const char *path, unsigned long long *bytes, long *entries)
{
    struct stat st;
    if (++*entries > DU_MAX_ENTRIES || lstat(path, &st) < 0)
        return;
    *bytes += (unsigned long long)st.st_blocks * 512u;
    if (!S_ISDIR(st.st_mode))
        return;
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && *entries <= DU_MAX_ENTRIES) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) < (int)sizeof sub)
            du_tree(sub, bytes, entries);
    }
    closedir(d);
}

static int over_disk(const char *work, size_t cap)
{
    unsigned long long bytes = 0;
    long entries = 0;
    du_tree(work, &bytes, &entries);
    return bytes > cap || entries > DU_MAX_ENTRIES;
}

/* ---- child side: only async-signal-safe calls between fork and exec ---- */

/* What the child needs, all prepared before fork (no formatting or allocation after). */
typedef struct Child {
    const sandbox_params *p;
    const char *const *argv;
    const sandbox_file *files;
    int nfiles;
    const char *work;     /* the working directory on the host's file system */
    char tmpfs_opts[96];  /* mount options of the size-limited scratch tmpfs */
    int in, out, err, st; /* pipe ends: stdin, stdout, stderr, status */
} Child;

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

static _Noreturn void fail_setup(int st)
{
    report(st, 'S', errno);
    _exit(127);
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

#if defined(__x86_64__)
#define SB_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SB_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SB_ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#else
#define SB_ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i) + 4)
#endif

/* No socket the program could connect anywhere with: socket() fails with EACCES for
 * every family (Unix sockets on the file system included, whatever their mode), and
 * socketpair() is allowed for SOCK_STREAM only, whose ends cannot address anyone
 * else (a datagram end could sendto() a bound socket such as /dev/log). io_uring,
 * which can create and connect sockets without these system calls, is refused.
 * Other architectures' system call numbers (x32, i386 emulation) end the process.
 * Returns 0 when installed; -1 where seccomp is unavailable. */
static int install_socket_filter(void)
{
#ifdef SB_AUDIT_ARCH
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SB_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __x86_64__
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* __X32_SYSCALL_BIT */, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
#endif
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socketpair, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SB_ARG_LO(1)),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf), /* the type without SOCK_CLOEXEC etc. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOCK_STREAM, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : -1;
#else
    return -1;
#endif
}

/* The program: limits, unprivileged user, socket filter, exec. Never returns. */
static _Noreturn void become_program(const Child *c, int isolated)
{
    const sandbox_params *p = c->p;
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
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            fail_setup(c->st);
    }
    if (install_socket_filter() == 0) {
        report(c->st, 'F', 0);
    } else if (p->require_isolation) {
        report(c->st, 'N', errno);
        _exit(127);
    }
    static char *const env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "TMPDIR=/tmp",
                                "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", NULL};
    report(c->st, isolated ? 'I' : 'U', 0);
    close_from(3, c->st);
    execvpe(c->argv[0], (char *const *)c->argv, env);
    report(c->st, 'E', errno);
    _exit(127);
}

/* Write the given files into the current directory, owned by nobody when root. */
static void write_files_here(const Child *c)
{
    for (int i = 0; i < c->nfiles; i++) {
        int fd = open(c->files[i].name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0)
            fail_setup(c->st);
        size_t off = 0;
        while (off < c->files[i].len) {
            ssize_t w = write(fd, c->files[i].data + off, c->files[i].len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                if (errno == ENOSPC || errno == EDQUOT || errno == EFBIG)
                    report(c->st, 'D', 0); /* the files alone exceed the disk limit */
                fail_setup(c->st);
            }
            off += (size_t)w;
        }
        if (geteuid() == 0 && fchown(fd, NOBODY, NOBODY) < 0)
            fail_setup(c->st);
        close(fd);
    }
}

/* In the new mount namespace: everything read-only, then one size-limited tmpfs that
 * is the only writable place: /tmp (with the working directory at /tmp/work, so
 * paths the program derives from getcwd() resolve), and bound at /var/tmp, /dev/shm
 * and /run/lock, the other usual world-writable places. One tmpfs means one cap on
 * everything the program can write. */
static void isolate_fs(const Child *c)
{
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    struct mount_attr ro = {.attr_set = MOUNT_ATTR_RDONLY};
    int all_ro = mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, &ro, sizeof ro) == 0;
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, c->tmpfs_opts) < 0)
        fail_setup(c->st);
    static const char *const scratch[] = {"/var/tmp", "/dev/shm", "/run/lock"};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++) {
        struct stat s;
        if (stat(scratch[i], &s) == 0 && S_ISDIR(s.st_mode) &&
            mount("/tmp", scratch[i], NULL, MS_BIND, NULL) < 0)
            fail_setup(c->st);
    }
    if (mkdir("/tmp/work", 0700) < 0 || (geteuid() == 0 && chown("/tmp/work", NOBODY, NOBODY) < 0) ||
        chdir("/tmp/work") < 0)
        fail_setup(c->st);
    write_files_here(c);
    if (all_ro)
        report(c->st, 'C', 0);
}

static int scratch_full(void)
{
    struct statfs s;
    if (statfs("/tmp", &s) < 0)
        return 0;
    return (unsigned long long)s.f_bavail * (unsigned long long)s.f_bsize < DISK_SLACK ||
           s.f_ffree == 0;
}

/* PID 1 of the namespace: reap everything, relay the program's end (and whether it
 * filled the scratch tmpfs, which only this side of the mount namespace can see). */
static _Noreturn void run_init(const Child *c, pid_t prog)
{
    close_from(3, c->st);
    for (;;) {
        int ws;
        pid_t w = waitpid(-1, &ws, 0);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            _exit(127);
        if (w != prog)
            continue;
        if (scratch_full())
            report(c->st, 'D', 0);
        if (WIFSIGNALED(ws)) {
            report(c->st, 'K', WTERMSIG(ws));
            _exit(128 + WTERMSIG(ws));
        }
        report(c->st, 'X', WEXITSTATUS(ws));
        _exit(WEXITSTATUS(ws));
    }
}

static void child_stdio(const Child *c)
{
    setpgid(0, 0);
    if (dup2(c->in, 0) < 0 || dup2(c->out, 1) < 0 || dup2(c->err, 2) < 0)
        _exit(127);
    /* The middle and init never exec, so close-on-exec does not help them: the
     * host's end of the stdin pipe must go now or the program never sees EOF. */
    close_from(3, c->st);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL); /* the host ignores it; ignored stays ignored across exec */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static _Noreturn void run_child(const Child *c)
{
    child_stdio(c);
    if (chdir(c->work) < 0)
        fail_setup(c->st);
    if (unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC) < 0) {
        if (c->p->require_isolation) {
            report(c->st, 'N', errno);
            _exit(127);
        }
        become_program(c, 0);
    }
    isolate_fs(c);
    pid_t init = fork();
    if (init < 0)
        fail_setup(c->st);
    if (init > 0) { /* middle: wait for init, exit like it */
        int ws;
        while (waitpid(init, &ws, 0) < 0 && errno == EINTR)
            ;
        _exit(WIFEXITED(ws) ? WEXITSTATUS(ws) : 127);
    }
    pid_t prog = fork();
    if (prog < 0)
        fail_setup(c->st);
    if (prog == 0)
        become_program(c, 1);
    run_init(c, prog);
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

/* One run as the host sees it. fds: 0,1 stdin; 2,3 stdout; 4,5 stderr; 6,7 status. */
typedef struct Run {
    int fds[8];
    pid_t pid;
    Cap out, errc, st;
    double t0;
    int ws, killed_for;
} Run;

/* What the status pipe said (see the top of this file). */
typedef struct Tags {
    int isolated, no_sockets, disk_capped, disk_full, noiso;
    int exec_errno, setup_errno, relayed_sig;
} Tags;

static void parse_tags(const Cap *stc, Tags *t)
{
    memset(t, 0, sizeof *t);
    t->exec_errno = t->setup_errno = -1;
    for (const char *s = stc->p; s && *s;) {
        char tag = *s++;
        int v = atoi(s);
        t->isolated |= tag == 'I';
        t->no_sockets |= tag == 'F';
        t->disk_capped |= tag == 'C';
        t->disk_full |= tag == 'D';
        t->noiso |= tag == 'N';
        if (tag == 'E') t->exec_errno = v;
        if (tag == 'S') t->setup_errno = v;
        if (tag == 'K') t->relayed_sig = v;
        const char *semi = strchr(s, ';');
        s = semi ? semi + 1 : s + strlen(s);
    }
}

static int write_file(const char *work, const sandbox_file *f, int root, char *err, size_t errlen)
{
    if (!f->name[0] || strchr(f->name, '/') || !strcmp(f->name, "..") || !strcmp(f->name, ".")) {
        snprintf(err, errlen, "bad sandbox file name '%s'", f->name);
        return -1;
    }
    char path[PATH_MAX * 2];
    snprintf(path, sizeof path, "%s/%s", work, f->name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write %s: %s", f->name, strerror(errno));
        return -1;
    }
    size_t off = 0;
    while (off < f->len) {
        ssize_t w = write(fd, f->data + off, f->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    if (root && fchown(fd, NOBODY, NOBODY) < 0)
        off = (size_t)-1;
    close(fd);
    if (off != f->len) {
        snprintf(err, errlen, "cannot write %s", f->name);
        return -1;
    }
    return 0;
}

/* A fresh base directory with work/ in it holding the files (used as they are when
 * unisolated; isolated, the child writes them again into its tmpfs). */
static int make_workdir(const sandbox_params *p, char *base, size_t baselen, char *work,
                        size_t worklen, const sandbox_file *files, int nfiles, char *err,
                        size_t errlen)
{
    const char *tmp = p->tmp_base ? p->tmp_base : getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    if (snprintf(base, baselen, "%s/rlhost-sbx-XXXXXX", tmp) >= (int)baselen || !mkdtemp(base)) {
        snprintf(err, errlen, "cannot make a sandbox directory under %s: %s", tmp, strerror(errno));
        base[0] = '\0';
        return -1;
    }
    snprintf(work, worklen, "%s/work", base);
    int root = geteuid() == 0;
    if (mkdir(work, 0700) < 0 || (root && (chmod(base, 0711) < 0 || chown(work, NOBODY, NOBODY) < 0))) {
        snprintf(err, errlen, "cannot prepare the sandbox directory: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < nfiles; i++)
        if (write_file(work, &files[i], root, err, errlen) < 0)
            return -1;
    return 0;
}

static int start(Run *R, Child *c, char *err, size_t errlen)
{
    int *fds = R->fds;
    if (pipe2(fds, O_CLOEXEC) < 0 || pipe2(fds + 2, O_CLOEXEC) < 0 ||
        pipe2(fds + 4, O_CLOEXEC) < 0 || pipe2(fds + 6, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    size_t disk = c->p->disk_bytes < 4096 ? 4096 : c->p->disk_bytes;
    snprintf(c->tmpfs_opts, sizeof c->tmpfs_opts, "size=%zu,nr_inodes=%zu,mode=1777", disk,
             1024 + disk / 4096);
    c->in = fds[0];
    c->out = fds[3];
    c->err = fds[5];
    c->st = fds[7];
    R->t0 = now_ms();
    R->pid = fork();
    if (R->pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (R->pid == 0)
        run_child(c);
    setpgid(R->pid, R->pid); /* also here: no race with the kill below */
    static const int child_end[4] = {0, 3, 5, 7}, host_end[4] = {1, 2, 4, 6};
    for (int k = 0; k < 4; k++) {
        close(fds[child_end[k]]);
        fds[child_end[k]] = -1;
        fcntl(fds[host_end[k]], F_SETFL, O_NONBLOCK);
    }
    return 0;
}

/* Move whatever is ready between the pipes and the buffers (one poll round). */
static void pump(Run *R, const char *in_data, size_t in_len, size_t *in_off)
{
    int *fds = R->fds;
    struct pollfd pf[4];
    Cap *caps[3] = {&R->out, &R->errc, &R->st};
    int slot[4] = {-1, -1, -1, -1}, np = 0;
    for (int k = 0; k < 3; k++)
        if (fds[2 + 2 * k] >= 0) {
            slot[k] = np;
            pf[np++] = (struct pollfd){fds[2 + 2 * k], POLLIN, 0};
        }
    if (fds[1] >= 0) {
        slot[3] = np;
        pf[np++] = (struct pollfd){fds[1], POLLOUT, 0};
    }
    poll(pf, (nfds_t)np, 20);
    for (int k = 0; k < 3; k++)
        if (slot[k] >= 0 && pf[slot[k]].revents && !cap_read(fds[2 + 2 * k], caps[k])) {
            close(fds[2 + 2 * k]);
            fds[2 + 2 * k] = -1;
        }
    if (slot[3] >= 0 && pf[slot[3]].revents) {
        ssize_t w = write(fds[1], in_data + *in_off, in_len - *in_off);
        if (w > 0)
            *in_off += (size_t)w;
        if ((w < 0 && errno != EAGAIN) || *in_off == in_len) {
            close(fds[1]);
            fds[1] = -1;
        }
    }
}

/* Run the program to its end, killing it at the first limit the host enforces:
 * output, wall clock, a second SIGINT, and (unisolated) the work directory's size. */
static void supervise(Run *R, const sandbox_params *p, const char *work, const char *in_data,
                      size_t in_len)
{
    size_t in_off = 0;
    if (in_len == 0) {
        close(R->fds[1]);
        R->fds[1] = -1;
    }
    R->killed_for = -1;
    double deadline = R->t0 + p->wall_s * 1000.0, next_du = R->t0;
    for (;;) {
        pump(R, in_data, in_len, &in_off);
        if (waitpid(R->pid, &R->ws, WNOHANG) == R->pid)
            break;
        if (R->killed_for >= 0)
            continue;
        double now = now_ms();
        int unisolated = R->st.p && strchr(R->st.p, 'U');
        if (R->out.over || R->errc.over)
            R->killed_for = SB_OUTPUT;
        else if (now > deadline)
            R->killed_for = SB_TIMEOUT;
        else if (sig_level() >= 2)
            R->killed_for = SB_INTERRUPTED;
        else if (unisolated && now >= next_du) {
            next_du = now + DU_EVERY_MS;
            if (over_disk(work, p->disk_bytes))
                R->killed_for = SB_DISK;
        }
        if (R->killed_for >= 0)
            kill(-R->pid, SIGKILL);
    }
    kill(-R->pid, SIGKILL); /* stragglers in the group (unisolated case) */
    /* What is already in the pipes; anything still holding them open is dead or dying. */
    Cap *caps[3] = {&R->out, &R->errc, &R->st};
    for (int k = 0; k < 3; k++)
        if (R->fds[2 + 2 * k] >= 0)
            cap_read(R->fds[2 + 2 * k], caps[k]);
    if (R->killed_for < 0 && R->st.p && strchr(R->st.p, 'U') && over_disk(work, p->disk_bytes))
        R->killed_for = SB_DISK; /* it wrote too much and ended between two checks */
}

/* The reason for a program that ran to its own end (no kill by the host). */
static int natural_reason(const sandbox_params *p, sandbox_result *r, const Cap *errc)
{
    if (r->signal) {
        int s = r->signal;
        snprintf(r->detail, sizeof r->detail, "killed by signal %d (%s)", s, strsignal(s));
        if (s == SIGXCPU || (s == SIGKILL && r->wall_ms >= p->cpu_s * 1000))
            return SB_CPU;
        if (s == SIGXFSZ)
            return SB_FILE_SIZE;
        if ((s == SIGSEGV || s == SIGABRT || s == SIGBUS) && (has(errc, "alloc") || has(errc, "memory")))
            return SB_MEMORY;
        return SB_SIGNAL;
    }
    if (r->exit_code == 0)
        return SB_OK;
    snprintf(r->detail, sizeof r->detail, "exited with status %d", r->exit_code);
    /* Limits that surface as failed calls rather than signals: name them. */
    if (has(errc, "MemoryError") || has(errc, "Cannot allocate memory") || has(errc, "bad_alloc") ||
        has(errc, "out of memory"))
        return SB_MEMORY;
    return has(errc, "File too large") ? SB_FILE_SIZE : SB_EXIT;
}

static void limit_detail(const sandbox_params *p, sandbox_result *r)
{
    if (r->reason == SB_MEMORY)
        snprintf(r->detail, sizeof r->detail, "ran out of memory under the %zu MiB limit",
                 p->mem_bytes >> 20);
    else if (r->reason == SB_CPU)
        snprintf(r->detail, sizeof r->detail, "CPU limit of %g s reached", p->cpu_s);
    else if (r->reason == SB_FILE_SIZE)
        snprintf(r->detail, sizeof r->detail, "file size limit of %zu bytes reached",
                 p->fsize_bytes);
    else if (r->reason == SB_DISK)
        snprintf(r->detail, sizeof r->detail, "disk limit of %g MiB reached (%s)",
                 (double)p->disk_bytes / 1048576.0,
                 r->disk_capped ? "all it may write" : "counted in its working directory");
    else if (r->reason == SB_TIMEOUT)
        snprintf(r->detail, sizeof r->detail, "killed at the wall-clock deadline");
    else if (r->reason == SB_OUTPUT)
        snprintf(r->detail, sizeof r->detail, "killed: output over the capture limit");
    else if (r->reason == SB_INTERRUPTED)
        snprintf(r->detail, sizeof r->detail, "killed: interrupted by a second SIGINT");
}

/* Fill r from the run; returns 0, or -1 with err set for a setup failure. */
static int conclude(const sandbox_params *p, const char *const *argv, Run *R, sandbox_result *r,
                    char *err, size_t errlen)
{
    Tags t;
    parse_tags(&R->st, &t);
    r->wall_ms = now_ms() - R->t0;
    r->isolated = t.isolated;
    r->no_sockets = t.no_sockets;
    r->disk_capped = t.disk_capped;
    r->exit_code = WIFEXITED(R->ws) && !t.relayed_sig ? WEXITSTATUS(R->ws) : -1;
    r->signal = t.relayed_sig ? t.relayed_sig : WIFSIGNALED(R->ws) ? WTERMSIG(R->ws) : 0;
    if (R->killed_for >= 0) {
        r->reason = R->killed_for;
        r->signal = SIGKILL;
        r->exit_code = -1;
    } else if (t.noiso) {
        r->reason = SB_SETUP;
        snprintf(err, errlen, "no isolation available (namespaces or the seccomp socket filter "
                              "refused) and require_isolation is set");
        return -1;
    } else if (t.disk_full) {
        r->reason = SB_DISK;
    } else if (t.setup_errno >= 0 || t.exec_errno >= 0) {
        r->reason = SB_SETUP;
        if (t.exec_errno >= 0 && argv[0])
            snprintf(err, errlen, "cannot run %s: %s", argv[0], strerror(t.exec_errno));
        else
            snprintf(err, errlen, "sandbox setup: %s",
                     strerror(t.exec_errno >= 0 ? t.exec_errno : t.setup_errno));
        return -1;
    } else {
        r->reason = natural_reason(p, r, &R->errc);
    }
    limit_detail(p, r);
    r->out = R->out.p ? R->out.p : calloc(1, 1);
    r->out_len = R->out.len;
    r->err = R->errc.p ? R->errc.p : calloc(1, 1);
    r->err_len = R->errc.len;
    R->out.p = R->errc.p = NULL;
    return 0;
}

int sandbox_run(const sandbox_params *p, const char *const *argv, const sandbox_file *files,
                int nfiles, const char *stdin_data, size_t stdin_len, sandbox_result *r,
                char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->reason = SB_SETUP;
    err[0] = '\0';
    char base[PATH_MAX] = "", work[PATH_MAX + 8];
    Run R = {.fds = {-1, -1, -1, -1, -1, -1, -1, -1}, .pid = -1};
    R.out.max = R.errc.max = p->max_output;
    R.st.max = 256;
    int rc = -1;
    if (make_workdir(p, base, sizeof base, work, sizeof work, files, nfiles, err, errlen) == 0) {
        Child c = {.p = p, .argv = argv, .files = files, .nfiles = nfiles, .work = work};
        if (start(&R, &c, err, errlen) == 0) {
            supervise(&R, p, work, stdin_data, stdin_len);
            rc = conclude(p, argv, &R, r, err, errlen);
        }
    }
    for (int i = 0; i < 8; i++)
        if (R.fds[i] >= 0)
            close(R.fds[i]);
    free(R.out.p);
    free(R.errc.p);
    free(R.st.p);
    if (base[0])
        rm_tree(base);
    return rc;
}

void sandbox_result_free(sandbox_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* fs.c — see fs.h. */
#include "fs.h"
#include "sha256.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* fail() with ": strerror(errno)" appended, errno captured before anything runs. */
#define SYSFAIL(what, path) fail(err, errlen, "%s '%s': %s", what, path, strerror(errno))

int fs_sha256_file(const char *path, char hex[65], uint64_t *size, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SYSFAIL("cannot open", path);
    sha256_ctx c;
    sha256_init(&c);
    unsigned char buf[1 << 16];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return SYSFAIL("cannot read", path);
        }
        if (r == 0)
            break;
        sha256_update(&c, buf, (size_t)r);
    }
    close(fd);
    if (size)
        *size = c.bytes;
    sha256_final_hex(&c, hex);
    return 0;
}

/* ---- files and directories ------------------------------------------------------ */

/* The directory part of path ("." when there is none), in out[outlen]. */
static int parent_of(const char *path, char *out, size_t outlen)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') /* "a/b/" names b */
        n--;
    while (n > 0 && path[n - 1] != '/')
        n--;
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n == 0) {
        snprintf(out, outlen, ".");
        return 0;
    }
    if (n >= outlen)
        return -1;
    memcpy(out, path, n);
    out[n] = '\0';
    return 0;
}

int fs_fsync_path(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SYSFAIL("cannot open", path);
    if (fsync(fd) != 0 && errno != EINVAL) { /* EINVAL: a special file that cannot sync */
        int e = errno;
        close(fd);
        errno = e;
        return SYSFAIL("cannot fsync", path);
    }
    close(fd);
    return 0;
}

static int fsync_parent(const char *path, char *err, size_t errlen)
{
    char dir[4096];
    if (parent_of(path, dir, sizeof dir) != 0)
        return fail(err, errlen, "path too long: '%s'", path);
    return fs_fsync_path(dir, err, errlen);
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int fs_write_atomic(const char *path, const void *data, size_t len, int mode, char *err,
                    size_t errlen)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= sizeof tmp)
        return fail(err, errlen, "path too long: '%s'", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return SYSFAIL("cannot create a temporary file for", path);
    const char *what = NULL;
    if (fchmod(fd, (mode_t)mode) != 0)
        what = "cannot set the mode of";
    else if (write_all(fd, data, len) != 0)
        what = "cannot write";
    else if (fsync(fd) != 0)
        what = "cannot fsync";
    if (what) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
        return SYSFAIL(what, tmp);
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return SYSFAIL("cannot close", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return SYSFAIL("cannot rename a temporary file onto", path);
    }
    return fsync_parent(path, err, errlen);
}

int fs_mkdir_p(const char *path, char *err, size_t errlen)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0)
        return fail(err, errlen, "cannot create a directory with an empty name");
    if (n >= sizeof buf)
        return fail(err, errlen, "path too long: '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return SYSFAIL("cannot create directory", buf);
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return SYSFAIL("cannot create directory", path);
    if (!S_ISDIR(st.st_mode))
        return fail(err, errlen, "'%s' exists and is not a directory", path);
    return 0;
}

/* Depth-first walk below the directory open at dfd (name `path` for messages).
 * remove: unlink entries; else fsync them. Closes dfd. */
static int walk(int dfd, const char *path, int remove, char *err, size_t errlen)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = errno;
        close(dfd);
        errno = e;
        return SYSFAIL("cannot read directory", path);
    }
    int rc = 0;
    struct dirent *de;
    char sub[4096];
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno)
                rc = SYSFAIL("cannot read directory", path);
            break;
        }
        const char *nm = de->d_name;
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, nm);
        struct stat st;
        if (fstatat(dirfd(d), nm, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue;
            rc = SYSFAIL("cannot stat", sub);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            int cfd = openat(dirfd(d), nm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd < 0) {
                rc = SYSFAIL("cannot open directory", sub);
                break;
            }
            if (!remove && fsync(cfd) != 0) {
                int e = errno;
                close(cfd);
                errno = e;
                rc = SYSFAIL("cannot fsync", sub);
                break;
            }
            if ((rc = walk(cfd, sub, remove, err, errlen)) != 0)
                break;
            if (remove && unlinkat(dirfd(d), nm, AT_REMOVEDIR) != 0 && errno != ENOENT) {
                rc = SYSFAIL("cannot remove directory", sub);
                break;
            }
        } else if (remove) {
            if (unlinkat(dirfd(d), nm, 0) != 0 && errno != ENOENT) {
                rc = SYSFAIL("cannot remove", sub);
                break;
            }
        } else if (S_ISREG(st.st_mode)) {
            int ffd = openat(dirfd(d), nm, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            if (ffd < 0 || fsync(ffd) != 0) {
                int e = errno;
                if (ffd >= 0)
                    close(ffd);
                errno = e;
                rc = SYSFAIL("cannot fsync", sub);
                break;
            }
            close(ffd);
        }
    }
    closedir(d);
    return rc;
}

int fs_fsync_tree(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return SYSFAIL("cannot open directory", path);
    if (walk(fd, path, 0, err, errlen) != 0)
        return -1;
    return fs_fsync_path(path, err, errlen); /* entries first, then the names in it */
}

int fs_rename_durable(const char *from, const char *to, char *err, size_t errlen)
{
    if (rename(from, to) != 0) {
        int e = errno;
        char msg[512];
        snprintf(msg, sizeof msg, "cannot rename '%s' to", from);
        errno = e;
        return SYSFAIL(msg, to);
    }
    if (fsync_parent(to, err, errlen) != 0)
        return -1;
    char a[4096], b[4096];
    if (parent_of(from, a, sizeof a) == 0 && parent_of(to, b, sizeof b) == 0 &&
        strcmp(a, b) != 0)
        return fs_fsync_path(a, err, errlen);
    return 0;
}

int fs_remove_tree(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return SYSFAIL("cannot stat", path);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0 && errno != ENOENT)
            return SYSFAIL("cannot remove", path);
        return 0;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return SYSFAIL("cannot open directory", path);
    if (walk(fd, path, 1, err, errlen) != 0)
        return -1;
    if (rmdir(path) != 0 && errno != ENOENT)
        return SYSFAIL("cannot remove directory", path);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void fs_list_free(char **names, size_t count)
{
    if (!names)
        return;
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

int fs_list_dir(const char *path, char ***names, size_t *count, char *err, size_t errlen)
{
    *names = NULL;
    *count = 0;
    DIR *d = opendir(path);
    if (!d)
        return SYSFAIL("cannot read directory", path);
    char **v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (!de)
            break;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nv = realloc(v, nc * sizeof *nv);
            if (!nv)
                goto nomem;
            v = nv;
            cap = nc;
        }
        if (!(v[n] = strdup(de->d_name)))
            goto nomem;
        n++;
    }
    if (errno) {
        int e = errno;
        closedir(d);
        fs_list_free(v, n);
        errno = e;
        return SYSFAIL("cannot read directory", path);
    }
    closedir(d);
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_names);
    *names = v;
    *count = n;
    return 0;
nomem:
    closedir(d);
    fs_list_free(v, n);
    return fail(err, errlen, "out of memory listing '%s'", path);
}

int fs_stat(const char *path, fs_info *out, char *err, size_t errlen)
{
    struct stat st;
    out->kind = FS_NONE;
    out->size = 0;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        return SYSFAIL("cannot stat", path);
    }
    if (S_ISREG(st.st_mode))
        out->kind = FS_FILE;
    else if (S_ISDIR(st.st_mode))
        out->kind = FS_DIR;
    else if (S_ISLNK(st.st_mode))
        out->kind = FS_LINK;
    else
        out->kind = FS_OTHER;
    out->size = (uint64_t)st.st_size;
    return 0;
}

int fs_lock(const char *path, int *fd, char *err, size_t errlen)
{
    *fd = -1;
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0)
        return SYSFAIL("cannot open lock file", path);
    while (flock(f, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR)
            continue;
        int e = errno;
        close(f);
        if (e == EWOULDBLOCK)
            return 1;
        errno = e;
        return SYSFAIL("cannot lock", path);
    }
    *fd = f;
    return 0;
}

int fs_free_space(const char *path, uint64_t *bytes, char *err, size_t errlen)
{
    struct statvfs sv;
    if (statvfs(path, &sv) != 0)
        return SYSFAIL("cannot query free space of", path);
    *bytes = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    return 0;
}

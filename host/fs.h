/* fs.h — the file operations run directories and checkpoints are built from: atomic
 * file writes, directories made, synced, renamed into place and removed, listings,
 * and SHA-256 of files for checkpoint manifests. Plain C: never includes lua.h.
 *
 * Crash safety rests on POSIX rename(2) being atomic within one filesystem and on
 * fsync of both the file and its parent directory: after fs_write_atomic or
 * fs_rename_durable returns 0, a power cut leaves either the old or the new
 * contents, never a mix or an empty file.
 *
 * Every function returns 0 on success or -1 with a message naming the path and the
 * system error in err (when err is not NULL). None prints or exits. */
#ifndef RLHOST_FS_H
#define RLHOST_FS_H

#include <stddef.h>
#include <stdint.h>

/* Digest of a whole file, and its size in bytes (size may be NULL). */
int fs_sha256_file(const char *path, char hex[65], uint64_t *size, char *err, size_t errlen);

/* ---- files and directories ---------------------------------------------------- */

/* Write data to path so that readers (and a crash) see either the old file or the
 * complete new one: a temporary file beside it (same directory, so the rename stays
 * on one filesystem), fsync, rename over path, fsync the directory. mode as for
 * open(2) (0644 typical). */
int fs_write_atomic(const char *path, const void *data, size_t len, int mode, char *err,
                    size_t errlen);

/* Create path and missing parents (mode 0755 before umask); existing directories
 * are fine, an existing non-directory is an error. */
int fs_mkdir_p(const char *path, char *err, size_t errlen);

/* fsync a file or directory by path (opened read-only: enough on Linux for both). */
int fs_fsync_path(const char *path, char *err, size_t errlen);

/* fsync every regular file and directory under path, path itself last, so a
 * directory renamed into place afterwards holds only durable data. Symbolic links
 * are not followed. */
int fs_fsync_tree(const char *path, char *err, size_t errlen);

/* rename(from, to) and fsync the parent directory of `to` (and of `from` when it
 * differs) so the new name survives a crash. For directories, `to` must not exist
 * or be an empty directory (rename(2)'s rule). */
int fs_rename_durable(const char *from, const char *to, char *err, size_t errlen);

/* Remove path and everything below it without following symbolic links. A path
 * that does not exist is success (removal is idempotent, as cleanup needs). */
int fs_remove_tree(const char *path, char *err, size_t errlen);

/* Names in directory path (no "." or ".."), sorted bytewise so that callers iterate
 * in a reproducible order. On success *names is a malloc'd array of *count malloc'd
 * strings, freed with fs_list_free. */
int fs_list_dir(const char *path, char ***names, size_t *count, char *err, size_t errlen);
void fs_list_free(char **names, size_t count);

/* What is at path, without following a final symbolic link. */
typedef enum { FS_NONE, FS_FILE, FS_DIR, FS_LINK, FS_OTHER } fs_kind;
typedef struct fs_info {
    fs_kind kind;  /* FS_NONE when nothing is there (then the call still returns 0) */
    uint64_t size; /* bytes, for files */
} fs_info;
int fs_stat(const char *path, fs_info *out, char *err, size_t errlen);

/* Take an exclusive advisory lock (flock) on path, creating the file if needed, so
 * two processes cannot write one run directory at once. 0: locked, *fd holds it
 * (close it, or exit, to release: the kernel drops it even on SIGKILL); 1: another
 * process holds it; -1: error. */
int fs_lock(const char *path, int *fd, char *err, size_t errlen);

/* Bytes available to an unprivileged user on the filesystem holding path. */
int fs_free_space(const char *path, uint64_t *bytes, char *err, size_t errlen);

#endif

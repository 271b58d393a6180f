/* lfs.c — rl.fs: the file operations of host/fs.c for run directories and
 * checkpoints, plus the few process facts the run loop needs (a monotonic clock,
 * sleep, isatty, the pid). Failures raise kind "io" naming the path. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs.h"
#include "sha256.h"
#include "sig.h"
#include "lrl.h"

#define LIST_MT "rl.fs.list"
#define LOCK_MT "rl.fs.lock"

static int io_error(lua_State *L, const char *err)
{
    return rl_raise(L, "io", 0, "%s", err);
}

/* rl.fs.write(path, data [, mode]): atomic replace (temp file, fsync, rename,
 * fsync of the directory). */
static int l_write(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    int mode = (int)luaL_optinteger(L, 3, 0644);
    char err[1024];
    if (fs_write_atomic(path, data, n, mode, err, sizeof err) != 0)
        return io_error(L, err);
    return 0;
}

static int l_mkdir(lua_State *L)
{
    char err[1024];
    if (fs_mkdir_p(luaL_checkstring(L, 1), err, sizeof err) != 0)
        return io_error(L, err);
    return 0;
}

static int l_fsync(lua_State *L)
{
    char err[1024];
    if (fs_fsync_path(luaL_checkstring(L, 1), err, sizeof err) != 0)
        return io_error(L, err);
    return 0;
}

static int l_fsync_tree(lua_State *L)
{
    char err[1024];
    if (fs_fsync_tree(luaL_checkstring(L, 1), err, sizeof err) != 0)
        return io_error(L, err);
    return 0;
}

static int l_rename(lua_State *L)
{
    char err[1024];
    if (fs_rename_durable(luaL_checkstring(L, 1), luaL_checkstring(L, 2), err, sizeof err) != 0)
        return io_error(L, err);
    return 0;
}

static int l_remove(lua_State *L)
{
    char err[1024];
    if (fs_remove_tree(luaL_checkstring(L, 1), err, sizeof err) != 0)
        return io_error(L, err);
    return 0;
}

typedef struct ListBox {
    char **names;
    size_t n;
} ListBox;

static int list_gc(lua_State *L)
{
    ListBox *b = luaL_checkudata(L, 1, LIST_MT);
    fs_list_free(b->names, b->n);
    b->names = NULL;
    b->n = 0;
    return 0;
}

/* rl.fs.list(path) -> {names...} sorted bytewise. */
static int l_list(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    /* The names live in a box the collector frees, so a Lua error while copying
     * them (out of memory) leaks nothing. */
    ListBox *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->names = NULL;
    b->n = 0;
    if (luaL_newmetatable(L, LIST_MT)) {
        lua_pushcfunction(L, list_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    char err[1024];
    if (fs_list_dir(path, &b->names, &b->n, err, sizeof err) != 0)
        return io_error(L, err);
    lua_createtable(L, (int)b->n, 0);
    for (size_t i = 0; i < b->n; i++) {
        lua_pushstring(L, b->names[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* rl.fs.stat(path) -> {type="file"|"dir"|"link"|"other", size=} or nil. */
static int l_stat(lua_State *L)
{
    fs_info st;
    char err[1024];
    if (fs_stat(luaL_checkstring(L, 1), &st, err, sizeof err) != 0)
        return io_error(L, err);
    if (st.kind == FS_NONE) {
        lua_pushnil(L);
        return 1;
    }
    static const char *names[] = {"none", "file", "dir", "link", "other"};
    lua_createtable(L, 0, 2);
    lua_pushstring(L, names[st.kind]);
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)st.size);
    lua_setfield(L, -2, "size");
    return 1;
}

/* rl.fs.sha256(path) -> hex, size */
static int l_sha256(lua_State *L)
{
    char hex[65], err[1024];
    uint64_t size;
    if (fs_sha256_file(luaL_checkstring(L, 1), hex, &size, err, sizeof err) != 0)
        return io_error(L, err);
    lua_pushstring(L, hex);
    lua_pushinteger(L, (lua_Integer)size);
    return 2;
}

/* rl.fs.sha256_string(s) -> hex */
static int l_sha256_string(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    sha256_hex(s, n, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int l_free_space(lua_State *L)
{
    uint64_t bytes;
    char err[1024];
    if (fs_free_space(luaL_checkstring(L, 1), &bytes, err, sizeof err) != 0)
        return io_error(L, err);
    lua_pushinteger(L, (lua_Integer)bytes);
    return 1;
}

/* rl.fs.monotonic() -> seconds (float) since an arbitrary origin: for durations,
 * never for anything a run computes. */
static int l_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

/* rl.fs.sleep(seconds): returns early on a second stop signal (sig.h), so the hook
 * that the signal armed stops the recipe at once instead of after the sleep. */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    if (s <= 0)
        return 0;
    struct timespec ts = {(time_t)s, (long)((s - (lua_Number)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && sig_level() < 2)
        ;
    return 0;
}

/* rl.fs.isatty(fd) -> boolean (fd 2 = stderr by default) */
static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 2)));
    return 1;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

typedef struct Lock {
    int fd; /* -1 once released */
} Lock;

static int lock_release(lua_State *L)
{
    Lock *k = luaL_checkudata(L, 1, LOCK_MT);
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    return 0;
}

static int lock_tostring(lua_State *L)
{
    Lock *k = luaL_checkudata(L, 1, LOCK_MT);
    lua_pushstring(L, k->fd >= 0 ? "rl.fs.lock (held)" : "rl.fs.lock (released)");
    return 1;
}

static const luaL_Reg lock_methods[] = {
    {"release", lock_release},
    {NULL, NULL},
};

/* rl.fs.lock(path) -> lock | nil, "busy": an exclusive flock held until
 * lock:release(), the lock is collected or closed, or the process ends. */
static int l_lock(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    /* The handle exists (closed) before the fd does, so nothing can raise between
     * opening the fd and handing it to the collector. */
    Lock *k = lua_newuserdatauv(L, sizeof *k, 0);
    k->fd = -1;
    if (luaL_newmetatable(L, LOCK_MT)) {
        lua_pushcfunction(L, lock_release);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, lock_release);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, lock_tostring);
        lua_setfield(L, -2, "__tostring");
        luaL_newlib(L, lock_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_setmetatable(L, -2);
    char err[1024];
    int fd;
    int rc = fs_lock(path, &fd, err, sizeof err);
    if (rc < 0)
        return io_error(L, err);
    if (rc == 1) {
        lua_pushnil(L);
        lua_pushliteral(L, "busy");
        return 2;
    }
    k->fd = fd;
    return 1;
}

static const luaL_Reg fs_funcs[] = {
    {"lock", l_lock},
    {"write", l_write},
    {"mkdir", l_mkdir},
    {"fsync", l_fsync},
    {"fsync_tree", l_fsync_tree},
    {"rename", l_rename},
    {"remove", l_remove},
    {"list", l_list},
    {"stat", l_stat},
    {"sha256", l_sha256},
    {"sha256_string", l_sha256_string},
    {"free_space", l_free_space},
    {"monotonic", l_monotonic},
    {"sleep", l_sleep},
    {"isatty", l_isatty},
    {"getpid", l_getpid},
    {NULL, NULL},
};

int luaopen_rl_fs(lua_State *L)
{
    luaL_newlib(L, fs_funcs);
    return 1;
}

/* home.c — see home.h. */
#include "home.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int has_file(const char *dir, const char *rel)
{
    char p[PATH_MAX];
    struct stat st;
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, rel) >= sizeof p)
        return 0;
    return stat(p, &st) == 0;
}

static void dirname_inplace(char *p)
{
    char *s = strrchr(p, '/');
    if (s && s != p)
        *s = '\0';
    else if (s)
        s[1] = '\0';
}

int home_find(char *out, size_t outlen, char *err, size_t errlen)
{
    const char *env = getenv("RLHOST_HOME");
    if (env && *env) {
        if (!has_file(env, "lua/rl/init.lua")) {
            snprintf(err, errlen, "RLHOST_HOME=%s does not hold lua/rl/init.lua", env);
            return -1;
        }
        if ((size_t)snprintf(out, outlen, "%s", env) >= outlen)
            goto toolong;
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) {
        snprintf(err, errlen, "cannot find the executable's path: %s", strerror(errno));
        return -1;
    }
    exe[n] = '\0';
    dirname_inplace(exe); /* .../build or PREFIX/bin */
    dirname_inplace(exe); /* source tree root or PREFIX */
    if (has_file(exe, "lua/rl/init.lua")) {
        if ((size_t)snprintf(out, outlen, "%s", exe) >= outlen)
            goto toolong;
        return 0;
    }
    char share[PATH_MAX];
    if ((size_t)snprintf(share, sizeof share, "%s/share/rlhost", exe) < sizeof share &&
        has_file(share, "lua/rl/init.lua")) {
        if ((size_t)snprintf(out, outlen, "%s", share) >= outlen)
            goto toolong;
        return 0;
    }
    snprintf(err, errlen,
             "cannot find rlhost's Lua library (lua/rl/init.lua) next to %s or in "
             "%s/share/rlhost; set RLHOST_HOME", exe, exe);
    return -1;
toolong:
    snprintf(err, errlen, "home path too long");
    return -1;
}

int home_venv(const char *home, char *out, size_t outlen, char *err, size_t errlen)
{
    const char *env = getenv("RLHOST_VENV");
    char p[PATH_MAX];
    if (env && *env) {
        snprintf(p, sizeof p, "%s", env);
    } else if (has_file(home, ".venv/bin/python")) {
        snprintf(p, sizeof p, "%s/.venv", home);
    } else {
        /* An installed tree records where `make install` found the venv. */
        char f[PATH_MAX];
        snprintf(f, sizeof f, "%s/venv", home);
        FILE *fp = fopen(f, "r");
        if (!fp || !fgets(p, sizeof p, fp)) {
            if (fp)
                fclose(fp);
            snprintf(err, errlen,
                     "no Python environment: %s/.venv is missing (run `make deps`) and "
                     "RLHOST_VENV is not set", home);
            return -1;
        }
        fclose(fp);
        p[strcspn(p, "\r\n")] = '\0';
    }
    char py[PATH_MAX + 16];
    snprintf(py, sizeof py, "%s/bin/python", p);
    if (access(py, X_OK) != 0) {
        snprintf(err, errlen, "no Python interpreter at %s (run `make deps`)", py);
        return -1;
    }
    if ((size_t)snprintf(out, outlen, "%s", p) >= outlen) {
        snprintf(err, errlen, "venv path too long");
        return -1;
    }
    return 0;
}

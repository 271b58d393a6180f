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
    char f[PATH_MAX];
    const char *from = NULL; /* the file the path was read from */
    if (env && *env) {
        snprintf(p, sizeof p, "%s", env);
    } else if (has_file(home, ".venv/bin/python")) {
        snprintf(p, sizeof p, "%s/.venv", home);
    } else {
        /* An installed tree records where `make install` found the venv. */
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
        from = f;
    }
    char py[PATH_MAX + 16];
    snprintf(py, sizeof py, "%s/bin/python", p);
    if (access(py, X_OK) != 0) {
        if (from)
            snprintf(err, errlen,
                     "no Python interpreter at %s: the environment `make install` recorded "
                     "in %s is gone; set RLHOST_VENV to a venv made from "
                     "scripts/requirements.txt (or run `make deps` and `make install` again)",
                     py, from);
        else
            snprintf(err, errlen, "no Python interpreter at %s (%s; run `make deps`)", py,
                     env && *env ? "RLHOST_VENV" : "the source tree's .venv");
        return -1;
    }
    if ((size_t)snprintf(out, outlen, "%s", p) >= outlen) {
        snprintf(err, errlen, "venv path too long");
        return -1;
    }
    return 0;
}

/* Candidate i (0-based) for `name`; 0 when there is no such candidate. */
static int recipe_candidate(const char *home, const char *name, int i, char *out, size_t outlen)
{
    size_t n = strlen(name);
    int bare = strchr(name, '/') == NULL;
    int has_ext = n > 4 && strcmp(name + n - 4, ".lua") == 0;
    int wrote;
    switch (i) {
    case 0: wrote = snprintf(out, outlen, "%s", name); break;
    case 1:
        if (!bare)
            return 0;
        wrote = snprintf(out, outlen, "%s/recipes/%s%s", home, name, has_ext ? "" : ".lua");
        break;
    case 2:
        if (name[0] == '/' || bare)
            return 0;
        wrote = snprintf(out, outlen, "%s/%s", home, name);
        break;
    default: return 0;
    }
    return wrote > 0 && (size_t)wrote < outlen;
}

int home_recipe(const char *home, const char *name, char *out, size_t outlen, char *err,
                size_t errlen)
{
    char tried[3 * PATH_MAX] = "";
    size_t used = 0;
    for (int i = 0; i < 3; i++) {
        if (!recipe_candidate(home, name, i, out, outlen))
            continue;
        struct stat st;
        if (stat(out, &st) == 0 && S_ISDIR(st.st_mode) && i == 0) {
            snprintf(err, errlen, "cannot read %s: Is a directory, not a recipe file", out);
            return -1;
        }
        if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode)) {
            if (access(out, R_OK) == 0)
                return 0;
            snprintf(err, errlen, "cannot open recipe '%s': %s", out, strerror(errno));
            return -1;
        }
        int w = snprintf(tried + used, sizeof tried - used, "%s%s", used ? ", " : "", out);
        if (w > 0 && (size_t)w < sizeof tried - used)
            used += (size_t)w;
    }
    snprintf(err, errlen, "cannot open recipe '%s': %s (looked for %s)", name, strerror(ENOENT),
             tried);
    return -1;
}

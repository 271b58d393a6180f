/* main.c — the rlhost command line: run a recipe, a chunk, standard input or a REPL,
 * with typed key=value settings for rl.config. Exit statuses: 0 ok, 1 runtime error,
 * 2 usage/configuration/load error, 128 + the signal when stopped by SIGINT (130),
 * SIGTERM (143) or SIGHUP (129). */
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "home.h"
#include "overrides.h"
#include "repl.h"
#include "runtime.h"
#include "sig.h"
#include "version.h"

static const char usage_text[] =
    "usage: rlhost [options] [RECIPE.lua | -] [key=value ...] [args ...]\n"
    "\n"
    "Runs a Lua recipe that trains or evaluates a language model. key=value settings\n"
    "override the defaults the recipe passes to rl.config; they are typed: integers,\n"
    "floats, true/false, nil, strings (key='\"3\"' for a string that looks like a\n"
    "number). Other arguments reach the recipe in `arg` and `...`.\n"
    "\n"
    "options:\n"
    "  -e CODE        run CODE (may be repeated; runs before RECIPE)\n"
    "  -i             interactive mode after the rest (rl is already required)\n"
    "  -              read the recipe from standard input\n"
    "  -h, --help     show this help; with a recipe (before or after it), the\n"
    "                 recipe's settings, their types, defaults and comments\n"
    "  -v, --version  show the version and what it was built against\n"
    "  --             stop handling options\n"
    "\n"
    "environment:\n"
    "  RLHOST_HOME          where lua/, scripts/ and recipes/ are (default: found\n"
    "                       from the executable's path)\n"
    "  RLHOST_VENV          the Python virtual environment (default: <home>/.venv)\n"
    "  RLHOST_MEMORY_LIMIT  cap on Lua's memory in MiB (default: none)\n"
    "\n"
    "exit status:\n"
    "  0    success\n"
    "  1    runtime error in the recipe\n"
    "  2    usage or configuration error, or a recipe that does not load\n"
    "  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM, 129 by SIGHUP: the first\n"
    "       signal lets the recipe finish its step, checkpoint and stop; a second one\n"
    "       stops it at once\n";

static void print_version(void)
{
    printf("rlhost %s\n", RLHOST_VERSION);
    printf("built with %s, Python %s, libcurl %s, cJSON %s, SQLite %s\n", LUA_RELEASE,
           version_python(), version_curl(), version_cjson(), version_sqlite());
}

static int usage_error(const char *fmt, const char *what)
{
    fprintf(stderr, "rlhost: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\nTry 'rlhost --help'.\n");
    return EXIT_USAGE;
}

typedef struct Args {
    const char *chunks[64]; /* -e CODE, in order */
    int nchunks;
    int interactive;
    int help;     /* --help with a recipe: its settings, nothing run */
    int script;   /* index of RECIPE (or "-") in argv, 0 if none */
    int first;    /* first argument after options/script: settings and args */
} Args;

static int parse_args(int argc, char **argv, Args *a)
{
    memset(a, 0, sizeof *a);
    int i = 1;
    for (; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--") == 0) {
            i++;
            break;
        }
        if (s[0] != '-' || strcmp(s, "-") == 0)
            break;
        if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
            if (i + 1 < argc && argv[i + 1][0] != '-' && !ov_is_override(argv[i + 1])) {
                a->help = 1; /* rlhost --help RECIPE */
                continue;
            }
            fputs(usage_text, stdout);
            exit(EXIT_OK);
        } else if (strcmp(s, "-v") == 0 || strcmp(s, "--version") == 0) {
            print_version();
            exit(EXIT_OK);
        } else if (strcmp(s, "-i") == 0) {
            a->interactive = 1;
        } else if (strncmp(s, "-e", 2) == 0) {
            const char *code = s[2] ? s + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (!code)
                return usage_error("'-e' needs an argument%s", "");
            if (a->nchunks == (int)(sizeof a->chunks / sizeof a->chunks[0]))
                return usage_error("too many -e options%s", "");
            a->chunks[a->nchunks++] = code;
        } else {
            return usage_error("unknown option '%s'", s);
        }
    }
    /* The first remaining argument is the recipe unless it is a setting. */
    if (i < argc && !ov_is_override(argv[i]))
        a->script = i++;
    a->first = i;
    for (int j = i; a->script && j < argc; j++) /* RECIPE --help | -h | help */
        if (strcmp(argv[j], "--help") == 0 || strcmp(argv[j], "-h") == 0 ||
            strcmp(argv[j], "help") == 0)
            a->help = 1;
    if (a->help && (!a->script || strcmp(argv[a->script], "-") == 0))
        return usage_error("--help with a recipe needs the recipe's file%s", "");
    if (!a->script && !a->nchunks && !a->interactive) {
        if (i < argc)
            return usage_error("no recipe given before the setting '%s'", argv[i]);
        if (isatty(STDIN_FILENO)) {
            a->interactive = 1; /* plain `rlhost` on a terminal: a REPL, like lua */
        } else {
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    return -1;
}

/* Parse key=value arguments into the registry table rl.overrides (array of
 * {key=, value=, type=, arg=}). Returns EXIT_USAGE after printing on bad input. */
static int l_setup_overrides(lua_State *L)
{
    char **argv = lua_touserdata(L, 1);
    int first = (int)lua_tointeger(L, 2), argc = (int)lua_tointeger(L, 3);
    lua_newtable(L); /* overrides */
    lua_newtable(L); /* seen keys */
    int n = 0;
    for (int i = first; i < argc; i++) {
        if (!ov_is_override(argv[i]))
            continue;
        ov_item it;
        char err[512];
        if (ov_parse(argv[i], &it, err, sizeof err) != 0) {
            lua_pushstring(L, err);
            return lua_error(L);
        }
        /* Copy into Lua before anything can raise, then free. */
        lua_createtable(L, 0, 4);
        lua_pushstring(L, it.key);
        lua_setfield(L, -2, "key");
        lua_pushstring(L, ov_type_name(it.type));
        lua_setfield(L, -2, "type");
        lua_pushstring(L, argv[i]);
        lua_setfield(L, -2, "arg");
        switch (it.type) {
        case OV_NIL: lua_pushnil(L); break;
        case OV_BOOL: lua_pushboolean(L, it.b); break;
        case OV_INT: lua_pushinteger(L, (lua_Integer)it.i); break;
        case OV_FLOAT: lua_pushnumber(L, (lua_Number)it.d); break;
        default: lua_pushlstring(L, it.s, it.slen);
        }
        lua_setfield(L, -2, "value");
        ov_free(&it);
        /* stack: overrides, seen, item */
        lua_getfield(L, -1, "key");
        if (lua_rawget(L, -3) != LUA_TNIL) {
            lua_getfield(L, -2, "key");
            lua_pushfstring(L, "setting '%s' is given twice", lua_tostring(L, -1));
            return lua_error(L);
        }
        lua_pop(L, 1);
        lua_getfield(L, -1, "key");
        lua_pushboolean(L, 1);
        lua_rawset(L, -4);
        lua_rawseti(L, -3, ++n);
    }
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "rl.overrides");
    return 0;
}

/* The `arg` table as lua.c makes it: arg[0] the recipe, positives what follows,
 * negatives the interpreter and options. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script)
{
    int narg = argc - (script + 1);
    lua_createtable(L, narg, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

static int run_chunk(lua_State *L, const char *code)
{
    if (luaL_loadbuffer(L, code, strlen(code), "=(command line)") != LUA_OK)
        return rt_report_load(L);
    return rt_report(L, rt_docall(L, 0, 0));
}

static int run_script(lua_State *L, const char *path, char **argv, int argc, int script,
                      int interactive)
{
    int status = strcmp(path, "-") == 0 ? luaL_loadfile(L, NULL) : luaL_loadfile(L, path);
    if (status != LUA_OK)
        return rt_report_load(L);
    if (interactive)
        repl_keep_locals(L); /* the REPL after it sees the recipe's locals */
    int n = 0;
    for (int i = script + 1; i < argc; i++, n++) {
        luaL_checkstack(L, 1, "too many arguments");
        lua_pushstring(L, argv[i]);
    }
    return rt_report(L, rt_docall(L, n, 0));
}

/* Module search (lua/rl/paths.lua): the recipe's directory, the current one and
 * rlhost's recipes/, with a one-line error for a module found in none. */
static int setup_paths(lua_State *L, const char *home, const char *script_dir)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rl.paths");
    int status = rt_docall(L, 1, 1);
    if (status == LUA_OK) {
        lua_getfield(L, -1, "install");
        lua_remove(L, -2);
        lua_pushstring(L, home);
        if (script_dir)
            lua_pushstring(L, script_dir);
        else
            lua_pushnil(L);
        status = rt_docall(L, 2, 0);
    }
    return status == LUA_OK ? EXIT_OK : rt_report(L, status);
}

/* RECIPE --help: rl.help.main prints the recipe's settings, running it no further
 * than its rl.config call. Returns its exit status. */
static int recipe_help(lua_State *L, const char *path)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rl.help");
    int status = rt_docall(L, 1, 1);
    if (status != LUA_OK)
        return rt_report(L, status);
    lua_getfield(L, -1, "main");
    lua_pushstring(L, path);
    if ((status = rt_docall(L, 1, 1)) != LUA_OK)
        return rt_report(L, status);
    int rc = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
    return rc;
}

/* `rl` as a global for -e and the REPL, like `lua -l`. */
static int require_rl_global(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rl");
    int status = rt_docall(L, 1, 1);
    if (status != LUA_OK)
        return rt_report(L, status);
    lua_setglobal(L, "rl");
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    Args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;

    char home[PATH_MAX], err[PATH_MAX + 128];
    if (home_find(home, sizeof home, err, sizeof err) != 0) {
        fprintf(stderr, "rlhost: %s\n", err);
        return EXIT_USAGE;
    }
    const char *script = a.script ? argv[a.script] : NULL;
    char script_dir[PATH_MAX] = ".", recipe[PATH_MAX];
    if (script && strcmp(script, "-") != 0) {
        if (home_recipe(home, script, recipe, sizeof recipe, err, sizeof err) != 0) {
            fprintf(stderr, "rlhost: %s\n", err);
            return EXIT_USAGE;
        }
        script = argv[a.script] = recipe; /* arg[0] is the file that runs */
        snprintf(script_dir, sizeof script_dir, "%s", script);
        char *slash = strrchr(script_dir, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(script_dir, ".");
    }
    size_t mem_limit = 0;
    const char *lim = getenv("RLHOST_MEMORY_LIMIT");
    if (lim && *lim)
        mem_limit = (size_t)strtoull(lim, NULL, 10) << 20;

    lua_State *L = rt_new(home, script ? script_dir : NULL, mem_limit);
    if (!L) {
        fprintf(stderr, "rlhost: cannot create the Lua state (out of memory)\n");
        return EXIT_RUNTIME;
    }
    lua_pushcfunction(L, l_setup_overrides);
    lua_pushlightuserdata(L, argv);
    lua_pushinteger(L, a.first);
    lua_pushinteger(L, argc);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
        fprintf(stderr, "rlhost: %s\n", lua_tostring(L, -1));
        rt_close(L);
        return EXIT_USAGE;
    }
    create_arg_table(L, argv, argc, a.script ? a.script : a.first - 1);

    if ((rc = setup_paths(L, home, script ? script_dir : NULL)) != EXIT_OK)
        goto done;
    if ((a.nchunks || a.interactive) && (rc = require_rl_global(L)) != EXIT_OK)
        goto done;
    for (int i = 0; i < a.nchunks && rc == EXIT_OK; i++)
        rc = run_chunk(L, a.chunks[i]);
    if (rc == EXIT_OK && script && a.help) {
        rc = recipe_help(L, script);
        goto done;
    }
    if (rc == EXIT_OK && script)
        rc = run_script(L, script, argv, argc, a.script, a.interactive);
    if (rc == EXIT_OK && a.interactive) {
        print_version();
        repl_run(L);
    }
done:
    if (rc == EXIT_OK && sig_level() > 0)
        rc = sig_exit_status(); /* the recipe stopped cleanly after a signal */
    fflush(stdout);
    rt_close(L);
    return rc;
}

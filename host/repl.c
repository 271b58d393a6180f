/* repl.c — see repl.h. */
#include "repl.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"
#include "sig.h"

#ifdef RLHOST_READLINE
#include <readline/history.h>
#include <readline/readline.h>
#endif

#define EOFMARK "<eof>"

/* Read one line into a Lua string on the stack; 0 at end of input. */
static int read_line(lua_State *L, const char *prompt)
{
#ifdef RLHOST_READLINE
    if (isatty(STDIN_FILENO)) {
        char *line = readline(prompt);
        if (!line)
            return 0;
        lua_pushstring(L, line);
        free(line);
        return 1;
    }
#endif
    char buf[4096];
    if (isatty(STDIN_FILENO)) {
        fputs(prompt, stdout);
        fflush(stdout);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int got = 0;
    while (fgets(buf, sizeof buf, stdin)) {
        got = 1;
        size_t n = strlen(buf);
        int end = n > 0 && buf[n - 1] == '\n';
        luaL_addlstring(&b, buf, end ? n - 1 : n);
        if (end)
            break;
    }
    luaL_pushresult(&b);
    if (!got) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

static int incomplete(lua_State *L, int status)
{
    if (status == LUA_ERRSYNTAX) {
        size_t lmsg;
        const char *msg = lua_tolstring(L, -1, &lmsg);
        if (lmsg >= sizeof EOFMARK - 1 &&
            strcmp(msg + lmsg - (sizeof EOFMARK - 1), EOFMARK) == 0) {
            lua_pop(L, 1);
            return 1;
        }
    }
    return 0;
}

/* Stack: line. Try "return LINE" so that expressions print. */
static int add_return(lua_State *L)
{
    const char *line = lua_tostring(L, -1);
    const char *retline = lua_pushfstring(L, "return %s;", line);
    int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
    if (status == LUA_OK) {
        lua_remove(L, -2);
#ifdef RLHOST_READLINE
        if (line[0])
            add_history(line);
#endif
    } else {
        lua_pop(L, 2);
    }
    return status;
}

/* Stack: line. Read continuation lines until the chunk is complete. */
static int multiline(lua_State *L)
{
    for (;;) {
        size_t len;
        const char *line = lua_tolstring(L, 1, &len);
        int status = luaL_loadbuffer(L, line, len, "=stdin");
        if (!incomplete(L, status) || !read_line(L, ">> ")) {
#ifdef RLHOST_READLINE
            add_history(line);
#endif
            return status;
        }
        lua_pushliteral(L, "\n");
        lua_insert(L, -2);
        lua_concat(L, 3);
    }
}

static void print_results(lua_State *L)
{
    int n = lua_gettop(L);
    if (n == 0)
        return;
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (rt_docall(L, n, 0) != LUA_OK)
        rt_report(L, LUA_ERRRUN);
}

void repl_run(lua_State *L)
{
    lua_settop(L, 0);
    while (read_line(L, "> ")) {
        int status = add_return(L);
        if (status != LUA_OK)
            status = multiline(L);
        lua_remove(L, 1); /* the line */
        if (status == LUA_OK)
            status = rt_docall(L, 0, LUA_MULTRET);
        if (status == LUA_OK)
            print_results(L);
        else if (status == LUA_ERRSYNTAX)
            rt_report_load(L);
        else
            rt_report(L, status);
        lua_settop(L, 0);
        if (sig_first() == SIGTERM || sig_first() == SIGHUP)
            break; /* asked to end the session (main exits 143/129), not the command */
        sig_reset(); /* Ctrl-C stopped that command, not the session */
    }
    if (isatty(STDIN_FILENO))
        fputc('\n', stdout);
}

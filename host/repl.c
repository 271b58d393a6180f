/* repl.c — see repl.h. Line reading, evaluation and error reports are here; what is
 * easier in Lua (pretty-printing, completion candidates, help, error text) is in
 * lua/rl/repl.lua. */
#include "repl.h"

#include <lauxlib.h>
#include <limits.h>
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
#define CHUNKNAME "=stdin" /* errors read "stdin:LINE:" */
#define REG_MOD "rl.repl.module"
#define REG_TB "rl.repl.traceback"
#define REG_RECIPE "rl.repl.recipe"
#define HISTORY_LINES 1000

#ifdef RLHOST_READLINE
static lua_State *completion_state; /* readline's callbacks take no user data */
static char history_path[PATH_MAX];

/* Stack: none. Pushes rl.repl.complete(word) (a list) or nothing on failure. */
static int l_complete(lua_State *L)
{
    const char *word = lua_touserdata(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_MOD);
    lua_getfield(L, -1, "complete");
    lua_pushstring(L, word);
    lua_call(L, 1, 1);
    return 1;
}

/* readline's generator: state 0 computes the candidates into the registry, then
 * each call returns the next one (malloc'd; readline frees it). */
static char *next_match(const char *text, int state)
{
    static lua_Integer i;
    lua_State *L = completion_state;
    if (state == 0) {
        i = 0;
        lua_pushcfunction(L, l_complete);
        lua_pushlightuserdata(L, (void *)text);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_pushnil(L);
        }
        lua_setfield(L, LUA_REGISTRYINDEX, "rl.repl.matches");
    }
    char *out = NULL;
    int top = lua_gettop(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, "rl.repl.matches") == LUA_TTABLE &&
        lua_rawgeti(L, -1, ++i) == LUA_TSTRING)
        out = strdup(lua_tostring(L, -1));
    lua_settop(L, top);
    return out;
}

static char **attempt_completion(const char *text, int start, int end)
{
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    rl_completion_append_character = '\0'; /* "rl.model" may go on with "{" or "." */
    return rl_completion_matches(text, next_match);
}

static void history_open(lua_State *L)
{
    const char *home = getenv("HOME");
    completion_state = L;
    rl_readline_name = "rlhost";
    /* '.' and ':' belong to the word, so "rl.mo" completes as one name. */
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
    rl_attempted_completion_function = attempt_completion;
    if (!home || !*home ||
        (size_t)snprintf(history_path, sizeof history_path, "%s/.rlhost_history", home) >=
            sizeof history_path) {
        history_path[0] = '\0';
        return;
    }
    stifle_history(HISTORY_LINES);
    read_history(history_path); /* none yet is fine */
}

/* Each line is appended as it is entered, so a session that is killed keeps it. */
static void history_add(const char *line)
{
    if (!line[0])
        return;
    add_history(line);
    if (!history_path[0])
        return;
    if (access(history_path, F_OK) != 0)
        write_history(history_path);
    else
        append_history(1, history_path);
}

static void history_close(void)
{
    if (history_path[0])
        history_truncate_file(history_path, HISTORY_LINES);
}
#else
static void history_open(lua_State *L) { (void)L; }
static void history_add(const char *line) { (void)line; }
static void history_close(void) {}
#endif

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

/* Stack: line. Try "return LINE" so that expressions print ("=EXPR" as lua does). */
static int add_return(lua_State *L)
{
    const char *line = lua_tostring(L, -1);
    const char *retline = lua_pushfstring(L, "return %s;", line[0] == '=' ? line + 1 : line);
    int status = luaL_loadbuffer(L, retline, strlen(retline), CHUNKNAME);
    if (status == LUA_OK) {
        lua_remove(L, -2);
        history_add(line);
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
        int status = luaL_loadbuffer(L, line, len, CHUNKNAME);
        if (!incomplete(L, status) || !read_line(L, ">> ")) {
            history_add(line);
            return status;
        }
        lua_pushliteral(L, "\n");
        lua_insert(L, -2);
        lua_concat(L, 3);
    }
}

static int chunk_lines; /* lines in the chunk being evaluated */

/* The innermost line of the typed chunk on the call stack. A chunk that ended in
 * a tail call (`return f(x)`, and every expression typed, which is run as
 * `return EXPR`) has left the stack: its last line is the one that called. */
static int typed_line(lua_State *L)
{
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && strcmp(ar.source, CHUNKNAME) == 0)
            return ar.currentline;
    }
    return chunk_lines;
}

/* Message handler: the error as one line at the line typed (rl.repl.error_text),
 * not at the library line that raised it; the full traceback is kept for the
 * `traceback` command. */
static int repl_msgh(lua_State *L)
{
    int line = typed_line(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_MOD);
    lua_getfield(L, -1, "error_text");
    lua_pushvalue(L, 1);
    lua_pushinteger(L, line);
    lua_call(L, 2, 2); /* text, detail (the original message) */
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_TB);
    lua_pop(L, 1);
    return 1;
}

/* Run through rt_docall (so a second Ctrl-C stops it): stack: chunk. Returns
 * true and the results, or false and the error text. */
static int eval_chunk(lua_State *L)
{
    lua_pushcfunction(L, repl_msgh);
    lua_insert(L, 1);
    if (lua_pcall(L, 0, LUA_MULTRET, 1) != LUA_OK) {
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_replace(L, 1);
    return lua_gettop(L);
}

/* Stack: values. Prints each through rl.repl.show, tab-separated; a string as it
 * is (as lua.c does: a sample's text reads best unquoted). */
static int print_values(lua_State *L)
{
    int n = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_MOD);
    lua_getfield(L, -1, "show");
    for (int i = 1; i <= n; i++) {
        if (lua_type(L, i) == LUA_TSTRING) {
            lua_pushvalue(L, i);
        } else {
            lua_pushvalue(L, -1);
            lua_pushvalue(L, i);
            lua_call(L, 1, 1);
        }
        fputs(lua_tostring(L, -1), stdout);
        fputc(i < n ? '\t' : '\n', stdout);
        lua_pop(L, 1);
    }
    fflush(stdout);
    return 0;
}

/* Stack: chunk. Evaluate it and print its values or its error. */
static void evaluate(lua_State *L)
{
    lua_pushcfunction(L, eval_chunk);
    lua_insert(L, -2);
    int status = rt_docall(L, 1, LUA_MULTRET);
    if (status != LUA_OK) {
        rt_report(L, status);
        return;
    }
    if (!lua_toboolean(L, 1)) {
        fprintf(stderr, "%s\n", lua_tostring(L, 2));
        fflush(stderr);
        return;
    }
    lua_remove(L, 1);
    if (lua_gettop(L) == 0)
        return;
    lua_pushcfunction(L, print_values);
    lua_insert(L, 1);
    if ((status = rt_docall(L, lua_gettop(L) - 1, 0)) != LUA_OK)
        rt_report(L, status);
}

/* The REPL's own words; 1 when the line was one. */
static int command(lua_State *L, const char *line)
{
    while (*line == ' ' || *line == '\t')
        line++;
    size_t n = strcspn(line, " \t");
    if (line[n + strspn(line + n, " \t")] != '\0')
        return 0;
    if (n == 4 && strncmp(line, "help", 4) == 0) {
        lua_getfield(L, LUA_REGISTRYINDEX, REG_MOD);
        lua_getfield(L, -1, "help");
        fputs(lua_tostring(L, -1), stdout);
    } else if (n == 9 && strncmp(line, "traceback", 9) == 0) {
        lua_getfield(L, LUA_REGISTRYINDEX, REG_TB);
        puts(lua_isstring(L, -1) ? lua_tostring(L, -1) : "no error yet");
    } else {
        return 0;
    }
    fflush(stdout);
    history_add(line);
    return 1;
}

static int load_module(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rl.repl");
    int status = rt_docall(L, 1, 1);
    if (status != LUA_OK)
        return rt_report(L, status);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_MOD);
    return 0;
}

void repl_run(lua_State *L)
{
    lua_settop(L, 0);
    if (load_module(L) != 0)
        return;
    history_open(L);
    if (isatty(STDIN_FILENO))
        puts("Type Lua (an expression prints its value); `help` for more, Ctrl-D to leave.");
    while (read_line(L, "> ")) {
        if (command(L, lua_tostring(L, 1))) {
            lua_settop(L, 0);
            continue;
        }
        int status = add_return(L);
        if (status != LUA_OK)
            status = multiline(L);
        chunk_lines = 1;
        for (const char *p = lua_tostring(L, 1); (p = strchr(p, '\n')) != NULL; p++)
            chunk_lines++;
        lua_remove(L, 1); /* the line */
        if (status == LUA_OK)
            evaluate(L);
        else if (status == LUA_ERRSYNTAX)
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
        else
            rt_report(L, status);
        lua_settop(L, 0);
        if (sig_first() == SIGTERM || sig_first() == SIGHUP)
            break; /* asked to end the session (main exits 143/129), not the command */
        sig_reset(); /* Ctrl-C stopped that command, not the session */
    }
    history_close();
    if (isatty(STDIN_FILENO))
        fputc('\n', stdout);
}

/* Return hook: when the recipe's main chunk returns, its locals become globals. */
static void keep_locals_hook(lua_State *L, lua_Debug *ar)
{
    if (ar->event != LUA_HOOKRET || !lua_getinfo(L, "f", ar))
        return;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_RECIPE);
    int mine = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!mine)
        return;
    lua_sethook(L, NULL, 0, 0);
    const char *name;
    for (int i = 1; (name = lua_getlocal(L, ar, i)) != NULL; i++) {
        if (name[0] == '(') /* temporaries, varargs */
            lua_pop(L, 1);
        else
            lua_setglobal(L, name);
    }
}

void repl_keep_locals(lua_State *L)
{
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_RECIPE);
    lua_sethook(L, keep_locals_hook, LUA_MASKRET, 0);
}

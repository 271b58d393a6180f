/* lmodel.c — rl.cmodel: the model handle, a userdata over one of two transports.
 *
 *   embedded: the engine runs in this process's CPython (host/py.c); one interpreter
 *             serves every embedded handle, each its own engine model.
 *   worker:   the engine runs in a child `<venv>/bin/python -m rlengine.worker`
 *             (host/proc.c), one child per handle, JSON Lines over its stdin/stdout.
 *
 * Both carry the same request text to the same engine function, so a recipe switches
 * with one option and gets the same numbers. The friendly methods (generate,
 * backward, step, train_step, sync, ...) are written in Lua (lua/rl/model.lua) on top
 * of `handle:_call(op, request)`; this file owns options checking, the transports,
 * error tables and the handle's life cycle.
 *
 * A worker that dies fails the pending call with kind "crash"; the next call starts a
 * new worker and sends it the original load request again, so the handle keeps
 * working. What the dead worker held is lost: weights trained or synced into it since
 * the load, its optimizer state and its version (a generator gets current weights
 * back at the recipe's next sync; info().restarts counts restarts). */
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "home.h"
#include "lrl.h"
#include "proc.h"
#include "py.h"

#define MODEL_MT "rl.model"
#define LOAD_FLOOR_S 60.0 /* a load imports torch: never hold it to a short call timeout */

enum { T_EMBEDDED, T_WORKER };

typedef struct Model {
    int transport;
    int open;            /* loaded and usable */
    lua_Integer handle;  /* the engine's model handle */
    lua_Integer next_id; /* request ids, per handle (a worker sees only its own) */
    double timeout;      /* seconds per request (worker only); 0 = no deadline */
    proc *pr;            /* worker child, or NULL (none yet, or the last one died) */
    char *reply;         /* last embedded reply (malloc'd by py_call), owned here */
    int load_ref;        /* registry ref to the load request table (for restarts) */
    int restarts;        /* workers started after the first */
    char venv[PATH_MAX];
    char scripts[PATH_MAX];
} Model;

/* ---- errors ---------------------------------------------------------------------- */

/* Level of the first stack frame outside the rl library, so an error's `where` names
 * the recipe line rather than lua/rl/model.lua. */
static int user_level(lua_State *L)
{
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "S", &ar))
            break;
        if (ar.what && strcmp(ar.what, "C") == 0)
            continue;
        if (!strstr(ar.source, "/lua/rl/"))
            return level;
    }
    return 1;
}

static int raise_kind(lua_State *L, const char *kind, int retryable, const char *fmt, ...)
{
    int level = user_level(L);
    va_list ap;
    va_start(ap, fmt);
    const char *msg = lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    rl_pusherror(L, level, kind, retryable, "%s", msg);
    return lua_error(L);
}

/* ---- options --------------------------------------------------------------------- */

typedef struct Opt {
    const char *name;
    char type; /* S string, N number, I integer, B boolean, P pair of numbers, T table
                * (checked field by field by the engine) */
} Opt;

/* What rl.model accepts: the engine's load fields (scripts/PROTOCOL.md) plus the
 * host's own (transport, timeout). */
static const Opt load_opts[] = {
    {"path", 'S'},     {"transport", 'S'},    {"timeout", 'N'},    {"backend", 'S'},
    {"device", 'S'},   {"dtype", 'S'},        {"threads", 'I'},    {"seed", 'I'},
    {"reference", 'B'}, {"lr", 'N'},          {"weight_decay", 'N'}, {"betas", 'P'},
    {"precision", 'S'}, {"gradient_checkpointing", 'B'}, /* torch_precision.py */
    {"eps", 'N'},      {"schedule", 'S'},     {"warmup", 'I'},     {"total_steps", 'I'},
    {"min_lr_ratio", 'N'}, {"lora", 'T'},  {NULL, 0},
};

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    size_t d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

static const char *type_name(char t)
{
    switch (t) {
    case 'S': return "a string";
    case 'N': return "a number";
    case 'I': return "an integer";
    case 'B': return "a boolean";
    case 'T': return "a table";
    default: return "a list of two numbers";
    }
}

static int is_integral(lua_State *L, int idx)
{
    if (lua_isinteger(L, idx))
        return 1;
    if (lua_type(L, idx) != LUA_TNUMBER)
        return 0;
    lua_Number x = lua_tonumber(L, idx);
    return isfinite(x) && floor(x) == x && fabs(x) < 9.0e15;
}

/* Check the options table at idx; push the load request (a new table) built from it.
 * Raises kind=config naming the field for unknown names and wrong types. */
static void check_options(lua_State *L, int idx)
{
    lua_newtable(L);
    int req = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            raise_kind(L, "config", 0, "rl.model: option names must be strings, got a %s",
                       luaL_typename(L, -2));
        }
        const char *k = lua_tostring(L, -2);
        const Opt *o = load_opts;
        while (o->name && strcmp(o->name, k) != 0)
            o++;
        if (!o->name) {
            const char *best = NULL;
            size_t bd = 3;
            for (const Opt *c = load_opts; c->name; c++) {
                size_t dd = edit_distance(k, c->name);
                if (dd < bd) {
                    bd = dd;
                    best = c->name;
                }
            }
            if (best)
                raise_kind(L, "config", 0,
                           "rl.model: unknown option '%s' (did you mean '%s'?)", k, best);
            raise_kind(L, "config", 0, "rl.model: unknown option '%s'", k);
        }
        int ok;
        switch (o->type) {
        case 'S': ok = lua_type(L, -1) == LUA_TSTRING; break;
        case 'N': ok = lua_type(L, -1) == LUA_TNUMBER; break;
        case 'I': ok = is_integral(L, -1); break;
        case 'B': ok = lua_type(L, -1) == LUA_TBOOLEAN; break;
        case 'T': ok = lua_type(L, -1) == LUA_TTABLE; break;
        default:
            ok = lua_type(L, -1) == LUA_TTABLE && luaL_len(L, -1) == 2;
            for (int i = 1; ok && i <= 2; i++) {
                ok = lua_rawgeti(L, -1, i) == LUA_TNUMBER;
                lua_pop(L, 1);
            }
        }
        if (!ok) {
            const char *got = luaL_typename(L, -1);
            if (o->type == 'I' && lua_type(L, -1) == LUA_TNUMBER)
                got = "non-integer number";
            lua_pushfstring(L, "rl.model: option '%s' must be %s, got a %s", k,
                            type_name(o->type), got);
            raise_kind(L, "config", 0, "%s", lua_tostring(L, -1));
        }
        if (strcmp(k, "timeout") == 0 &&
            !(lua_tonumber(L, -1) > 0 && isfinite(lua_tonumber(L, -1))))
            raise_kind(L, "config", 0, "rl.model: option 'timeout' must be a positive number "
                                       "of seconds");
        if (strcmp(k, "transport") == 0 && strcmp(lua_tostring(L, -1), "embedded") != 0 &&
            strcmp(lua_tostring(L, -1), "worker") != 0)
            raise_kind(L, "config", 0, "rl.model: option 'transport' must be 'embedded' or "
                                       "'worker', got '%s'", lua_tostring(L, -1));
        if (strcmp(k, "transport") != 0 && strcmp(k, "timeout") != 0) {
            lua_pushvalue(L, -2);
            if (o->type == 'I')
                lua_pushinteger(L, (lua_Integer)lua_tonumber(L, -2));
            else
                lua_pushvalue(L, -2);
            lua_rawset(L, req);
        }
        lua_pop(L, 1);
    }
    if (lua_getfield(L, idx, "path") != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        raise_kind(L, "config", 0, "rl.model: option 'path' is required (builtin:tiny, "
                                   "builtin:small or a model directory)");
    lua_pop(L, 1);
    lua_pushliteral(L, "load");
    lua_setfield(L, req, "op");
}

/* ---- transports ------------------------------------------------------------------ */

static Model *check_model(lua_State *L, int idx) { return luaL_checkudata(L, idx, MODEL_MT); }

static void on_worker_log(void *ud, pid_t pid, const char *line, size_t len)
{
    (void)ud;
    fprintf(stderr, "[worker %d] %.*s\n", (int)pid, (int)len, line);
}

static void drop_worker(Model *m)
{
    if (m->pr) {
        proc_close(m->pr);
        m->pr = NULL;
    }
}

/* Raise the error for a failed worker wait; the worker is gone or stopped first, so
 * nothing C-owned outlives the raise except through the handle. */
static int worker_failure(lua_State *L, Model *m, int rc, const char *op, const char *err,
                          double timeout, int writing)
{
    char tail[PROC_TAIL_LINES * 260];
    int pid = m->pr ? (int)proc_pid(m->pr) : 0;
    if (rc == PROC_EINTR) {
        /* While reading, keep the worker: its reply to this request arrives later and
         * is skipped by id, and its state is still there for a checkpoint. A request
         * line cut off mid-write would garble the stream, so then it goes. */
        if (writing) {
            proc_kill(m->pr);
            drop_worker(m);
        }
        rl_pusherror(L, user_level(L), "interrupted", 0, "%s: interrupted while waiting for "
                     "worker %d", op, pid);
        return lua_error(L);
    }
    if (rc == PROC_ETIMEOUT) {
        proc_kill(m->pr);
        drop_worker(m);
        rl_pusherror(L, user_level(L), "timeout", 1,
                     "%s: no reply from worker %d within %f s; the worker was stopped (the "
                     "next call starts a new one)", op, pid, timeout);
        return lua_error(L);
    }
    if (rc == PROC_EDEAD) {
        proc_stderr_tail(m->pr, tail, sizeof tail);
        lua_pushstring(L, proc_exit_text(m->pr));
        int ws = proc_wait_status(m->pr);
        drop_worker(m);
        rl_pusherror(L, user_level(L), "crash", 1,
                     "%s: worker %d %s (the next call starts a new one)%s%s", op, pid,
                     lua_tostring(L, -1), *tail ? "; its last stderr lines:\n" : "", tail);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "exit");
        lua_pushinteger(L, pid);
        lua_setfield(L, -2, "pid");
        lua_pushstring(L, tail);
        lua_setfield(L, -2, "stderr");
        if (ws != -1 && WIFEXITED(ws)) {
            lua_pushinteger(L, WEXITSTATUS(ws));
            lua_setfield(L, -2, "status");
        } else if (ws != -1 && WIFSIGNALED(ws)) {
            lua_pushinteger(L, WTERMSIG(ws));
            lua_setfield(L, -2, "signal");
        }
        return lua_error(L);
    }
    if (rc == PROC_ELONG) /* the rest of that line is dropped: the stream stays in step */
        return raise_kind(L, "parse", 0, "%s: %s", op, err);
    proc_kill(m->pr);
    drop_worker(m);
    return raise_kind(L, "internal", 0, "%s: %s", op, err);
}

static int64_t deadline_for(double secs)
{
    return secs > 0 ? proc_now_ms() + (int64_t)(secs * 1000.0) : -1;
}

/* Send the request text on the stack top to the worker and push its decoded reply.
 * Replies to earlier requests (abandoned by an interrupt) are skipped by id. */
static void worker_exchange(lua_State *L, Model *m, lua_Integer id, const char *op,
                            double timeout)
{
    char err[512];
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    int64_t deadline = deadline_for(timeout);
    int rc = proc_write(m->pr, text, len, deadline, err, sizeof err);
    if (rc == PROC_OK)
        rc = proc_write(m->pr, "\n", 1, deadline, err, sizeof err);
    if (rc != PROC_OK)
        worker_failure(L, m, rc, op, err, timeout, 1);
    lua_pop(L, 1);
    for (;;) {
        const char *line;
        size_t n;
        rc = proc_read_line(m->pr, &line, &n, deadline, err, sizeof err);
        if (rc != PROC_OK)
            worker_failure(L, m, rc, op, err, timeout, 0);
        if (n == 0)
            continue;
        /* The line lives in the proc's buffer, which the handle owns: a parse error
         * raised here leaks nothing. */
        ljson_decode(L, line, n, LJSON_NONFINITE);
        int isreply = 0;
        if (lua_istable(L, -1)) {
            isreply = lua_getfield(L, -1, "ok") == LUA_TBOOLEAN;
            lua_pop(L, 1);
        }
        if (!isreply) {
            lua_pop(L, 1);
            raise_kind(L, "parse", 0, "%s: the worker's reply is not a JSON object with an "
                       "'ok' field", op);
        }
        lua_getfield(L, -1, "id");
        int isnum = lua_isinteger(L, -1);
        lua_Integer rid = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (isnum && rid == id)
            return;
        int idt = lua_getfield(L, -1, "id");
        if (idt == LUA_TNIL || (idt == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1))) {
            /* An error reply to a request the engine could not even read an id from
             * can only answer the one request in flight. */
            lua_getfield(L, -2, "ok");
            int ok = lua_toboolean(L, -1);
            lua_pop(L, 2);
            if (!ok)
                return;
        } else {
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (isnum && rid < id)
            continue; /* stale: the answer to a request we gave up waiting for */
        proc_kill(m->pr);
        drop_worker(m);
        raise_kind(L, "crash", 1, "%s: the worker answered out of order (protocol error); it "
                   "was stopped", op);
    }
}

static void raise_engine_error(lua_State *L, int reply, const char *op);

/* Start a worker for m (a restart re-sends the load request; that updates m->handle). */
static void start_worker(lua_State *L, Model *m, const char *op)
{
    const char *py_argv[] = {NULL, "-m", "rlengine.worker", NULL};
    char python[PATH_MAX + 16], pypath[PATH_MAX + 16];
    snprintf(python, sizeof python, "%s/bin/python", m->venv);
    snprintf(pypath, sizeof pypath, "PYTHONPATH=%s", m->scripts);
    py_argv[0] = python;
    /* Offline by design; the hash seed matches the embedded interpreter's. */
    const char *env[] = {pypath, "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1",
                         "PYTHONHASHSEED=0", "PYTHONNOUSERSITE=1", NULL};
    proc_params prm;
    proc_default_params(&prm);
    prm.argv = py_argv;
    prm.env = env;
    prm.on_log = on_worker_log;
    char err[512];
    int rc = proc_spawn(&m->pr, &prm, err, sizeof err);
    if (rc != PROC_OK)
        raise_kind(L, "config", 0, "%s: cannot start the engine worker: %s", op, err);
    if (!m->open)
        return; /* the first load is the caller's own request */
    m->restarts++;
    lua_rawgeti(L, LUA_REGISTRYINDEX, m->load_ref);
    lua_Integer id = ++m->next_id;
    lua_pushinteger(L, id);
    lua_setfield(L, -2, "id");
    ljson_encode(L, -1, 0, NULL);
    double t = m->timeout > 0 ? fmax(m->timeout, LOAD_FLOOR_S) : 0;
    worker_exchange(L, m, id, "load (restarting the worker)", t);
    int reply = lua_gettop(L);
    lua_getfield(L, reply, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!ok) {
        proc_kill(m->pr);
        drop_worker(m);
        raise_engine_error(L, reply, "load (restarting the worker)");
    }
    lua_getfield(L, reply, "model");
    m->handle = lua_tointeger(L, -1);
    lua_pop(L, 3); /* handle, reply, load table */
}

/* Raise the engine's error reply (table at index reply) as an rl error table. */
static void raise_engine_error(lua_State *L, int reply, const char *op)
{
    lua_getfield(L, reply, "error");
    int e = lua_gettop(L);
    const char *kind = "internal", *msg = "the engine reported an error without a message";
    if (lua_istable(L, e)) {
        if (lua_getfield(L, e, "kind") == LUA_TSTRING)
            kind = lua_tostring(L, -1);
        if (lua_getfield(L, e, "message") == LUA_TSTRING)
            msg = lua_tostring(L, -1);
    }
    /* Engine errors are about the request or the model, not the channel: retrying
     * the same request gives the same error. */
    rl_pusherror(L, user_level(L), kind, 0, "%s", msg);
    int t = lua_gettop(L);
    if (lua_istable(L, e)) {
        lua_getfield(L, e, "traceback");
        lua_setfield(L, t, "traceback");
    }
    lua_pushstring(L, op);
    lua_setfield(L, t, "op");
    lua_error(L);
}

/* The request table at idx gets id (and model) fields; push the decoded reply. Raises
 * for transport failures and for engine error replies. */
static void exchange(lua_State *L, Model *m, int idx, const char *op, double timeout)
{
    idx = lua_absindex(L, idx);
    if (m->transport == T_WORKER && !m->pr)
        start_worker(L, m, op);
    lua_Integer id = ++m->next_id;
    lua_pushinteger(L, id);
    lua_setfield(L, idx, "id");
    if (m->open) {
        lua_pushinteger(L, m->handle);
        lua_setfield(L, idx, "model");
    }
    size_t len;
    const char *text = ljson_encode(L, idx, 0, &len);
    if (m->transport == T_WORKER) {
        worker_exchange(L, m, id, op, timeout);
    } else {
        char err[1024];
        char *reply = NULL;
        size_t rlen = 0;
        int rc = py_call(text, len, &reply, &rlen, err, sizeof err);
        free(m->reply);
        m->reply = reply; /* owned by the handle from here: a raise below leaks nothing */
        lua_pop(L, 1);
        if (rc != PY_OK)
            raise_kind(L, "internal", 0, "%s: %s", op, err);
        ljson_decode(L, m->reply, rlen, LJSON_NONFINITE);
        free(m->reply);
        m->reply = NULL;
    }
    int reply = lua_gettop(L);
    if (!lua_istable(L, reply))
        raise_kind(L, "parse", 0, "%s: the engine's reply is not a JSON object", op);
    lua_getfield(L, reply, "ok");
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!ok) {
        if (!m->open)
            drop_worker(m); /* a failed load must not leave a worker waiting for the GC */
        raise_engine_error(L, reply, op);
    }
    lua_pushnil(L);
    lua_setfield(L, reply, "id");
    lua_pushnil(L);
    lua_setfield(L, reply, "ok");
}

/* ---- the handle ------------------------------------------------------------------ */

static void close_model(lua_State *L, Model *m)
{
    if (m->open && m->transport == T_EMBEDDED && py_ready()) {
        char req[128], err[256], *reply = NULL;
        size_t rlen;
        int n = snprintf(req, sizeof req, "{\"id\":%lld,\"op\":\"close\",\"model\":%lld}",
                         (long long)++m->next_id, (long long)m->handle);
        py_call(req, (size_t)n, &reply, &rlen, err, sizeof err);
        free(reply);
    }
    m->open = 0;
    /* End of input makes the worker close its models (removing its exports). */
    drop_worker(m);
    free(m->reply);
    m->reply = NULL;
    if (m->load_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, m->load_ref);
        m->load_ref = LUA_NOREF;
    }
}

static int m_gc(lua_State *L)
{
    close_model(L, check_model(L, 1));
    return 0;
}

static Model *check_open(lua_State *L, int idx)
{
    Model *m = check_model(L, idx);
    if (!m->open)
        raise_kind(L, "usage", 0, "the model handle is closed");
    return m;
}

/* handle:_call(op, request) -> reply. The request table gets id and model fields; a
 * `timeout` field in it (seconds) overrides the handle's for this call and is not
 * sent. */
static int m_call(lua_State *L)
{
    Model *m = check_open(L, 1);
    const char *op = luaL_checkstring(L, 2);
    if (lua_isnoneornil(L, 3)) {
        lua_settop(L, 2);
        lua_newtable(L);
    }
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    double timeout = m->timeout;
    if (lua_getfield(L, 3, "timeout") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0))
            raise_kind(L, "config", 0, "%s: option 'timeout' must be a positive number of "
                       "seconds", op);
        timeout = lua_tonumber(L, -1);
        lua_pushnil(L);
        lua_setfield(L, 3, "timeout");
    }
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    lua_setfield(L, 3, "op");
    exchange(L, m, 3, op, timeout);
    return 1;
}

static int m_close(lua_State *L)
{
    close_model(L, check_model(L, 1));
    return 0;
}

static int m_isopen(lua_State *L)
{
    lua_pushboolean(L, check_model(L, 1)->open);
    return 1;
}

/* handle:_transport() -> "embedded"|"worker", worker pid or nil, restarts */
static int m_transport(lua_State *L)
{
    Model *m = check_model(L, 1);
    lua_pushstring(L, m->transport == T_WORKER ? "worker" : "embedded");
    if (m->pr && proc_running(m->pr))
        lua_pushinteger(L, proc_pid(m->pr));
    else
        lua_pushnil(L);
    lua_pushinteger(L, m->restarts);
    return 3;
}

static int m_tostring(lua_State *L)
{
    Model *m = check_model(L, 1);
    const char *path = "?";
    if (m->load_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, m->load_ref);
        lua_getfield(L, -1, "path");
        path = lua_tostring(L, -1) ? lua_tostring(L, -1) : "?";
    }
    lua_pushfstring(L, "rl.model(%s, %s, %s)", path,
                    m->transport == T_WORKER ? "worker" : "embedded",
                    m->open ? "open" : "closed");
    return 1;
}

static void find_paths(lua_State *L, Model *m)
{
    char err[512];
    lua_getfield(L, LUA_REGISTRYINDEX, "rl.home");
    const char *home = lua_tostring(L, -1);
    if (!home)
        raise_kind(L, "internal", 0, "rl.model: the rlhost home is unknown");
    if (home_venv(home, m->venv, sizeof m->venv, err, sizeof err) != 0)
        raise_kind(L, "config", 0, "rl.model: %s", err);
    if ((size_t)snprintf(m->scripts, sizeof m->scripts, "%s/scripts", home) >= sizeof m->scripts)
        raise_kind(L, "config", 0, "rl.model: home path too long");
    lua_pop(L, 1);
}

/* rl.cmodel.open(options) -> handle (loaded), or raises. */
static int m_open(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    check_options(L, 1); /* 2: the load request */
    int transport = T_EMBEDDED;
    if (lua_getfield(L, 1, "transport") == LUA_TSTRING)
        transport = strcmp(lua_tostring(L, -1), "worker") == 0 ? T_WORKER : T_EMBEDDED;
    lua_pop(L, 1);
    double timeout = 0;
    if (lua_getfield(L, 1, "timeout") == LUA_TNUMBER)
        timeout = lua_tonumber(L, -1);
    lua_pop(L, 1);

    Model *m = lua_newuserdatauv(L, sizeof *m, 0); /* 3 */
    memset(m, 0, sizeof *m);
    m->transport = transport;
    m->timeout = timeout;
    m->load_ref = LUA_NOREF;
    luaL_setmetatable(L, MODEL_MT);
    find_paths(L, m);
    if (transport == T_EMBEDDED) {
        py_params pp;
        py_default_params(&pp);
        pp.venv = m->venv;
        pp.scripts = m->scripts;
        char err[1024];
        if (py_init(&pp, err, sizeof err) != PY_OK)
            raise_kind(L, "config", 0, "rl.model: %s", err);
    }
    /* Keep a copy of the load request for worker restarts (exchange adds an id). */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    m->load_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    exchange(L, m, 2, "load", timeout > 0 ? fmax(timeout, LOAD_FLOOR_S) : 0); /* 4 */
    lua_getfield(L, 4, "model");
    if (!lua_isinteger(L, -1))
        raise_kind(L, "internal", 0, "load: the engine's reply has no model handle");
    m->handle = lua_tointeger(L, -1);
    m->open = 1;
    lua_pop(L, 1);
    lua_pushvalue(L, 3);
    lua_getfield(L, 4, "info");
    return 2;
}

/* rl.cmodel.python_started() -> whether this process has started its interpreter. */
static int m_python_started(lua_State *L)
{
    lua_pushboolean(L, py_ready());
    return 1;
}

static const luaL_Reg methods[] = {
    {"_call", m_call},
    {"_transport", m_transport},
    {"close", m_close},
    {"isopen", m_isopen},
    {NULL, NULL},
};

int luaopen_rl_cmodel(lua_State *L)
{
    if (luaL_newmetatable(L, MODEL_MT)) {
        lua_pushcfunction(L, m_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, m_gc);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, m_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, MODEL_MT);
        lua_setfield(L, -2, "__name");
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_createtable(L, 0, 4);
    lua_getfield(L, -2, "__index");
    lua_setfield(L, -2, "methods"); /* lua/rl/model.lua adds the friendly methods here */
    lua_pushcfunction(L, m_open);
    lua_setfield(L, -2, "open");
    lua_pushcfunction(L, m_python_started);
    lua_setfield(L, -2, "python_started");
    return 1;
}

/* lendpoint.c — rl.endpoint handles: the C half of an HTTP teacher endpoint.
 *
 * The handle owns the transport settings and the API key. The key is read from the
 * named environment variable here, kept in C memory only and added to request
 * headers in C, so no Lua value (and hence no log line, metric or error a recipe
 * makes) ever holds it. http.c scrubs it from response bodies and error texts in
 * every encoding scrub.h knows, in case a server echoes headers; what Lua assembles
 * from several fields of a reply it scrubs again with ep:_scrub. Request bodies are
 * built and replies decoded in lua/rl/endpoint.lua, which adds :generate, :chat,
 * :complete to the method table this module exports. */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "lrl.h"
#include "scrub.h"

#define EP_MT "rl.endpoint"
#define BOX_MT "rl.endpoint.box"

enum { API_CHAT, API_COMPLETIONS, API_ANTHROPIC };
static const char *const api_names[] = {"openai-chat", "openai-completions", "anthropic", NULL};

typedef struct Endpoint {
    int open;
    int api;
    char *url;     /* full POST URL */
    char *model;
    char *key;     /* NULL: no authentication header */
    char *ca_file; /* PEM bundle to trust (NULL: the system's) */
    char **headers; /* "Name: value" lines, auth included */
    int nheaders;
    http_params params;
    http_stats stats;
} Endpoint;

static void ep_release(Endpoint *e)
{
    if (e->key) {
        memset(e->key, 0, strlen(e->key)); /* do not leave it in freed heap */
        free(e->key);
    }
    for (int i = 0; i < e->nheaders; i++) {
        if (e->headers[i]) {
            memset(e->headers[i], 0, strlen(e->headers[i]));
            free(e->headers[i]);
        }
    }
    free(e->headers);
    free(e->url);
    free(e->model);
    free(e->ca_file);
    e->key = e->url = e->model = e->ca_file = NULL;
    e->headers = NULL;
    e->nheaders = 0;
    e->open = 0;
}

static int ep_gc(lua_State *L)
{
    Endpoint *e = luaL_checkudata(L, 1, EP_MT);
    ep_release(e);
    return 0;
}

static Endpoint *check_open(lua_State *L)
{
    Endpoint *e = luaL_checkudata(L, 1, EP_MT);
    if (!e->open)
        rl_raise(L, "usage", 0, "rl.endpoint: the handle is closed");
    return e;
}

static int add_header(Endpoint *e, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *h = malloc(n);
    char **hs = realloc(e->headers, (size_t)(e->nheaders + 1) * sizeof *hs);
    if (!h || !hs) {
        free(h);
        if (hs)
            e->headers = hs;
        return -1;
    }
    e->headers = hs;
    snprintf(h, n, "%s: %s", name, value);
    e->headers[e->nheaders++] = h;
    return 0;
}

static double opt_number(lua_State *L, const char *field, double dflt)
{
    double v = dflt;
    int t = lua_getfield(L, 1, field);
    if (t == LUA_TNUMBER)
        v = lua_tonumber(L, -1);
    else if (t != LUA_TNIL)
        rl_raise(L, "config", 0, "rl.endpoint: '%s' must be a number", field);
    lua_pop(L, 1);
    if (v < 0)
        rl_raise(L, "config", 0, "rl.endpoint: '%s' must not be negative", field);
    return v;
}

static const char *opt_string(lua_State *L, const char *field, const char *dflt)
{
    int t = lua_getfield(L, 1, field);
    const char *s = dflt;
    if (t == LUA_TSTRING)
        s = lua_tostring(L, -1); /* kept alive by the options table */
    else if (t != LUA_TNIL)
        rl_raise(L, "config", 0, "rl.endpoint: '%s' must be a string", field);
    lua_pop(L, 1);
    return s;
}

static int has_crlf(const char *s) { return strchr(s, '\r') || strchr(s, '\n'); }

/* rl.endpoint.new{url=, api=, model=, api_key_env=, headers=, timeout=,
 * connect_timeout=, deadline=, concurrency=, max_retries=, rpm=, retry_base=,
 * retry_max=, retry_after_max=, ca_file=}; times in seconds. TLS peers are always
 * verified: ca_file adds a private CA, nothing turns verification off. */
static int ep_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *url = opt_string(L, "url", NULL);
    if (!url || !*url)
        rl_raise(L, "config", 0, "rl.endpoint: 'url' is required (e.g. http://127.0.0.1:8000/v1)");
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        rl_raise(L, "config", 0, "rl.endpoint: 'url' must start with http:// or https://");
    const char *api_s = opt_string(L, "api", "openai-chat");
    int api = -1;
    for (int i = 0; api_names[i]; i++)
        if (strcmp(api_s, api_names[i]) == 0)
            api = i;
    if (api < 0)
        rl_raise(L, "config", 0,
                 "rl.endpoint: 'api' must be openai-chat, openai-completions or anthropic, not '%s'",
                 api_s);
    const char *model = opt_string(L, "model", "default");
    const char *key_env = opt_string(L, "api_key_env", NULL);
    const char *ca_file = opt_string(L, "ca_file", NULL);
    int explicit_env = key_env != NULL;
    if (!key_env)
        key_env = api == API_ANTHROPIC ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY";
    const char *key = getenv(key_env);
    if (key && !*key)
        key = NULL;
    if (explicit_env && !key)
        rl_raise(L, "config", 0, "rl.endpoint: the environment variable %s (api_key_env) is not set",
                 key_env);
    if (key && has_crlf(key))
        rl_raise(L, "config", 0, "rl.endpoint: the key in %s contains a line break", key_env);

    http_params p;
    http_default_params(&p);
    p.timeout_ms = (long)(opt_number(L, "timeout", 600) * 1000);
    p.connect_timeout_ms = (long)(opt_number(L, "connect_timeout", 10) * 1000);
    p.deadline_ms = (long)(opt_number(L, "deadline", 0) * 1000);
    p.concurrency = (int)opt_number(L, "concurrency", 16);
    if (p.concurrency < 1)
        rl_raise(L, "config", 0, "rl.endpoint: 'concurrency' must be at least 1");
    p.max_retries = (int)opt_number(L, "max_retries", 2);
    p.rpm = opt_number(L, "rpm", 0);
    p.backoff_initial_ms = (long)(opt_number(L, "retry_base", 0.5) * 1000);
    p.backoff_max_ms = (long)(opt_number(L, "retry_max", 8) * 1000);
    p.retry_after_max_ms = (long)(opt_number(L, "retry_after_max", 60) * 1000);

    /* Collect user headers before allocating, so a bad one raises with nothing owned. */
    int th = lua_getfield(L, 1, "headers");
    if (th != LUA_TNIL && th != LUA_TTABLE)
        rl_raise(L, "config", 0, "rl.endpoint: 'headers' must be a table of name = value");
    if (th == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                rl_raise(L, "config", 0, "rl.endpoint: headers must map strings to strings");
            if (has_crlf(lua_tostring(L, -2)) || has_crlf(lua_tostring(L, -1)) ||
                strchr(lua_tostring(L, -2), ':'))
                rl_raise(L, "config", 0, "rl.endpoint: header '%s' is malformed",
                         lua_tostring(L, -2));
            lua_pop(L, 1);
        }
    }
    int hidx = lua_gettop(L);

    Endpoint *e = lua_newuserdatauv(L, sizeof *e, 1);
    memset(e, 0, sizeof *e);
    luaL_setmetatable(L, EP_MT); /* from here __gc frees whatever we attach */
    e->api = api;
    e->params = p;
    size_t ul = strlen(url);
    while (ul && url[ul - 1] == '/')
        ul--;
    const char *suffix = api == API_CHAT ? "/chat/completions"
                       : api == API_COMPLETIONS ? "/completions" : "/messages";
    size_t sl = strlen(suffix);
    int has_suffix = ul >= sl && memcmp(url + ul - sl, suffix, sl) == 0;
    e->url = malloc(ul + sl + 1);
    e->model = strdup(model);
    if (e->url) {
        memcpy(e->url, url, ul);
        memcpy(e->url + ul, suffix, has_suffix ? 0 : sl + 1);
        e->url[ul + (has_suffix ? 0 : sl)] = '\0';
    }
    if (ca_file)
        e->ca_file = strdup(ca_file);
    int bad = !e->url || !e->model || (ca_file && !e->ca_file);
    bad = bad || add_header(e, "Content-Type", "application/json");
    bad = bad || add_header(e, "Accept", "application/json");
    if (key) {
        e->key = strdup(key);
        bad = bad || !e->key;
        if (!bad && api == API_ANTHROPIC)
            bad = add_header(e, "x-api-key", key);
        else if (!bad) {
            size_t n = strlen(key) + 8;
            char *v = malloc(n);
            bad = !v;
            if (v) {
                snprintf(v, n, "Bearer %s", key);
                bad = add_header(e, "Authorization", v);
                memset(v, 0, n);
                free(v);
            }
        }
    }
    if (!bad && api == API_ANTHROPIC)
        bad = add_header(e, "anthropic-version", "2023-06-01");
    if (!bad && lua_type(L, hidx) == LUA_TTABLE) {
        lua_pushnil(L);
        while (!bad && lua_next(L, hidx)) {
            bad = add_header(e, lua_tostring(L, -2), lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    if (bad) {
        ep_release(e);
        return luaL_error(L, "not enough memory");
    }
    e->params.secret = e->key;
    e->params.ca_file = e->ca_file;
    lua_newtable(L); /* user value: Lua-side state (token counts) */
    lua_setiuservalue(L, -2, 1);
    e->open = 1;
    return 1;
}

/* Results of a batch live in a box freed by __gc, so that pushing them into Lua
 * (which can raise on memory) leaks nothing. */
typedef struct Box {
    http_result *res;
    http_request *reqs;
    size_t n;
} Box;

static int box_gc(lua_State *L)
{
    Box *b = luaL_checkudata(L, 1, BOX_MT);
    if (b->res)
        for (size_t i = 0; i < b->n; i++)
            http_result_free(&b->res[i]);
    free(b->res);
    free(b->reqs);
    b->res = NULL;
    b->reqs = NULL;
    return 0;
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

/* ep:_post(bodies) -> results: POST each JSON text in the list, concurrently, and
 * return per request {ok=, status=, body=, content_type=, attempts=, latency_ms=,
 * kind=, retryable=, message=, retry_after_ms=} in input order. Raises only for a
 * second SIGINT (kind interrupted) or a setup failure; failed requests are data. */
static int ep_post(lua_State *L)
{
    Endpoint *e = check_open(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = (size_t)luaL_len(L, 2);
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 2, (lua_Integer)i) != LUA_TSTRING)
            return luaL_argerror(L, 2, "a list of JSON request bodies (strings)");
        lua_pop(L, 1);
    }
    Box *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, BOX_MT)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    b->res = calloc(n ? n : 1, sizeof *b->res);
    b->reqs = calloc(n ? n : 1, sizeof *b->reqs);
    if (!b->res || !b->reqs)
        return luaL_error(L, "not enough memory");
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        size_t len;
        /* The list holds the strings, so these pointers outlive the batch. */
        b->reqs[i].body = lua_tolstring(L, -1, &len);
        b->reqs[i].body_len = len;
        lua_pop(L, 1);
        b->reqs[i].url = e->url;
        b->reqs[i].headers = (const char *const *)e->headers;
        b->reqs[i].nheaders = e->nheaders;
    }
    char err[256];
    int rc = http_run(&e->params, b->reqs, n, b->res, &e->stats, err, sizeof err);
    if (rc == HTTP_E_INTERRUPT)
        return rl_raise(L, "interrupted", 0, "rl.endpoint: %s", err);
    if (rc == HTTP_E_INTERNAL)
        return rl_raise(L, "internal", 0, "rl.endpoint: %s", err);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        http_result *r = &b->res[i];
        lua_createtable(L, 0, 10);
        lua_pushboolean(L, r->kind == HTTP_OK);
        lua_setfield(L, -2, "ok");
        set_int(L, "status", r->status);
        lua_pushlstring(L, r->body ? r->body : "", r->body ? strlen(r->body) : 0);
        lua_setfield(L, -2, "body");
        set_str(L, "content_type", r->content_type);
        set_int(L, "attempts", r->attempts);
        set_num(L, "latency_ms", r->latency_ms);
        set_str(L, "reason", http_kind_name(r->kind));
        lua_pushboolean(L, r->retryable);
        lua_setfield(L, -2, "retryable");
        if (r->kind != HTTP_OK && (r->status == 401 || r->status == 403) && !e->key) {
            lua_pushfstring(L, "%s (no API key was sent: name its environment variable with "
                               "api_key_env, or set %s)", r->err,
                            e->api == API_ANTHROPIC ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY");
            lua_setfield(L, -2, "message");
        } else if (r->kind != HTTP_OK) {
            set_str(L, "message", r->err);
        }
        if (r->retry_after_ms >= 0)
            set_int(L, "retry_after_ms", r->retry_after_ms);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* ep:_scrub(text) -> text with the handle's key removed (scrub.h), for texts Lua
 * joins from several fields of a reply (a key split across them is whole again). */
static int ep_scrub(lua_State *L)
{
    Endpoint *e = check_open(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    if (!e->key) {
        lua_settop(L, 2);
        return 1;
    }
    char *c = malloc(n + 1);
    if (!c)
        return luaL_error(L, "not enough memory");
    memcpy(c, s, n);
    c[n] = '\0';
    scrub_secret(c, &n, e->key);
    lua_pushlstring(L, c, n); /* on a memory error c leaks once; the key is not in it */
    free(c);
    return 1;
}

/* ep:_state() -> the Lua-side state table (token counts). */
static int ep_state(lua_State *L)
{
    check_open(L);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

/* ep:_info() -> {url=, api=, model=, concurrency=, has_key=} (never the key). */
static int ep_info(lua_State *L)
{
    Endpoint *e = check_open(L);
    lua_createtable(L, 0, 5);
    set_str(L, "url", e->url);
    set_str(L, "api", api_names[e->api]);
    set_str(L, "model", e->model);
    set_int(L, "concurrency", e->params.concurrency);
    lua_pushboolean(L, e->key != NULL);
    lua_setfield(L, -2, "has_key");
    return 1;
}

/* ep:_transport_stats() -> {requests=, attempts=, retries=, failures=} since creation. */
static int ep_tstats(lua_State *L)
{
    Endpoint *e = check_open(L);
    lua_createtable(L, 0, 4);
    set_int(L, "requests", e->stats.requests);
    set_int(L, "attempts", e->stats.attempts);
    set_int(L, "retries", e->stats.retries);
    set_int(L, "failures", e->stats.failures);
    return 1;
}

static int ep_close(lua_State *L)
{
    Endpoint *e = luaL_checkudata(L, 1, EP_MT);
    ep_release(e);
    return 0;
}

static int ep_tostring(lua_State *L)
{
    Endpoint *e = luaL_checkudata(L, 1, EP_MT);
    if (!e->open)
        lua_pushliteral(L, "rl.endpoint (closed)");
    else
        lua_pushfstring(L, "rl.endpoint(%s %s @ %s)", api_names[e->api], e->model, e->url);
    return 1;
}

static const luaL_Reg methods[] = {
    {"_post", ep_post},
    {"_scrub", ep_scrub},
    {"_state", ep_state},
    {"_info", ep_info},
    {"_transport_stats", ep_tstats},
    {"close", ep_close},
    {NULL, NULL},
};

/* rl.endpoint (C half): {new=, methods=}; lua/rl/endpoint.lua completes it. */
int luaopen_rl_endpoint(lua_State *L)
{
    luaL_newmetatable(L, EP_MT);
    luaL_newlib(L, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__index");
    lua_pushcfunction(L, ep_gc);
    lua_setfield(L, -3, "__gc");
    lua_pushcfunction(L, ep_gc);
    lua_setfield(L, -3, "__close");
    lua_pushcfunction(L, ep_tostring);
    lua_setfield(L, -3, "__tostring");
    lua_createtable(L, 0, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, ep_new);
    lua_setfield(L, -2, "new");
    lua_remove(L, -2);
    return 1;
}

/* ljson.c — rl.json: Lua values to JSON text and back, exactly.
 *
 * Integers stay integers, floats print in their shortest exact form, `rl.json.null`
 * stands for null, an empty table is `[]` unless marked with rl.json.object().
 * Buffers live in a userdata box, so a Lua error (bad value, out of memory) unwinds
 * without leaking C memory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lrl.h"

#define BOX_MT "rl.json.box"
#define OBJECT_MT "rl.json.object"

static int box_gc(lua_State *L)
{
    jbuf *b = luaL_checkudata(L, 1, BOX_MT);
    jbuf_free(b);
    return 0;
}

/* Push a new box: a jbuf freed by the garbage collector. */
static jbuf *box_new(lua_State *L)
{
    jbuf *b = lua_newuserdatauv(L, sizeof *b, 0);
    jbuf_init(b);
    if (luaL_newmetatable(L, BOX_MT)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_setmetatable(L, -2);
    return b;
}

/* ---- encoding ---------------------------------------------------------- */

typedef struct PathEl {
    const char *key; /* string key, or NULL for an array index */
    size_t klen;
    lua_Integer index;
} PathEl;

typedef struct Enc {
    lua_State *L;
    jbuf *b;
    int flags, indent, depth;
    const void *seen[JSON_MAX_DEPTH + 1]; /* tables on the current path: cycles */
    PathEl path[JSON_MAX_DEPTH + 1];
} Enc;

/* Raise a "value" error naming the key path being encoded, like `$.a.b[3]`. */
static int enc_fail(Enc *e, const char *fmt, const char *detail)
{
    char path[256];
    size_t k = (size_t)snprintf(path, sizeof path, "$");
    for (int i = 0; i < e->depth && k < sizeof path - 16; i++) {
        const PathEl *p = &e->path[i];
        if (p->key)
            k += (size_t)snprintf(path + k, sizeof path - k, ".%.*s",
                                  (int)(p->klen > 40 ? 40 : p->klen), p->key);
        else
            k += (size_t)snprintf(path + k, sizeof path - k, "[%lld]", (long long)p->index);
    }
    char msg[160];
    snprintf(msg, sizeof msg, fmt, detail);
    return rl_raise(e->L, "value", 0, "rl.json.encode: %s at %s", msg, path);
}

static void enc_mem(Enc *e, int rc)
{
    if (rc == JSON_ENOMEM)
        luaL_error(e->L, "not enough memory");
}

static void enc_newline(Enc *e)
{
    if (!e->indent)
        return;
    enc_mem(e, jbuf_reserve(e->b, 1 + 2 * (size_t)e->depth));
    e->b->p[e->b->len++] = '\n';
    for (int i = 0; i < e->depth; i++) {
        e->b->p[e->b->len++] = ' ';
        e->b->p[e->b->len++] = ' ';
    }
}

static void enc_value(Enc *e, int idx);

static int bad_utf8_mode(int flags)
{
    return flags & LJSON_BYTES ? JSON_UTF8_ESCAPE
           : flags & LJSON_REPLACE_UTF8 ? JSON_UTF8_REPLACE : JSON_UTF8_STRICT;
}

static void enc_string(Enc *e, int idx)
{
    size_t n, bad = 0;
    const char *s = lua_tolstring(e->L, idx, &n);
    int rc = json_write_string(e->b, s, n, bad_utf8_mode(e->flags), &bad);
    if (rc == JSON_EUTF8) {
        char d[32];
        snprintf(d, sizeof d, "%zu", bad);
        enc_fail(e, "invalid UTF-8 at byte %s of a string", d);
    }
    enc_mem(e, rc);
}

static int cmp_keys(const void *a, const void *b)
{
    const PathEl *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

static void enc_pair(Enc *e, int first, int t, const char *k, size_t kl)
{
    if (!first)
        enc_mem(e, jbuf_putc(e->b, ','));
    enc_newline(e);
    e->path[e->depth - 1].key = k;
    e->path[e->depth - 1].klen = kl;
    size_t bad;
    int rc = json_write_string(e->b, k, kl, bad_utf8_mode(e->flags), &bad);
    if (rc == JSON_EUTF8)
        enc_fail(e, "%s", "invalid UTF-8 in an object key");
    enc_mem(e, rc);
    enc_mem(e, jbuf_put(e->b, e->indent ? ": " : ":", e->indent ? 2 : 1));
    lua_pushlstring(e->L, k, kl);
    lua_rawget(e->L, t);
    enc_value(e, lua_gettop(e->L));
    lua_pop(e->L, 1);
}

static void enc_table(Enc *e, int t)
{
    lua_State *L = e->L;
    const void *self = lua_topointer(L, t);
    for (int i = 0; i < e->depth; i++)
        if (e->seen[i] == self)
            enc_fail(e, "%s", "cycle: a table contains itself");
    if (e->depth >= JSON_MAX_DEPTH)
        enc_fail(e, "nesting deeper than %s levels", "500");
    if (!lua_checkstack(L, 6))
        enc_fail(e, "%s", "Lua stack exhausted");

    /* Classify the keys: 1..n integers make an array, strings an object. */
    lua_Integer n = 0, max = 0;
    int has_str = 0, has_int = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
        if (lua_type(L, -1) == LUA_TSTRING) {
            has_str = 1;
        } else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            has_int = 1;
            if (lua_tointeger(L, -1) > max)
                max = lua_tointeger(L, -1);
        } else {
            const char *tn = lua_type(L, -1) == LUA_TNUMBER ? "non-integer number"
                                                            : luaL_typename(L, -1);
            enc_fail(e, "table key of type %s (keys must be strings or 1..n)", tn);
        }
    }
    int object = has_str;
    if (n == 0 && lua_getmetatable(L, t)) {
        luaL_getmetatable(L, OBJECT_MT);
        object = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    if (has_str && has_int)
        enc_fail(e, "%s", "table mixes array items and object keys");
    if (has_int && max != n) {
        char d[48];
        snprintf(d, sizeof d, "%lld of keys 1..%lld", (long long)n, (long long)max);
        enc_fail(e, "array with holes (%s present)", d);
    }

    e->seen[e->depth] = self;
    e->path[e->depth].key = NULL;
    e->path[e->depth].index = 0;
    e->depth++;
    if (!object) {
        enc_mem(e, jbuf_putc(e->b, '['));
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1)
                enc_mem(e, jbuf_putc(e->b, ','));
            enc_newline(e);
            e->path[e->depth - 1].index = i;
            lua_rawgeti(L, t, i);
            enc_value(e, lua_gettop(L));
            lua_pop(L, 1);
        }
        e->depth--;
        if (n)
            enc_newline(e);
        enc_mem(e, jbuf_putc(e->b, ']'));
        return;
    }
    enc_mem(e, jbuf_putc(e->b, '{'));
    if (e->flags & LJSON_SORT_KEYS && n > 1) {
        /* The key array is a userdata so that an error while encoding a value
         * cannot leak it. Keys stay alive: the table holds them. */
        PathEl *keys = lua_newuserdatauv(L, (size_t)n * sizeof *keys, 0);
        int kidx = lua_gettop(L);
        lua_Integer k = 0;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            lua_pop(L, 1);
            keys[k].key = lua_tolstring(L, -1, &keys[k].klen);
            k++;
        }
        qsort(keys, (size_t)n, sizeof *keys, cmp_keys);
        for (lua_Integer i = 0; i < n; i++)
            enc_pair(e, i == 0, t, keys[i].key, keys[i].klen);
        lua_remove(L, kidx);
    } else {
        int first = 1;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            size_t kl;
            const char *k = lua_tolstring(L, -2, &kl);
            if (!first)
                enc_mem(e, jbuf_putc(e->b, ','));
            first = 0;
            enc_newline(e);
            e->path[e->depth - 1].key = k;
            e->path[e->depth - 1].klen = kl;
            size_t bad;
            int rc = json_write_string(e->b, k, kl, bad_utf8_mode(e->flags), &bad);
            if (rc == JSON_EUTF8)
                enc_fail(e, "%s", "invalid UTF-8 in an object key");
            enc_mem(e, rc);
            enc_mem(e, jbuf_put(e->b, e->indent ? ": " : ":", e->indent ? 2 : 1));
            enc_value(e, lua_gettop(L));
            lua_pop(L, 1);
        }
    }
    e->depth--;
    enc_newline(e);
    enc_mem(e, jbuf_putc(e->b, '}'));
}

static void enc_value(Enc *e, int idx)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        enc_mem(e, jbuf_put(e->b, "null", 4));
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            enc_mem(e, jbuf_put(e->b, "true", 4));
        else
            enc_mem(e, jbuf_put(e->b, "false", 5));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            enc_mem(e, json_write_int(e->b, (long long)lua_tointeger(L, idx)));
        } else {
            double d = (double)lua_tonumber(L, idx);
            if (isfinite(d))
                enc_mem(e, json_write_double(e->b, d));
            else if (e->flags & LJSON_NONFINITE)
                enc_mem(e, json_write_nonfinite(e->b, d));
            else
                enc_fail(e, "%s is not a JSON number", isnan(d) ? "NaN" : "infinity");
        }
        break;
    case LUA_TSTRING:
        enc_string(e, idx);
        break;
    case LUA_TTABLE:
        enc_table(e, idx);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            enc_mem(e, jbuf_put(e->b, "null", 4));
            break;
        }
        /* fall through */
    default:
        enc_fail(e, "cannot encode a %s", luaL_typename(L, idx));
    }
}

/* Encode the value at idx and push the text; the Enc state and the buffer live in
 * userdata (removed again before returning), so an error frees them. */
static void encode_push(lua_State *L, int idx, int flags, int indent)
{
    idx = lua_absindex(L, idx);
    Enc *e = lua_newuserdatauv(L, sizeof *e, 0); /* large: keep it off the C stack */
    int eidx = lua_gettop(L);
    e->L = L;
    e->flags = flags;
    e->indent = indent;
    e->depth = 0;
    e->b = box_new(L);
    enc_value(e, idx);
    lua_pushlstring(L, e->b->p ? e->b->p : "", e->b->len);
    jbuf_free(e->b);
    lua_remove(L, eidx + 1);
    lua_remove(L, eidx);
}

const char *ljson_encode(lua_State *L, int idx, int flags, size_t *len)
{
    encode_push(L, idx, flags, 0);
    return lua_tolstring(L, -1, len);
}

/* rl.json.encode(value [, {indent=true, sort_keys=true, replace_invalid_utf8=true}]) */
static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    int flags = 0, indent = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "indent");
        indent = lua_toboolean(L, -1);
        lua_getfield(L, 2, "sort_keys");
        if (lua_toboolean(L, -1) || indent) /* pretty output is for people: stable order */
            flags |= LJSON_SORT_KEYS;
        lua_getfield(L, 2, "replace_invalid_utf8");
        if (lua_toboolean(L, -1))
            flags |= LJSON_REPLACE_UTF8;
        lua_pop(L, 3);
    }
    encode_push(L, 1, flags, indent);
    return 1;
}

/* ---- decoding ---------------------------------------------------------- */

typedef struct Dec {
    lua_State *L;
    const char *s;
    size_t n, pos;
    int flags, depth;
    jbuf *sb; /* scratch for strings with escapes */
} Dec;

static int dec_fail(Dec *d, size_t pos, const char *why)
{
    char desc[256];
    json_describe_error(desc, sizeof desc, d->s, d->n, pos, why);
    return rl_raise(d->L, "parse", 0, "rl.json.decode: invalid JSON %s", desc);
}

static void dec_value(Dec *d);

static void dec_string(Dec *d)
{
    const char *s = d->s;
    size_t p = d->pos + 1, start = p;
    /* Fast path: no escapes and ASCII only, push straight from the input. */
    while (p < d->n && (unsigned char)s[p] >= 0x20 && s[p] != '"' && s[p] != '\\' &&
           (unsigned char)s[p] < 0x80)
        p++;
    if (p < d->n && s[p] == '"') {
        lua_pushlstring(d->L, s + start, p - start);
        d->pos = p + 1;
        return;
    }
    const char *why = NULL;
    d->sb->len = 0;
    size_t pos = d->pos;
    int rc = json_scan_string_ex(s, d->n, &pos, d->sb, &why, d->flags & LJSON_BYTES);
    if (rc == JSON_ENOMEM)
        luaL_error(d->L, "not enough memory");
    if (rc)
        dec_fail(d, pos, why);
    lua_pushlstring(d->L, d->sb->p ? d->sb->p : "", d->sb->len);
    d->pos = pos;
}

static int lit(Dec *d, const char *word, size_t len)
{
    if (d->n - d->pos >= len && memcmp(d->s + d->pos, word, len) == 0) {
        d->pos += len;
        return 1;
    }
    return 0;
}

static void dec_enter(Dec *d)
{
    if (++d->depth > JSON_MAX_DEPTH)
        dec_fail(d, d->pos, "nesting deeper than 500 levels");
    if (!lua_checkstack(d->L, 4))
        dec_fail(d, d->pos, "Lua stack exhausted");
}

/* After an item of an array or object: a ',' means another item follows (1), the
 * closing bracket ends it (0); anything else is an error. */
static int dec_more(Dec *d, char close)
{
    d->pos = json_skip_ws(d->s, d->n, d->pos);
    if (d->pos < d->n && d->s[d->pos] == ',') {
        d->pos = json_skip_ws(d->s, d->n, d->pos + 1);
        return 1;
    }
    if (d->pos < d->n && d->s[d->pos] == close) {
        d->pos++;
        return 0;
    }
    return dec_fail(d, d->pos, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
}

static void dec_array(Dec *d)
{
    lua_State *L = d->L;
    dec_enter(d);
    d->pos++;
    lua_createtable(L, 0, 0);
    d->pos = json_skip_ws(d->s, d->n, d->pos);
    if (d->pos < d->n && d->s[d->pos] == ']') {
        d->pos++;
        d->depth--;
        return;
    }
    lua_Integer i = 0;
    for (;;) {
        dec_value(d);
        lua_rawseti(L, -2, ++i);
        if (!dec_more(d, ']'))
            break;
    }
    d->depth--;
}

static void dec_object(Dec *d)
{
    lua_State *L = d->L;
    dec_enter(d);
    d->pos++;
    lua_createtable(L, 0, 0);
    d->pos = json_skip_ws(d->s, d->n, d->pos);
    if (d->pos < d->n && d->s[d->pos] == '}') {
        /* Mark it, so that it encodes back to {} rather than []. */
        luaL_getmetatable(L, OBJECT_MT);
        lua_setmetatable(L, -2);
        d->pos++;
        d->depth--;
        return;
    }
    for (;;) {
        if (d->pos >= d->n || d->s[d->pos] != '"')
            dec_fail(d, d->pos, "expected a string key");
        dec_string(d);
        d->pos = json_skip_ws(d->s, d->n, d->pos);
        if (d->pos >= d->n || d->s[d->pos] != ':')
            dec_fail(d, d->pos, "expected ':'");
        d->pos = json_skip_ws(d->s, d->n, d->pos + 1);
        dec_value(d);
        lua_rawset(L, -3);
        if (!dec_more(d, '}'))
            break;
    }
    d->depth--;
}

static void dec_value(Dec *d)
{
    lua_State *L = d->L;
    if (d->pos >= d->n)
        dec_fail(d, d->pos, "expected a value");
    switch (d->s[d->pos]) {
    case '{':
        dec_object(d);
        return;
    case '[':
        dec_array(d);
        return;
    case '"':
        dec_string(d);
        return;
    case 't':
        if (lit(d, "true", 4)) {
            lua_pushboolean(L, 1);
            return;
        }
        break;
    case 'f':
        if (lit(d, "false", 5)) {
            lua_pushboolean(L, 0);
            return;
        }
        break;
    case 'n':
        if (lit(d, "null", 4)) {
            lua_pushlightuserdata(L, NULL);
            return;
        }
        break;
    case 'N':
        if ((d->flags & LJSON_NONFINITE) && lit(d, "NaN", 3)) {
            lua_pushnumber(L, (lua_Number)NAN);
            return;
        }
        break;
    case 'I':
        if ((d->flags & LJSON_NONFINITE) && lit(d, "Infinity", 8)) {
            lua_pushnumber(L, (lua_Number)HUGE_VAL);
            return;
        }
        break;
    case '-':
        if ((d->flags & LJSON_NONFINITE) && lit(d, "-Infinity", 9)) {
            lua_pushnumber(L, (lua_Number)-HUGE_VAL);
            return;
        }
        /* fall through */
    default: {
        int is_int;
        long long iv;
        double dv;
        const char *why = "unexpected character";
        size_t pos = d->pos;
        char c = d->s[pos];
        if (c == '-' || (c >= '0' && c <= '9')) {
            int rc = json_scan_number(d->s, d->n, &pos, &is_int, &iv, &dv, &why);
            if (rc == JSON_ENOMEM)
                luaL_error(L, "not enough memory");
            if (rc == JSON_OK) {
                if (is_int)
                    lua_pushinteger(L, (lua_Integer)iv);
                else
                    lua_pushnumber(L, (lua_Number)dv);
                d->pos = pos;
                return;
            }
        }
        dec_fail(d, pos, why);
    }
    }
    dec_fail(d, d->pos, "unexpected word");
}

void ljson_decode(lua_State *L, const char *s, size_t n, int flags)
{
    Dec d = {L, s, n, 0, flags, 0, NULL};
    d.sb = box_new(L);
    int bidx = lua_gettop(L);
    d.pos = json_skip_ws(s, n, 0);
    dec_value(&d);
    d.pos = json_skip_ws(s, n, d.pos);
    if (d.pos != n)
        dec_fail(&d, d.pos, "trailing characters after the value");
    jbuf_free(d.sb);
    lua_remove(L, bidx);
}

/* rl.json.decode(text [, {nonfinite=true}]) */
static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int flags = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "nonfinite");
        if (lua_toboolean(L, -1))
            flags |= LJSON_NONFINITE;
        lua_pop(L, 1);
    }
    ljson_decode(L, s, n, flags);
    return 1;
}

/* rl.json.object([t]): mark t (or a new table) to encode as an object even when empty. */
static int l_object(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    else
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_getmetatable(L, OBJECT_MT);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_isobject(lua_State *L)
{
    int r = 0;
    if (lua_istable(L, 1) && lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, OBJECT_MT);
        r = lua_rawequal(L, -1, -2);
    }
    lua_pushboolean(L, r);
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", l_encode},
    {"decode", l_decode},
    {"object", l_object},
    {"isobject", l_isobject},
    {NULL, NULL},
};

int luaopen_rl_json(lua_State *L)
{
    luaL_newmetatable(L, OBJECT_MT);
    lua_pushliteral(L, "object");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_newlib(L, json_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}

/* overrides.c — see overrides.h. */
#include "overrides.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ov_is_override(const char *arg)
{
    return arg[0] != '-' && strchr(arg, '=') != NULL;
}

static int valid_key(const char *k, size_t n, const char **why)
{
    size_t i = 0;
    if (n == 0) {
        *why = "empty key";
        return 0;
    }
    while (i < n) {
        if (!(isalpha((unsigned char)k[i]) || k[i] == '_')) {
            *why = k[i] == '.' ? "empty part in a dotted key"
                               : "a key starts with a letter or '_'";
            return 0;
        }
        while (i < n && (isalnum((unsigned char)k[i]) || k[i] == '_'))
            i++;
        if (i < n) {
            if (k[i] != '.') {
                *why = "a key holds only letters, digits, '_' and '.'";
                return 0;
            }
            if (++i == n) {
                *why = "key ends with '.'";
                return 0;
            }
        }
    }
    return 1;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* Whole-string integer: optional sign, decimal digits, fits in long long. */
static int parse_int(const char *v, long long *out)
{
    const char *p = v;
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return 0;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return 0;
    errno = 0;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (errno == ERANGE || *end)
        return 0;
    *out = x;
    return 1;
}

/* Whole-string finite decimal float (no hex, inf or nan: those stay strings). */
static int parse_float(const char *v, double *out)
{
    int digits = 0;
    for (const char *q = v; *q; q++) {
        if (isdigit((unsigned char)*q))
            digits = 1;
        else if (!strchr("+-.eE", *q))
            return 0;
    }
    if (!digits)
        return 0;
    char *end;
    double x = strtod(v, &end);
    if (*end || !isfinite(x))
        return 0;
    *out = x;
    return 1;
}

int ov_parse(const char *arg, ov_item *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->arg = arg;
    const char *eq = strchr(arg, '=');
    const char *why = NULL;
    if (!eq) {
        snprintf(err, errlen, "malformed setting '%s': expected key=value", arg);
        return -1;
    }
    if (!valid_key(arg, (size_t)(eq - arg), &why)) {
        snprintf(err, errlen, "malformed setting '%s': %s", arg, why);
        return -1;
    }
    const char *v = eq + 1;
    size_t vn = strlen(v);
    if (vn == 0) {
        snprintf(err, errlen,
                 "malformed setting '%s': no value (write %.*s='\"\"' for an empty string)",
                 arg, (int)(eq - arg), arg);
        return -1;
    }
    if (!(out->key = dup_n(arg, (size_t)(eq - arg))))
        goto nomem;
    if (v[0] == '"') {
        char *s = malloc(vn);
        if (!s)
            goto nomem;
        size_t k = 0, i = 1;
        int closed = 0;
        while (i < vn) {
            if (v[i] == '\\' && i + 1 < vn && (v[i + 1] == '"' || v[i + 1] == '\\')) {
                s[k++] = v[i + 1];
                i += 2;
                continue;
            }
            if (v[i] == '"') {
                closed = i == vn - 1;
                break;
            }
            s[k++] = v[i++];
        }
        if (!closed) {
            snprintf(err, errlen, "malformed setting '%s': %s", arg,
                     i < vn ? "unescaped '\"' inside quotes" : "unterminated quoted string");
            free(s);
            ov_free(out);
            return -1;
        }
        s[k] = '\0';
        out->type = OV_STRING;
        out->s = s;
        out->slen = k;
        return 0;
    }
    if (strcmp(v, "nil") == 0) {
        out->type = OV_NIL;
    } else if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
        out->type = OV_BOOL;
        out->b = v[0] == 't';
    } else if (parse_int(v, &out->i)) {
        out->type = OV_INT;
    } else if (parse_float(v, &out->d)) {
        out->type = OV_FLOAT;
    } else {
        out->type = OV_STRING;
        if (!(out->s = dup_n(v, vn)))
            goto nomem;
        out->slen = vn;
    }
    return 0;
nomem:
    ov_free(out);
    snprintf(err, errlen, "out of memory");
    return -1;
}

void ov_free(ov_item *it)
{
    free(it->key);
    free(it->s);
    it->key = it->s = NULL;
}

const char *ov_type_name(ov_type t)
{
    switch (t) {
    case OV_NIL: return "nil";
    case OV_BOOL: return "boolean";
    case OV_INT: return "integer";
    case OV_FLOAT: return "float";
    default: return "string";
    }
}

size_t ov_distance(const char *a, const char *b)
{
    /* Optimal string alignment distance; keys are short, so O(n*m) with a bound. */
    size_t n = strlen(a), m = strlen(b);
    if (n > 64 || m > 64)
        return n > m ? n : m;
    size_t d[65][65];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[n][m];
}

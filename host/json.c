/* json.c — see json.h. */
#include "json.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jbuf_init(jbuf *b) { b->p = NULL; b->len = b->cap = 0; }

void jbuf_free(jbuf *b)
{
    free(b->p);
    jbuf_init(b);
}

int jbuf_reserve(jbuf *b, size_t extra)
{
    if (b->cap - b->len > extra) /* keep one byte spare for jbuf_cstr */
        return JSON_OK;
    if (extra > SIZE_MAX / 2 - b->len)
        return JSON_ENOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return JSON_ENOMEM;
    b->p = p;
    b->cap = cap;
    return JSON_OK;
}

int jbuf_put(jbuf *b, const void *p, size_t n)
{
    if (jbuf_reserve(b, n))
        return JSON_ENOMEM;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return JSON_OK;
}

int jbuf_putc(jbuf *b, char c)
{
    if (jbuf_reserve(b, 1))
        return JSON_ENOMEM;
    b->p[b->len++] = c;
    return JSON_OK;
}

const char *jbuf_cstr(jbuf *b)
{
    if (jbuf_reserve(b, 1))
        return NULL;
    b->p[b->len] = '\0';
    return b->p;
}

int json_write_int(jbuf *b, long long v)
{
    char tmp[24], *e = tmp + sizeof tmp, *q = e;
    /* Work in unsigned so that LLONG_MIN does not overflow on negation. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--q = '-';
    return jbuf_put(b, q, (size_t)(e - q));
}

int json_write_double(jbuf *b, double v)
{
    char tmp[40];
    int len = 0;
    if (v == 0) /* keep the sign of -0.0 */
        return jbuf_put(b, signbit(v) ? "-0.0" : "0.0", signbit(v) ? 4 : 3);
    if (fabs(v) < 1e15 && v == (double)(long long)v) {
        if (json_write_int(b, (long long)v))
            return JSON_ENOMEM;
        return jbuf_put(b, ".0", 2);
    }
    /* Shortest of 15, 16, 17 significant digits that reads back exactly; 17 always
     * does for IEEE doubles. */
    for (int prec = 15; prec <= 17; prec++) {
        len = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (prec == 17 || strtod(tmp, NULL) == v)
            break;
    }
    if (!memchr(tmp, '.', (size_t)len) && !memchr(tmp, 'e', (size_t)len)) {
        tmp[len++] = '.';
        tmp[len++] = '0';
    }
    return jbuf_put(b, tmp, (size_t)len);
}

int json_write_nonfinite(jbuf *b, double v)
{
    if (isnan(v))
        return jbuf_put(b, "NaN", 3);
    return v > 0 ? jbuf_put(b, "Infinity", 8) : jbuf_put(b, "-Infinity", 9);
}

/* 0: copy as is; 1: escape; 2: non-ASCII, check UTF-8. */
static const unsigned char esc_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* '\\' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, /* DEL, escaped for logs */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

size_t json_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2 || c > 0xF4) /* continuation byte, overlong 2-byte lead, > U+10FFFF */
        return 0;
    if (c < 0xE0) {
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0) /* overlong */
            return 0;
        if (c == 0xED && s[1] >= 0xA0) /* UTF-16 surrogate */
            return 0;
        return 3;
    }
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
        return 0;
    if (c == 0xF0 && s[1] < 0x90) /* overlong */
        return 0;
    if (c == 0xF4 && s[1] >= 0x90) /* > U+10FFFF */
        return 0;
    return 4;
}

int json_write_string(jbuf *b, const char *s, size_t n, int bad_utf8, size_t *bad_at)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    /* Worst case every byte becomes \u00XX (6) or U+FFFD (3): reserve once. */
    if (n > (SIZE_MAX - 2) / 6 || jbuf_reserve(b, n * 6 + 2))
        return JSON_ENOMEM;
    char *o = b->p + b->len;
    *o++ = '"';
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && esc_class[u[run]] == 0)
            run++;
        memcpy(o, s + i, run - i);
        o += run - i;
        i = run;
        if (i >= n)
            break;
        unsigned c = u[i];
        if (esc_class[c] == 1) {
            *o++ = '\\';
            switch (c) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            default:
                *o++ = 'u'; *o++ = '0'; *o++ = '0';
                *o++ = hex[c >> 4]; *o++ = hex[c & 15];
            }
            i++;
            continue;
        }
        size_t k = json_utf8_len(u + i, n - i);
        if (k) {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        } else if (bad_utf8 == JSON_UTF8_ESCAPE) {
            memcpy(o, "\\udc", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
            i++;
        } else if (bad_utf8 == JSON_UTF8_REPLACE) {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            if (bad_at)
                *bad_at = i;
            return JSON_EUTF8; /* b->len unchanged: nothing half-written */
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return JSON_OK;
}

size_t json_skip_ws(const char *s, size_t n, size_t pos)
{
    while (pos < n && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t'))
        pos++;
    return pos;
}

int json_scan_number(const char *s, size_t n, size_t *pos, int *is_int, long long *iv,
                     double *dv, const char **why)
{
    size_t p = *pos, start = p;
    int neg = 0, integral = 1;
    if (p < n && s[p] == '-') {
        neg = 1;
        p++;
    }
    if (p >= n || s[p] < '0' || s[p] > '9') {
        *why = "expected a digit";
        *pos = p;
        return JSON_ESYNTAX;
    }
    /* Accumulate the integer part in unsigned 64 bits, noting overflow. */
    unsigned long long acc = 0;
    int overflow = 0;
    if (s[p] == '0') {
        p++;
        if (p < n && s[p] >= '0' && s[p] <= '9') {
            *why = "leading zero in a number";
            *pos = p;
            return JSON_ESYNTAX;
        }
    } else {
        while (p < n && s[p] >= '0' && s[p] <= '9') {
            unsigned d = (unsigned)(s[p] - '0');
            if (acc > (ULLONG_MAX - d) / 10)
                overflow = 1;
            else
                acc = acc * 10 + d;
            p++;
        }
    }
    if (p < n && s[p] == '.') {
        integral = 0;
        p++;
        if (p >= n || s[p] < '0' || s[p] > '9') {
            *why = "expected a digit after '.'";
            *pos = p;
            return JSON_ESYNTAX;
        }
        while (p < n && s[p] >= '0' && s[p] <= '9')
            p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        integral = 0;
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= n || s[p] < '0' || s[p] > '9') {
            *why = "expected a digit in the exponent";
            *pos = p;
            return JSON_ESYNTAX;
        }
        while (p < n && s[p] >= '0' && s[p] <= '9')
            p++;
    }
    if (integral && !overflow &&
        (neg ? acc <= (unsigned long long)LLONG_MAX + 1 : acc <= (unsigned long long)LLONG_MAX)) {
        *is_int = 1;
        *iv = neg ? (long long)(0ULL - acc) : (long long)acc;
    } else {
        /* strtod needs a terminated string; numbers are short, copy when needed. */
        char tmp[64], *buf = tmp, *end;
        size_t len = p - start;
        if (len >= sizeof tmp && !(buf = malloc(len + 1))) {
            *why = "out of memory";
            return JSON_ENOMEM;
        }
        memcpy(buf, s + start, len);
        buf[len] = '\0';
        *dv = strtod(buf, &end);
        if (buf != tmp)
            free(buf);
        *is_int = 0;
    }
    *pos = p;
    return JSON_OK;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t utf8_encode(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The \uXXXX escape (or surrogate pair) at s[p]: append its UTF-8 (or, with `bytes`,
 * the raw byte of a \udc80..\udcff surrogate escape) and set *used to its length. */
static int scan_u_escape(const char *s, size_t n, size_t p, jbuf *out, const char **why,
                         int bytes, size_t *used)
{
    unsigned cp, lo;
    if (p + 6 > n || hex4(s + p + 2, &cp)) {
        *why = "bad \\u escape";
        return JSON_ESYNTAX;
    }
    *used = 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p + 12 > n || s[p + 6] != '\\' || s[p + 7] != 'u' || hex4(s + p + 8, &lo) ||
            lo < 0xDC00 || lo > 0xDFFF) {
            *why = "lone UTF-16 surrogate in \\u escape";
            return JSON_ESYNTAX;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        *used = 12;
    } else if (bytes && cp >= 0xDC80 && cp <= 0xDCFF) {
        if (jbuf_putc(out, (char)(cp & 0xFF))) { /* surrogateescape: a raw byte */
            *why = "out of memory";
            return JSON_ENOMEM;
        }
        return JSON_OK;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        *why = "lone UTF-16 surrogate in \\u escape";
        return JSON_ESYNTAX;
    }
    char enc[4];
    if (jbuf_put(out, enc, utf8_encode(enc, cp))) {
        *why = "out of memory";
        return JSON_ENOMEM;
    }
    return JSON_OK;
}

int json_scan_string(const char *s, size_t n, size_t *pos, jbuf *out, const char **why)
{
    return json_scan_string_ex(s, n, pos, out, why, 0);
}

int json_scan_string_ex(const char *s, size_t n, size_t *pos, jbuf *out, const char **why,
                        int bytes)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t p = *pos + 1; /* past the opening quote */
    for (;;) {
        size_t run = p;
        while (run < n && u[run] >= 0x20 && u[run] != '"' && u[run] != '\\' && u[run] < 0x80)
            run++;
        if (run > p && jbuf_put(out, s + p, run - p)) {
            *why = "out of memory";
            return JSON_ENOMEM;
        }
        p = run;
        if (p >= n) {
            *why = "unterminated string";
            *pos = p;
            return JSON_ESYNTAX;
        }
        unsigned c = u[p];
        if (c == '"') {
            *pos = p + 1;
            return JSON_OK;
        }
        if (c < 0x20) {
            *why = "raw control character in a string";
            *pos = p;
            return JSON_ESYNTAX;
        }
        if (c >= 0x80) {
            size_t k = json_utf8_len(u + p, n - p);
            if (!k) {
                *why = "invalid UTF-8 in a string";
                *pos = p;
                return JSON_ESYNTAX;
            }
            if (jbuf_put(out, s + p, k)) {
                *why = "out of memory";
                return JSON_ENOMEM;
            }
            p += k;
            continue;
        }
        /* backslash */
        if (p + 1 >= n) {
            *why = "unterminated escape";
            *pos = p;
            return JSON_ESYNTAX;
        }
        char e = s[p + 1], ch;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            size_t used = 0;
            int rc = scan_u_escape(s, n, p, out, why, bytes, &used);
            if (rc) {
                *pos = p;
                return rc;
            }
            p += used;
            continue;
        }
        default:
            *why = "unknown escape";
            *pos = p;
            return JSON_ESYNTAX;
        }
        if (jbuf_putc(out, ch)) {
            *why = "out of memory";
            return JSON_ENOMEM;
        }
        p += 2;
    }
}

void json_describe_error(char *err, size_t errlen, const char *s, size_t n, size_t pos,
                         const char *why)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos && i < n; i++) {
        if (s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    /* A short excerpt around pos, made printable, so the message shows where. */
    char ex[48];
    size_t from = pos > 10 ? pos - 10 : 0, k = 0;
    for (size_t i = from; i < n && i < from + 24 && k + 5 < sizeof ex; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\'') {
            ex[k++] = (char)c;
        } else {
            k += (size_t)snprintf(ex + k, sizeof ex - k, "\\x%02x", c);
        }
    }
    ex[k < sizeof ex ? k : sizeof ex - 1] = '\0';
    if (pos >= n)
        snprintf(err, errlen, "at byte %zu (line %zu, column %zu): %s at end of input", pos,
                 line, col, why);
    else
        snprintf(err, errlen, "at byte %zu (line %zu, column %zu): %s near '%s'", pos, line,
                 col, why, ex);
}

/* scrub.c — see scrub.h.
 *
 * The text is read through "views": view 0 is the text itself, view k+1 is view k
 * with every escape decoded once. Each byte of a view remembers the span of original
 * bytes it came from, so a copy of the secret found in any view maps back to the
 * original bytes to replace. Long texts are viewed in overlapping windows so that
 * memory stays bounded (a window's views cost about ten times its size). */
#include "scrub.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LEVELS 3              /* nested decodings looked through */
#define WINDOW (1u << 20)     /* original bytes viewed at once */
#define MAX_ESCAPE 12         /* longest escape, in bytes (a JSON surrogate pair) */
#define MAX_PATTERNS 7        /* the secret and six base64 forms */

typedef struct Span {
    uint32_t a, b; /* original bytes [a, b) of the window */
} Span;

typedef struct View {
    unsigned char *s;
    Span *sp; /* NULL: the identity (view 0) */
    size_t n;
} View;

typedef struct Pattern {
    char s[512];
    size_t n;
} Pattern;

typedef struct Hits {
    size_t (*r)[2]; /* original ranges [a, b) to replace */
    size_t n, cap;
    int oom;
} Hits;

static int hexval(int c)
{
    static const char digits[] = "0123456789abcdef";
    const char *p = c ? strchr(digits, tolower(c)) : NULL;
    return p ? (int)(p - digits) : -1;
}

/* Exactly `digits` hex digits at s (avail bytes there) into *v. */
static int hex_at(const unsigned char *s, size_t avail, int digits, uint32_t *v)
{
    if (avail < (size_t)digits)
        return 0;
    *v = 0;
    for (int i = 0; i < digits; i++) {
        int h = hexval(s[i]);
        if (h < 0)
            return 0;
        *v = *v * 16 + (uint32_t)h;
    }
    return 1;
}

static size_t utf8(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A backslash escape at s[0] (left bytes): bytes consumed (0: none), decoded into o. */
static size_t backslash_at(const unsigned char *s, size_t left, unsigned char *o, size_t *olen)
{
    static const char from[] = "nrtbf\"\\/'", to[] = "\n\r\t\b\f\"\\/'";
    uint32_t v, w;
    if (left < 2)
        return 0;
    const char *k = s[1] ? strchr(from, s[1]) : NULL;
    if (k) {
        o[0] = (unsigned char)to[k - from];
        *olen = 1;
        return 2;
    }
    if (s[1] == 'x' && hex_at(s + 2, left - 2, 2, &v)) {
        o[0] = (unsigned char)v;
        *olen = 1;
        return 4;
    }
    if (s[1] == 'U' && hex_at(s + 2, left - 2, 8, &v) && v <= 0x10FFFF) {
        *olen = utf8(v, o);
        return 10;
    }
    if (s[1] != 'u' || !hex_at(s + 2, left - 2, 4, &v))
        return 0;
    if (v >= 0xD800 && v < 0xDC00 && left >= 12 && s[6] == '\\' && s[7] == 'u' &&
        hex_at(s + 8, left - 8, 4, &w) && w >= 0xDC00 && w < 0xE000) {
        *olen = utf8(0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00), o);
        return 12;
    }
    *olen = utf8(v, o); /* a lone surrogate: three bytes, as lenient decoders write it */
    return 6;
}

/* An escape of any kind at s[0]: bytes consumed (0: none). Never decodes to more
 * bytes than it consumed, so views are never longer than the text. */
static size_t escape_at(const unsigned char *s, size_t left, unsigned char *o, size_t *olen)
{
    uint32_t v;
    if (s[0] == '\\')
        return backslash_at(s, left, o, olen);
    if (s[0] == '%' && hex_at(s + 1, left - 1, 2, &v)) {
        o[0] = (unsigned char)v;
        *olen = 1;
        return 3;
    }
    if (s[0] != '&' || left < 4 || s[1] != '#')
        return 0;
    int hex = s[2] == 'x' || s[2] == 'X';
    size_t j = hex ? 3 : 2, digits = 0;
    v = 0;
    for (; j < left && digits < 8; j++, digits++) {
        int d = hex ? hexval(s[j]) : (s[j] >= '0' && s[j] <= '9' ? s[j] - '0' : -1);
        if (d < 0)
            break;
        v = v * (hex ? 16 : 10) + (uint32_t)d;
    }
    if (!digits || j >= left || s[j] != ';' || v > 0x10FFFF)
        return 0;
    *olen = utf8(v, o);
    return j + 1;
}

/* out = in with each escape decoded once; returns whether anything was decoded.
 * out->s and out->sp must hold in->n entries. */
static int decode_view(const View *in, View *out)
{
    int any = 0;
    size_t i = 0, n = 0;
    while (i < in->n) {
        unsigned char o[4];
        size_t olen = 0;
        size_t used = escape_at(in->s + i, in->n - i, o, &olen);
        if (!used) {
            o[0] = in->s[i];
            olen = used = 1;
        } else {
            any = 1;
        }
        Span sp = {in->sp ? in->sp[i].a : (uint32_t)i,
                   in->sp ? in->sp[i + used - 1].b : (uint32_t)(i + used)};
        for (size_t k = 0; k < olen; k++) {
            out->s[n] = o[k];
            out->sp[n++] = sp;
        }
        i += used;
    }
    out->n = n;
    return any;
}

static void add_hit(Hits *h, size_t a, size_t b)
{
    if (h->n == h->cap) {
        size_t c = h->cap ? h->cap * 2 : 16;
        size_t(*q)[2] = realloc(h->r, c * sizeof *q);
        if (!q) {
            h->oom = 1;
            return;
        }
        h->r = q;
        h->cap = c;
    }
    h->r[h->n][0] = a;
    h->r[h->n][1] = b;
    h->n++;
}

/* Every copy of every pattern in v, as original ranges offset by `base`. */
static void find_in_view(const View *v, const Pattern *pats, int np, size_t base, Hits *h)
{
    for (int k = 0; k < np; k++) {
        const unsigned char *from = v->s, *end = v->s + v->n, *at;
        while ((size_t)(end - from) >= pats[k].n &&
               (at = memmem(from, (size_t)(end - from), pats[k].s, pats[k].n)) != NULL) {
            size_t i = (size_t)(at - v->s), j = i + pats[k].n - 1;
            add_hit(h, base + (v->sp ? v->sp[i].a : i), base + (v->sp ? v->sp[j].b : j + 1));
            from = at + 1;
        }
    }
}

static int has_escape_char(const char *s, size_t n)
{
    return memchr(s, '\\', n) || memchr(s, '%', n) || memchr(s, '&', n);
}

/* One window: view 0 and the decoded views under it. Returns -1 when out of memory. */
static int scan_window(const char *s, size_t n, size_t base, const Pattern *pats, int np, Hits *h)
{
    View v = {(unsigned char *)s, NULL, n};
    find_in_view(&v, pats, np, base, h);
    if (!has_escape_char(s, n))
        return 0;
    unsigned char *bytes = malloc(2 * n + 1);
    Span *spans = malloc(2 * (n + 1) * sizeof *spans);
    if (!bytes || !spans) {
        free(bytes);
        free(spans);
        return -1;
    }
    View next[2] = {{bytes, spans, 0}, {bytes + n, spans + n + 1, 0}};
    for (int level = 0; level < LEVELS; level++) {
        View *out = &next[level % 2];
        if (!decode_view(&v, out))
            break;
        find_in_view(out, pats, np, base, h);
        v = *out;
    }
    free(bytes);
    free(spans);
    return 0;
}

/* The base64 characters that encode the secret whole, when it starts `skip` bytes
 * into a 3-byte group: what any base64 text carrying the secret there contains. */
static size_t base64_core(const unsigned char *sec, size_t n, int skip, int url, char *out)
{
    const char *abc = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                          : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t first = skip ? 3 - (size_t)skip : 0, len = 0; /* first whole group, in sec */
    for (size_t g = first; g + 3 <= n; g += 3) {
        uint32_t v = (uint32_t)sec[g] << 16 | (uint32_t)sec[g + 1] << 8 | sec[g + 2];
        for (int k = 3; k >= 0; k--)
            out[len++] = abc[v >> (6 * k) & 63];
    }
    return len;
}

static int make_patterns(const char *secret, Pattern *pats)
{
    size_t n = strlen(secret);
    if (n >= sizeof pats[0].s)
        n = sizeof pats[0].s - 1; /* a key this long: its first 511 bytes are as secret */
    memcpy(pats[0].s, secret, n);
    pats[0].n = n;
    int np = 1;
    if (n < 6)
        return np;
    for (int url = 0; url < 2; url++)
        for (int skip = 0; skip < 3; skip++) {
            size_t k = base64_core((const unsigned char *)secret, n, skip, url, pats[np].s);
            if (k >= 8)
                pats[np++].n = k;
        }
    return np;
}

/* Replace the (merged) ranges in place, left to right: the text only shrinks. */
static size_t apply_hits(char *s, size_t n, Hits *h)
{
    for (size_t i = 1; i < h->n; i++) { /* insertion sort: hits are few */
        size_t a = h->r[i][0], b = h->r[i][1], j = i;
        for (; j && h->r[j - 1][0] > a; j--) {
            h->r[j][0] = h->r[j - 1][0];
            h->r[j][1] = h->r[j - 1][1];
        }
        h->r[j][0] = a;
        h->r[j][1] = b;
    }
    size_t w = 0, r = 0;
    for (size_t i = 0; i < h->n; i++) {
        size_t a = h->r[i][0], b = h->r[i][1];
        while (i + 1 < h->n && h->r[i + 1][0] <= b) { /* overlapping or touching */
            if (h->r[i + 1][1] > b)
                b = h->r[i + 1][1];
            i++;
        }
        if (a < r)
            a = r;
        memmove(s + w, s + r, a - r);
        w += a - r;
        size_t stars = b - a < 3 ? b - a : 3;
        memset(s + w, '*', stars);
        w += stars;
        r = b;
    }
    memmove(s + w, s + r, n - r);
    w += n - r;
    s[w] = '\0';
    return w;
}

int scrub_secret(char *s, size_t *len, const char *secret)
{
    if (!s || !secret || !*secret)
        return 0;
    Pattern pats[MAX_PATTERNS];
    int np = make_patterns(secret, pats);
    size_t longest = 0;
    for (int k = 0; k < np; k++)
        longest = pats[k].n > longest ? pats[k].n : longest;
    /* A copy starting anywhere in a window's first part is seen whole in that window
     * with every escape before it decoded from its start. */
    size_t overlap = longest * MAX_ESCAPE * MAX_ESCAPE * MAX_ESCAPE + MAX_ESCAPE * LEVELS;
    if (overlap > WINDOW / 2)
        overlap = WINDOW / 2;
    Hits h = {0};
    int rc = 0;
    for (size_t off = 0; rc == 0;) {
        size_t wn = *len - off < WINDOW ? *len - off : WINDOW;
        rc = scan_window(s + off, wn, off, pats, np, &h);
        if (off + wn >= *len)
            break;
        off += WINDOW - overlap;
    }
    if (rc < 0 || h.oom) {
        free(h.r);
        memcpy(s, "***", *len < 3 ? *len : 3);
        *len = *len < 3 ? *len : 3;
        s[*len] = '\0';
        return -1;
    }
    int found = (int)h.n;
    if (h.n)
        *len = apply_hits(s, *len, &h);
    free(h.r);
    return found;
}

int scrub_secret_str(char *s, const char *secret)
{
    if (!s)
        return 0;
    size_t n = strlen(s);
    return scrub_secret(s, &n, secret);
}

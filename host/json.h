/* json.h — JSON text primitives: a growable byte buffer, exact number formatting,
 * string escaping with UTF-8 checks, and the scanners the decoder is built from.
 *
 * Plain C: never includes lua.h. The Lua bridge (ljson.c) and the C core (http,
 * proc) both build on it. Functions return a status (0 ok, negative error) and never
 * exit or longjmp. */
#ifndef RLHOST_JSON_H
#define RLHOST_JSON_H

#include <stddef.h>
#include <stdint.h>

/* Nesting deeper than this is an error on both encode and decode: it bounds the C
 * recursion, so a hostile document cannot overflow the stack. */
#define JSON_MAX_DEPTH 500

enum {
    JSON_OK = 0,
    JSON_ENOMEM = -1,  /* allocation failed */
    JSON_EUTF8 = -2,   /* invalid UTF-8 in a string being encoded */
    JSON_ESYNTAX = -3, /* malformed input while scanning */
};

typedef struct jbuf {
    char *p;    /* bytes; not NUL-terminated unless jbuf_cstr() was called */
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated */
} jbuf;

void jbuf_init(jbuf *b);
void jbuf_free(jbuf *b);
/* Make room for `extra` more bytes. */
int jbuf_reserve(jbuf *b, size_t extra);
int jbuf_put(jbuf *b, const void *p, size_t n);
int jbuf_putc(jbuf *b, char c);
/* Terminate with NUL (not counted in len) and return the bytes, or NULL on ENOMEM. */
const char *jbuf_cstr(jbuf *b);

/* Decimal integer. */
int json_write_int(jbuf *b, long long v);
/* A finite double in the shortest form that strtod reads back to the same bits.
 * Integral values get a ".0" so that a float stays a float after a round trip.
 * The caller rejects NaN and infinities (JSON has no spelling for them). */
int json_write_double(jbuf *b, double v);
/* Non-finite doubles as Python's json writes them (NaN, Infinity, -Infinity); only for
 * the engine channel, whose decoder accepts them. */
int json_write_nonfinite(jbuf *b, double v);
/* What json_write_string does with bytes that are not UTF-8. */
enum {
    JSON_UTF8_STRICT = 0,  /* JSON_EUTF8 (with *bad_at = its offset) */
    JSON_UTF8_REPLACE = 1, /* each bad byte becomes U+FFFD (lossy) */
    JSON_UTF8_ESCAPE = 2,  /* each bad byte XX becomes \udcXX, a lone low surrogate
                              (PEP 383 surrogateescape: Python's os functions turn it
                              back into the byte); lossless, for paths to the engine */
};
/* A quoted JSON string. Control characters, '"' and '\\' are escaped; other bytes
 * pass through; invalid UTF-8 as `bad_utf8` (a JSON_UTF8_* value) says. */
int json_write_string(jbuf *b, const char *s, size_t n, int bad_utf8, size_t *bad_at);

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not
 * one (overlong forms, surrogates and code points above U+10FFFF are invalid). */
size_t json_utf8_len(const unsigned char *s, size_t n);

/* Scanners over s[0..n) starting at *pos; on success *pos is past the token.
 *
 * json_scan_number: a JSON number. *is_int is set when it has no fraction or exponent
 * and fits in a signed 64-bit integer (then *iv holds it); otherwise *dv holds the
 * nearest double.
 * json_scan_string: *pos at the opening quote; unescapes into out (appending).
 * Raw control characters, bad escapes, lone surrogates and invalid UTF-8 are
 * JSON_ESYNTAX with *pos at the offending byte and a static reason in *why. */
int json_scan_number(const char *s, size_t n, size_t *pos, int *is_int, long long *iv,
                     double *dv, const char **why);
int json_scan_string(const char *s, size_t n, size_t *pos, jbuf *out, const char **why);
/* json_scan_string that also takes a lone \udc80..\udcff escape as the raw byte 0x80..0xff
 * (the inverse of JSON_UTF8_ESCAPE) when `bytes` is set. */
int json_scan_string_ex(const char *s, size_t n, size_t *pos, jbuf *out, const char **why,
                        int bytes);
/* Skip JSON whitespace. */
size_t json_skip_ws(const char *s, size_t n, size_t pos);

/* Format "at byte P (line L, column C): WHY near 'EXCERPT'" into err. */
void json_describe_error(char *err, size_t errlen, const char *s, size_t n, size_t pos,
                         const char *why);

#endif

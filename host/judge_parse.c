/* judge_parse.c — see judge_parse.h. The *last* marker wins because judges are asked
 * to reason first and give the verdict at the end; reasoning may quote the scale
 * ("[[1]] means bad") before the actual score. */
#include "judge_parse.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void judge_parse_default_params(judge_parse_params *p)
{
    p->mode = JUDGE_PARSE_BRACKETS;
    p->field = "score";
    p->lo = 1;
    p->hi = 10;
}

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* A finite decimal number filling t[0..n) exactly (surrounding blanks allowed):
 * strtod alone would also take "nan", "inf" and hex. */
static int read_number(const char *t, size_t n, double *v)
{
    char buf[64];
    while (n && isspace((unsigned char)*t))
        t++, n--;
    while (n && isspace((unsigned char)t[n - 1]))
        n--;
    if (n == 0 || n >= sizeof buf)
        return -1;
    size_t i = 0;
    if (t[i] == '+' || t[i] == '-')
        i++;
    int digits = 0;
    for (size_t j = i; j < n; j++) {
        if (isdigit((unsigned char)t[j]))
            digits++;
        else if (t[j] != '.')
            return -1;
    }
    if (!digits)
        return -1;
    memcpy(buf, t, n);
    buf[n] = '\0';
    char *end;
    double d = strtod(buf, &end);
    if (*end || !isfinite(d))
        return -1;
    *v = d;
    return 0;
}

static int check_range(const judge_parse_params *p, double v, double *score, char *err,
                       size_t errlen)
{
    if (v < p->lo || v > p->hi) {
        char m[96];
        snprintf(m, sizeof m, "score %g outside the scale [%g, %g]", v, p->lo, p->hi);
        set_err(err, errlen, m);
        return JUDGE_E_RANGE;
    }
    *score = v;
    return JUDGE_OK;
}

/* The last [[...]] pair: returns the content span, or -1. */
static int last_brackets(const char *s, size_t n, size_t *a, size_t *b)
{
    if (n < 4)
        return -1;
    for (size_t i = n - 2; i + 1 > 0; i--) {
        if (s[i] != ']' || s[i + 1] != ']')
            continue;
        /* find the matching "[[" before it, on the same stretch (no "]]" between) */
        for (size_t j = i; j >= 2; j--) {
            if (s[j - 2] == '[' && s[j - 1] == '[') {
                *a = j;
                *b = i;
                return 0;
            }
            if (s[j - 1] == ']' || i - j > 64)
                break;
        }
        if (i == 0)
            break;
    }
    return -1;
}

static int parse_brackets(const judge_parse_params *p, const char *s, size_t n, double *score,
                          char *err, size_t errlen)
{
    size_t a, b;
    if (last_brackets(s, n, &a, &b) < 0) {
        set_err(err, errlen, "no [[score]] in the answer");
        return JUDGE_E_NOSCORE;
    }
    double v;
    const char *slash = memchr(s + a, '/', b - a);
    size_t end = slash ? (size_t)(slash - s) : b;
    if (read_number(s + a, end - a, &v) < 0) {
        set_err(err, errlen, "the last [[...]] does not hold a number");
        return JUDGE_E_NUMBER;
    }
    if (slash) { /* "7/10": a scale different from ours is rescaled, not trusted blindly */
        double den;
        if (read_number(slash + 1, b - (size_t)(slash + 1 - s), &den) < 0 || den <= 0) {
            set_err(err, errlen, "the last [[n/m]] has a bad denominator");
            return JUDGE_E_NUMBER;
        }
        if (den != p->hi)
            v = p->lo + v / den * (p->hi - p->lo);
    }
    return check_range(p, v, score, err, errlen);
}

static int parse_json(const judge_parse_params *p, const char *s, size_t n, double *score,
                      char *err, size_t errlen)
{
    int found_obj = 0, tries = 0;
    for (size_t i = n; i-- > 0;) {
        if (s[i] != '{')
            continue;
        if (++tries > 256)
            break; /* each try parses to the end: bound the work on brace-heavy text */
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(s + i, n - i, &end, 0);
        if (!j)
            continue;
        found_obj = 1;
        cJSON *f = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, p->field) : NULL;
        double v = 0;
        int ok = -1;
        if (cJSON_IsNumber(f)) {
            v = f->valuedouble;
            ok = isfinite(v) ? 0 : -1;
        } else if (cJSON_IsString(f)) {
            ok = read_number(f->valuestring, strlen(f->valuestring), &v);
        }
        int had_field = f != NULL;
        cJSON_Delete(j);
        if (ok == 0)
            return check_range(p, v, score, err, errlen);
        if (had_field) {
            set_err(err, errlen, "the JSON score field is not a number");
            return JUDGE_E_NUMBER;
        }
    }
    set_err(err, errlen, found_obj ? "no JSON object with the score field"
                                   : "no JSON object in the answer");
    return JUDGE_E_NOSCORE;
}

int judge_parse_score(const judge_parse_params *p, const char *s, size_t n, double *score,
                      char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (p->mode == JUDGE_PARSE_JSON)
        return parse_json(p, s, n, score, err, errlen);
    return parse_brackets(p, s, n, score, err, errlen);
}

int judge_parse_verdict(const char *s, size_t n, char *err, size_t errlen)
{
    size_t a, b;
    if (last_brackets(s, n, &a, &b) < 0) {
        set_err(err, errlen, "no [[A]], [[B]] or [[tie]] in the answer");
        return 0;
    }
    while (a < b && isspace((unsigned char)s[a]))
        a++;
    while (b > a && isspace((unsigned char)s[b - 1]))
        b--;
    size_t k = b - a;
    if (k == 1) {
        char c = (char)toupper((unsigned char)s[a]);
        if (c == 'A' || c == 'B')
            return c;
        if (c == 'C' || c == '=')
            return 'T';
    }
    if (k == 3 && strncasecmp(s + a, "tie", 3) == 0)
        return 'T';
    set_err(err, errlen, "the last [[...]] is not A, B or tie");
    return 0;
}

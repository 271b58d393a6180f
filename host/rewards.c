/* rewards.c — see rewards.h. */
#include "rewards.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Compare two texts under RW_SPACE/RW_CASEFOLD without copying either. */
double rewards_exact(const char *a, size_t n, const char *b, size_t m, int flags)
{
    size_t i = 0, j = 0;
    int space = flags & RW_SPACE, fold = flags & RW_CASEFOLD;
    if (space) {
        while (i < n && isspace((unsigned char)a[i])) i++;
        while (j < m && isspace((unsigned char)b[j])) j++;
        while (n > i && isspace((unsigned char)a[n - 1])) n--;
        while (m > j && isspace((unsigned char)b[m - 1])) m--;
    }
    while (i < n && j < m) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[j];
        if (space && isspace(x) && isspace(y)) {
            while (i < n && isspace((unsigned char)a[i])) i++;
            while (j < m && isspace((unsigned char)b[j])) j++;
            continue;
        }
        if (fold) {
            x = (unsigned char)tolower(x);
            y = (unsigned char)tolower(y);
        }
        if (x != y)
            return 0;
        i++, j++;
    }
    return i == n && j == m ? 1 : 0;
}

static int find(const char *h, size_t n, const char *nd, size_t m, int fold)
{
    if (m == 0)
        return 1;
    for (size_t i = 0; i + m <= n; i++) {
        if (fold ? strncasecmp(h + i, nd, m) == 0 && !memchr(h + i, 0, m) : memcmp(h + i, nd, m) == 0)
            return 1;
    }
    return 0;
}

int rewards_contains_count(const char *text, size_t n, const char *const *needles,
                           const size_t *lens, int k, int flags)
{
    int c = 0;
    for (int i = 0; i < k; i++)
        c += find(text, n, needles[i], lens[i], flags & RW_CASEFOLD);
    return c;
}

int rewards_regex_compile(rewards_regex *r, const char *pattern, int flags, char *err,
                          size_t errlen)
{
    r->ok = 0;
    int rc = regcomp(&r->re, pattern, REG_EXTENDED | REG_NOSUB | (flags & RW_CASEFOLD ? REG_ICASE : 0));
    if (rc != 0) {
        regerror(rc, &r->re, err, errlen);
        return -1;
    }
    r->ok = 1;
    return 0;
}

int rewards_regex_match(const rewards_regex *r, const char *text)
{
    return r->ok && regexec(&r->re, text, 0, NULL, 0) == 0;
}

void rewards_regex_free(rewards_regex *r)
{
    if (r->ok)
        regfree(&r->re);
    r->ok = 0;
}

void rewards_length_default_params(rewards_length_params *p)
{
    p->target = 100;
    p->tolerance = 0;
    p->scale = 100;
    p->shape = RW_LINEAR;
    p->side = RW_BOTH;
}

double rewards_length(double len, const rewards_length_params *p)
{
    double d = len - p->target;
    if ((p->side == RW_MAX && d <= 0) || (p->side == RW_MIN && d >= 0))
        return 1;
    double ex = fabs(d) - p->tolerance;
    if (ex <= 0)
        return 1;
    if (p->shape == RW_STEP)
        return 0;
    double x = ex / (p->scale > 0 ? p->scale : 1);
    double r = p->shape == RW_QUADRATIC ? 1 - x * x : p->shape == RW_GAUSSIAN ? exp(-x * x / 2) : 1 - x;
    return r < 0 ? 0 : r;
}

size_t rewards_count_chars(const char *t, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)t[i] & 0xC0) != 0x80;
    return c;
}

size_t rewards_count_words(const char *t, size_t n)
{
    size_t c = 0;
    int in = 0;
    for (size_t i = 0; i < n; i++) {
        int sp = isspace((unsigned char)t[i]);
        if (!sp && !in)
            c++;
        in = !sp;
    }
    return c;
}

double rewards_json(const char *text, size_t n, const char *const *required, int k, char *why,
                    size_t whylen)
{
    size_t a = 0, b = n;
    while (a < b && isspace((unsigned char)text[a])) a++;
    while (b > a && isspace((unsigned char)text[b - 1])) b--;
    if (b - a >= 6 && memcmp(text + a, "```", 3) == 0 && memcmp(text + b - 3, "```", 3) == 0) {
        const char *nl = memchr(text + a, '\n', b - a);
        if (nl && (size_t)(nl - text) < b - 3) {
            a = (size_t)(nl - text) + 1;
            b -= 3;
        }
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text + a, b - a, &end, 0);
    if (!j) {
        snprintf(why, whylen, "not valid JSON");
        return 0;
    }
    while (end && end < text + b && isspace((unsigned char)*end)) end++;
    if (end && end < text + b) {
        cJSON_Delete(j);
        snprintf(why, whylen, "text after the JSON value");
        return 0;
    }
    double r = 1;
    if (k > 0 && !cJSON_IsObject(j)) {
        snprintf(why, whylen, "not a JSON object");
        r = 0;
    }
    for (int i = 0; r && i < k; i++) {
        if (!cJSON_GetObjectItemCaseSensitive(j, required[i])) {
            snprintf(why, whylen, "missing key '%.80s'", required[i]);
            r = 0;
        }
    }
    cJSON_Delete(j);
    if (r)
        why[0] = '\0';
    return r;
}

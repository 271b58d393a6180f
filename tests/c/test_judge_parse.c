/* Unit tests for host/judge_parse.c: the score parser over arbitrary bytes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "judge_parse.h"
#include "tap.h"

static int parse(const char *s, double *v)
{
    judge_parse_params p;
    judge_parse_default_params(&p);
    char err[128];
    return judge_parse_score(&p, s, strlen(s), v, err, sizeof err);
}

static void test_brackets(void)
{
    double v = -1;
    CHECK(parse("Rating: [[7]]", &v) == JUDGE_OK && v == 7);
    CHECK(parse("[[1]] means bad. ... Rating: [[8.5]]", &v) == JUDGE_OK && v == 8.5);
    CHECK(parse("Rating: [[ 3 ]]\n", &v) == JUDGE_OK && v == 3);
    CHECK(parse("Rating: [[10]]", &v) == JUDGE_OK && v == 10);
    CHECK(parse("Rating: [[5/5]]", &v) == JUDGE_OK && fabs(v - 10) < 1e-9); /* rescaled */
    CHECK(parse("Rating: [[4/10]]", &v) == JUDGE_OK && v == 4);
}

static void test_failures(void)
{
    double v = 42;
    CHECK(parse("I'd give it a 7.", &v) == JUDGE_E_NOSCORE);
    CHECK(parse("", &v) == JUDGE_E_NOSCORE);
    CHECK(parse("[[", &v) == JUDGE_E_NOSCORE);
    CHECK(parse("]]", &v) == JUDGE_E_NOSCORE);
    CHECK(parse("Rating: [[seven]]", &v) == JUDGE_E_NUMBER);
    CHECK(parse("Rating: [[nan]]", &v) == JUDGE_E_NUMBER);
    CHECK(parse("Rating: [[inf]]", &v) == JUDGE_E_NUMBER);
    CHECK(parse("Rating: [[0x10]]", &v) == JUDGE_E_NUMBER);
    CHECK(parse("Rating: [[]]", &v) == JUDGE_E_NUMBER);
    CHECK(parse("Rating: [[11]]", &v) == JUDGE_E_RANGE);
    CHECK(parse("Rating: [[0]]", &v) == JUDGE_E_RANGE);
    CHECK(parse("Rating: [[-3]]", &v) == JUDGE_E_RANGE);
    CHECK(v == 42); /* untouched on failure */
}

static void test_embedded_nul(void)
{
    judge_parse_params p;
    judge_parse_default_params(&p);
    const char s[] = "x\0y [[6]]";
    double v = 0;
    char err[64];
    CHECK(judge_parse_score(&p, s, sizeof s - 1, &v, err, sizeof err) == JUDGE_OK && v == 6);
    /* a tiny error buffer is still terminated */
    char tiny[4];
    CHECK(judge_parse_score(&p, "no", 2, &v, tiny, sizeof tiny) == JUDGE_E_NOSCORE);
    CHECK(strlen(tiny) == 3);
}

static void test_json(void)
{
    judge_parse_params p;
    judge_parse_default_params(&p);
    p.mode = JUDGE_PARSE_JSON;
    double v = 0;
    char err[128];
    const char *a = "Reasoning... ```json\n{\"score\": 4, \"why\": \"ok\"}\n```";
    CHECK(judge_parse_score(&p, a, strlen(a), &v, err, sizeof err) == JUDGE_OK && v == 4);
    const char *b = "{\"score\": \"9\"}";
    CHECK(judge_parse_score(&p, b, strlen(b), &v, err, sizeof err) == JUDGE_OK && v == 9);
    const char *c = "{\"score\": 99}";
    CHECK(judge_parse_score(&p, c, strlen(c), &v, err, sizeof err) == JUDGE_E_RANGE);
    const char *d = "{\"rating\": 3}";
    CHECK(judge_parse_score(&p, d, strlen(d), &v, err, sizeof err) == JUDGE_E_NOSCORE);
    const char *e = "{\"score\": true}";
    CHECK(judge_parse_score(&p, e, strlen(e), &v, err, sizeof err) == JUDGE_E_NUMBER);
    const char *f = "{{{{ not json";
    CHECK(judge_parse_score(&p, f, strlen(f), &v, err, sizeof err) == JUDGE_E_NOSCORE);
}

static void test_verdicts(void)
{
    char err[64];
    CHECK(judge_parse_verdict("so [[A]]", 8, err, sizeof err) == 'A');
    CHECK(judge_parse_verdict("[[A]] vs [[b]]", 14, err, sizeof err) == 'B');
    CHECK(judge_parse_verdict("[[C]]", 5, err, sizeof err) == 'T');
    CHECK(judge_parse_verdict("[[tie]]", 7, err, sizeof err) == 'T');
    CHECK(judge_parse_verdict("[[D]]", 5, err, sizeof err) == 0);
    CHECK(judge_parse_verdict("A is better", 11, err, sizeof err) == 0);
}

/* Every prefix of a few answers: no crash, no read past n (ASan checks). */
static void test_prefixes(void)
{
    const char *texts[] = {"Rating: [[7]]", "[[1/2]]", "{\"score\": 3}", "[[[[]]]]"};
    judge_parse_params p;
    judge_parse_default_params(&p);
    for (int m = 0; m < 2; m++) {
        p.mode = m;
        for (size_t t = 0; t < sizeof texts / sizeof *texts; t++) {
            size_t n = strlen(texts[t]);
            for (size_t k = 0; k <= n; k++) {
                char *copy = malloc(k ? k : 1);
                memcpy(copy, texts[t], k);
                double v;
                char err[64];
                judge_parse_score(&p, copy, k, &v, err, sizeof err);
                judge_parse_verdict(copy, k, err, sizeof err);
                free(copy);
            }
        }
    }
    CHECK(1);
}

/* Random texts built from the parser's interesting bytes: the results stay in
 * their contracts (ASan/UBSan check the memory side). */
static void test_random(void)
{
    static const char alphabet[] = "[[]]{}\"score\":0123456789./-+e ntaAB\n\0";
    unsigned long long x = 0x9e3779b97f4a7c15ull;
    judge_parse_params p;
    judge_parse_default_params(&p);
    int bad = 0;
    for (int iter = 0; iter < 200000; iter++) {
        char buf[48];
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t n = (size_t)(x % sizeof buf);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[i] = alphabet[x % (sizeof alphabet - 1)];
        }
        p.mode = iter & 1;
        double v = -1;
        char err[64];
        int rc = judge_parse_score(&p, buf, n, &v, err, sizeof err);
        if (rc == JUDGE_OK && !(v >= p.lo && v <= p.hi))
            bad++;
        if (rc != JUDGE_OK && (rc < JUDGE_E_RANGE || !err[0]))
            bad++;
        int vd = judge_parse_verdict(buf, n, err, sizeof err);
        if (vd && vd != 'A' && vd != 'B' && vd != 'T')
            bad++;
    }
    CHECK(bad == 0);
}

int main(void)
{
    RUN(test_random);
    RUN(test_brackets);
    RUN(test_failures);
    RUN(test_embedded_nul);
    RUN(test_json);
    RUN(test_verdicts);
    RUN(test_prefixes);
    return tap_done();
}

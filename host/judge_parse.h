/* judge_parse.h — reading a score out of a judge model's free text.
 *
 * Plain C, a pure function of its input bytes (no allocation that outlives a call,
 * no globals), so it can be fuzzed directly. Lua patterns are applied Lua-side. */
#ifndef RLHOST_JUDGE_PARSE_H
#define RLHOST_JUDGE_PARSE_H

#include <stddef.h>

enum {
    JUDGE_PARSE_BRACKETS = 0, /* the last [[n]] in the text (n may be "7", "7.5", "7/10") */
    JUDGE_PARSE_JSON = 1,     /* field `field` of the last JSON object in the text */
};

enum {
    JUDGE_OK = 0,
    JUDGE_E_NOSCORE = -1, /* nothing that looks like a score */
    JUDGE_E_NUMBER = -2,  /* a score marker whose content is not a finite number */
    JUDGE_E_RANGE = -3,   /* a number outside [lo, hi] */
};

typedef struct judge_parse_params {
    int mode;          /* JUDGE_PARSE_BRACKETS or JUDGE_PARSE_JSON */
    const char *field; /* JSON mode: the member holding the score (NUL-terminated) */
    double lo, hi;     /* the rubric's scale; scores outside it are JUDGE_E_RANGE */
} judge_parse_params;

void judge_parse_default_params(judge_parse_params *p);

/* Read a score from s[0..n) (need not be NUL-terminated; may contain NULs). On
 * JUDGE_OK *score is the raw score on the rubric's scale (not normalised). On error
 * err holds a short reason (never more than errlen-1 bytes, always terminated). */
int judge_parse_score(const judge_parse_params *p, const char *s, size_t n, double *score,
                      char *err, size_t errlen);

/* Pairwise verdicts: the last [[A]], [[B]] or [[tie]] (case-insensitive; "C" and
 * "=" also mean tie). Returns 'A', 'B', 'T', or 0 with err filled. */
int judge_parse_verdict(const char *s, size_t n, char *err, size_t errlen);

#endif

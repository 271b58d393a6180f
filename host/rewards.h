/* rewards.h — native reward functions over a completion's text. Plain C; each is a
 * pure function returning a reward in [0, 1] (regex: a compiled pattern handle). */
#ifndef RLHOST_REWARDS_H
#define RLHOST_REWARDS_H

#include <regex.h>
#include <stddef.h>

/* Text comparison options (bit flags). */
#define RW_CASEFOLD 1 /* compare ASCII letters case-insensitively */
#define RW_SPACE 2    /* trim both ends and collapse runs of whitespace to one space */

/* 1 if text equals expected under flags, else 0. */
double rewards_exact(const char *text, size_t n, const char *expected, size_t m, int flags);

/* How many of the k needles occur in text (flags: RW_CASEFOLD). */
int rewards_contains_count(const char *text, size_t n, const char *const *needles,
                           const size_t *lens, int k, int flags);

typedef struct rewards_regex {
    regex_t re;
    int ok; /* compiled (rewards_regex_free frees only then) */
} rewards_regex;

/* Compile a POSIX extended regular expression (flags: RW_CASEFOLD). 0 ok, negative
 * with err filled. */
int rewards_regex_compile(rewards_regex *r, const char *pattern, int flags, char *err,
                          size_t errlen);
/* 1 if the pattern matches anywhere in text (text must be NUL-terminated; bytes
 * after an embedded NUL are not seen), else 0. */
int rewards_regex_match(const rewards_regex *r, const char *text);
void rewards_regex_free(rewards_regex *r);

enum { RW_LINEAR = 0, RW_QUADRATIC, RW_GAUSSIAN, RW_STEP };
enum { RW_BOTH = 0, RW_MAX, RW_MIN };

typedef struct rewards_length_params {
    double target;    /* the wanted length */
    double tolerance; /* distance from target that still earns 1 */
    double scale;     /* distance beyond tolerance over which the reward falls (> 0) */
    int shape;        /* RW_LINEAR: 1 - x; RW_QUADRATIC: 1 - x^2; RW_GAUSSIAN: exp(-x^2/2);
                         RW_STEP: 0 beyond tolerance (x = excess distance / scale) */
    int side;         /* RW_BOTH: penalise both sides; RW_MAX: only longer than target;
                         RW_MIN: only shorter */
} rewards_length_params;

void rewards_length_default_params(rewards_length_params *p);
/* Reward in [0, 1] for a length (characters, words or tokens: the caller's unit). */
double rewards_length(double len, const rewards_length_params *p);

/* Characters (UTF-8 code points) and whitespace-separated words in text. */
size_t rewards_count_chars(const char *text, size_t n);
size_t rewards_count_words(const char *text, size_t n);

/* 1 if text (trimmed, and unwrapped from a ``` fence if it is one) is valid JSON and,
 * when k > 0, an object with every required key; else 0 with why filled. */
double rewards_json(const char *text, size_t n, const char *const *required, int k, char *why,
                    size_t whylen);

#endif

/* tap.h — a minimal TAP producer for the C unit tests (tests/run counts the lines).
 *
 *   static void test_x(void) { CHECK(1 + 1 == 2); CHECK_STR(a, "b"); }
 *   int main(void) { RUN(test_x); return tap_done(); }
 *
 * A test fails if any CHECK in it fails; each failed CHECK prints a diagnostic. */
#ifndef RLHOST_TAP_H
#define RLHOST_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed_tests, tap_cur_failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            tap_cur_failed = 1;                                                       \
            printf("# %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);         \
        }                                                                             \
    } while (0)

#define CHECK_STR(a, b)                                                               \
    do {                                                                              \
        const char *a_ = (a), *b_ = (b);                                              \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                      \
            tap_cur_failed = 1;                                                       \
            printf("# %s:%d: '%s' != '%s'\n", __FILE__, __LINE__, a_ ? a_ : "(null)", \
                   b_ ? b_ : "(null)");                                               \
        }                                                                             \
    } while (0)

#define RUN(fn)                                                                       \
    do {                                                                              \
        tap_cur_failed = 0;                                                           \
        fn();                                                                         \
        tap_n++;                                                                      \
        if (tap_cur_failed)                                                           \
            tap_failed_tests++;                                                       \
        printf("%s %d - %s\n", tap_cur_failed ? "not ok" : "ok", tap_n, #fn);         \
        fflush(stdout);                                                               \
    } while (0)

#define SKIP(fn, why)                                                                 \
    do {                                                                              \
        tap_n++;                                                                      \
        printf("ok %d - %s # SKIP %s\n", tap_n, #fn, why);                            \
    } while (0)

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed_tests ? 1 : 0;
}

#endif

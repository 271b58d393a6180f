/* libFuzzer target for host/judge_parse.c (the judge's score parser reads text a
 * remote model wrote). Build and run:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ihost tests/fuzz/fuzz_judge_parse.c \
 *         host/judge_parse.c $(pkg-config --cflags --libs libcjson) -o build/fuzz_judge_parse
 *   build/fuzz_judge_parse -max_total_time=60 -dict=tests/fuzz/judge_parse.dict (or: make fuzz)
 * The first input byte picks the mode and scale so both parsers and odd scales are hit. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "judge_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    judge_parse_params p;
    judge_parse_default_params(&p);
    p.mode = data[0] & 1;
    p.lo = (data[0] >> 1) & 3;
    p.hi = p.lo + 1 + ((data[0] >> 3) & 15);
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    double v = NAN;
    char err[64];
    int rc = judge_parse_score(&p, s, n, &v, err, sizeof err);
    if (rc == JUDGE_OK && !(v >= p.lo && v <= p.hi))
        abort(); /* contract: a score is always on the scale */
    if (rc != JUDGE_OK && (rc < JUDGE_E_RANGE || err[0] == '\0'))
        abort(); /* contract: failures are typed and explained */
    int vd = judge_parse_verdict(s, n, err, sizeof err);
    if (vd && vd != 'A' && vd != 'B' && vd != 'T')
        abort();
    return 0;
}

/* fuzz_lines.c — libFuzzer target for the worker's line reader (lines_* in proc.c).
 * The input is fed in pieces whose sizes come from the input itself; the lines that
 * come out must equal a plain split of the whole input at '\n', each cut to `max`
 * bytes and flagged LINES_LONG exactly when it was longer. A whole line comes out
 * only once its newline has arrived; an overlong one may come out as soon as more
 * than `max` of its bytes have (the reader then drops the rest of it). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max = 1 + data[0] % 64;
    unsigned piece_seed = data[1];
    const char *s = (const char *)data + 2;
    size_t n = size - 2;

    lines lb;
    lines_init(&lb, max);
    size_t off = 0, expect_at = 0; /* expect_at: start of the next expected line in s */
    while (off < n) {
        size_t piece = 1 + (piece_seed = piece_seed * 37 + 11) % 17;
        if (piece > n - off)
            piece = n - off;
        if (lines_feed(&lb, s + off, piece) != 0)
            abort();
        off += piece;
        const char *line;
        size_t len;
        int r;
        while ((r = lines_next(&lb, &line, &len)) != LINES_NONE) {
            const char *nl = memchr(s + expect_at, '\n', n - expect_at);
            size_t full = nl ? (size_t)(nl - (s + expect_at)) : n - expect_at;
            size_t want = full > max ? max : full;
            if (r == LINES_LINE && (!nl || (size_t)(nl - s) >= off))
                abort(); /* a whole line came out before its newline arrived */
            if ((r == LINES_LONG) != (full > max) || len != want ||
                memcmp(line, s + expect_at, want) != 0)
                abort();
            expect_at = nl ? (size_t)(nl - s) + 1 : n;
        }
    }
    /* every complete line was returned; what remains is the partial last line */
    if (memchr(s + expect_at, '\n', n - expect_at))
        abort();
    lines_free(&lb);
    return 0;
}

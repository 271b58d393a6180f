/* scrub.h — remove a secret (an API key) from text that a server sent back, in
 * whatever encoding it echoed it.
 *
 * Plain C. A copy of the secret is replaced by "***" where it appears as it is, and
 * where the text decodes to it through up to three nested layers of the escapes that
 * servers and serializers write, freely mixed within one copy: JSON (\uXXXX with
 * surrogate pairs, \n, \/ ...), C and Python (\xXX, \UXXXXXXXX), percent (%XX) and
 * HTML numeric (&#NN; &#xNN;) escapes. Its base64 forms (standard and URL-safe, at
 * any alignment) are replaced too when the secret is long enough for them to be
 * recognisable (6 bytes or more). Everything around a copy is left byte for byte, so
 * a JSON document stays valid JSON and decodes to text without the secret.
 *
 * Not covered: a secret cut into pieces that are stored apart (each piece is not the
 * secret); callers scrub again after joining texts (rl.endpoint does). */
#ifndef RLHOST_SCRUB_H
#define RLHOST_SCRUB_H

#include <stddef.h>

/* Scrub s[0..*len) in place; s must have room for *len + 1 bytes. The text never
 * grows: *len becomes the new length and s[*len] is '\0'. secret NULL or "" leaves
 * s alone. Returns 0 when no copy was found, a positive count when copies were
 * replaced (a copy seen in several encodings counts more than once), or -1 when out
 * of memory, in which case the whole text became "***" (losing text is safe, leaking
 * the secret is not). */
int scrub_secret(char *s, size_t *len, const char *secret);

/* The same for a NUL-terminated string. */
int scrub_secret_str(char *s, const char *secret);

#endif

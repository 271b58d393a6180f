/* sha256.h — SHA-256 (FIPS 180-4): checkpoint manifests hash files with it and the
 * score cache hashes its keys with it. Plain C, no dependency (no OpenSSL). */
#ifndef RLHOST_SHA256_H
#define RLHOST_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256_ctx {
    uint32_t h[8];         /* chaining state */
    uint64_t bytes;        /* message length so far */
    unsigned char buf[64]; /* partial block */
    size_t fill;           /* bytes in buf */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
/* Finish; write the digest as 64 lowercase hex digits plus NUL into hex[65]. */
void sha256_final_hex(sha256_ctx *c, char hex[65]);
/* One-shot digest of data[0..n) as hex. */
void sha256_hex(const void *data, size_t n, char hex[65]);

#endif

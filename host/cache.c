/* cache.c — see cache.h. */
#include "cache.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cache {
    sqlite3 *db;
    sqlite3_stmt *get, *put;
};

void cache_default_params(cache_params *p)
{
    p->busy_ms = 10000;
    p->readonly = 0;
}

static int db_err(cache *c, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", what, c && c->db ? sqlite3_errmsg(c->db) : "no database");
    return -1;
}

int cache_open(const cache_params *p, const char *path, cache **out, char *err, size_t errlen)
{
    *out = NULL;
    cache *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int flags = p->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path, &c->db, flags | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open the score cache %s: %s", path,
                 c->db ? sqlite3_errmsg(c->db) : "out of memory");
        cache_close(c);
        return -1;
    }
    sqlite3_busy_timeout(c->db, p->busy_ms);
    /* WAL lets a second run read while this one writes; NORMAL sync is durable
     * against process death (the WAL is in the OS page cache once write() returns). */
    const char *setup = p->readonly ? "PRAGMA query_only=1;"
                                    : "PRAGMA journal_mode=WAL;"
                                      "PRAGMA synchronous=NORMAL;"
                                      "CREATE TABLE IF NOT EXISTS scores("
                                      " key TEXT PRIMARY KEY, reward REAL NOT NULL,"
                                      " raw TEXT, meta TEXT, created REAL);";
    char *msg = NULL;
    if (sqlite3_exec(c->db, setup, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "cannot set up the score cache %s: %s", path,
                 msg ? msg : "unknown error");
        sqlite3_free(msg);
        cache_close(c);
        return -1;
    }
    if (sqlite3_prepare_v2(c->db, "SELECT reward, raw, meta FROM scores WHERE key = ?1", -1,
                           &c->get, NULL) != SQLITE_OK) {
        db_err(c, "cache: prepare", err, errlen);
        cache_close(c);
        return -1;
    }
    if (!p->readonly &&
        sqlite3_prepare_v2(c->db,
                           "INSERT OR REPLACE INTO scores(key, reward, raw, meta, created)"
                           " VALUES(?1, ?2, ?3, ?4, strftime('%s','now'))",
                           -1, &c->put, NULL) != SQLITE_OK) {
        db_err(c, "cache: prepare", err, errlen);
        cache_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

void cache_close(cache *c)
{
    if (!c)
        return;
    sqlite3_finalize(c->get);
    sqlite3_finalize(c->put);
    sqlite3_close(c->db);
    free(c);
}

int cache_get(cache *c, const char *key, cache_entry *e, char *err, size_t errlen)
{
    memset(e, 0, sizeof *e);
    sqlite3_reset(c->get);
    sqlite3_clear_bindings(c->get);
    /* TRANSIENT: the statement stays un-reset after a hit (its row is what e points
     * into), so it must not keep borrowing the caller's key. */
    sqlite3_bind_text(c->get, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(c->get);
    if (rc == SQLITE_ROW) {
        e->found = 1;
        e->reward = sqlite3_column_double(c->get, 0);
        if (sqlite3_column_type(c->get, 1) != SQLITE_NULL)
            e->raw = (const char *)sqlite3_column_text(c->get, 1);
        if (sqlite3_column_type(c->get, 2) != SQLITE_NULL)
            e->meta = (const char *)sqlite3_column_text(c->get, 2);
        return 0;
    }
    if (rc == SQLITE_DONE) {
        sqlite3_reset(c->get);
        return 0;
    }
    rc = db_err(c, "cache: lookup", err, errlen);
    sqlite3_reset(c->get);
    return rc;
}

int cache_put_many(cache *c, size_t n, const char *const *keys, const double *rewards,
                   const char *const *raws, const char *const *metas, char *err,
                   size_t errlen)
{
    if (!c->put) {
        snprintf(err, errlen, "cache: opened read-only");
        return -1;
    }
    if (n == 0)
        return 0;
    sqlite3_reset(c->get); /* a pending read would hold the WAL snapshot open */
    /* IMMEDIATE takes the write lock up front, so the busy timeout covers the wait
     * instead of a deadlock-prone lock upgrade half-way. */
    if (sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return db_err(c, "cache: begin", err, errlen);
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(c->put);
        sqlite3_bind_text(c->put, 1, keys[i], -1, SQLITE_STATIC);
        sqlite3_bind_double(c->put, 2, rewards[i]);
        if (raws && raws[i])
            sqlite3_bind_text(c->put, 3, raws[i], -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(c->put, 3);
        if (metas && metas[i])
            sqlite3_bind_text(c->put, 4, metas[i], -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(c->put, 4);
        if (sqlite3_step(c->put) != SQLITE_DONE) {
            db_err(c, "cache: insert", err, errlen);
            sqlite3_reset(c->put);
            sqlite3_clear_bindings(c->put);
            sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
    }
    sqlite3_reset(c->put);
    sqlite3_clear_bindings(c->put);
    if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        db_err(c, "cache: commit", err, errlen);
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    return 0;
}

long long cache_count(cache *c)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->db, "SELECT count(*) FROM scores", -1, &st, NULL) != SQLITE_OK)
        return -1;
    long long v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    return v;
}

/* ---- SHA-256 (FIPS 180-4); keys must not collide, so no short hash ---- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void cache_sha256_hex(const void *data, size_t n, char out[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = data;
    size_t left = n;
    while (left >= 64) {
        sha_block(h, p);
        p += 64;
        left -= 64;
    }
    unsigned char tail[128] = {0};
    memcpy(tail, p, left);
    tail[left] = 0x80;
    size_t tl = left + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha_block(h, tail);
    if (tl == 128)
        sha_block(h, tail + 64);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) {
            unsigned char byte = (unsigned char)(h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = hex[byte >> 4];
            out[8 * i + 2 * j + 1] = hex[byte & 15];
        }
    out[64] = '\0';
}

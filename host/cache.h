/* cache.h — a persistent score cache in SQLite.
 *
 * Plain C. WAL journal and synchronous=NORMAL: a committed entry survives the host
 * being killed at any instant (only a power loss can drop the last transactions),
 * and an uncommitted one simply is not there. Several processes may share one file:
 * writers wait up to busy_ms for each other. */
#ifndef RLHOST_CACHE_H
#define RLHOST_CACHE_H

#include <stddef.h>

typedef struct cache cache;

typedef struct cache_params {
    int busy_ms;  /* how long a writer waits for another process's lock */
    int readonly; /* open without creating or writing */
} cache_params;

typedef struct cache_entry {
    int found;     /* 1 if the key was present */
    double reward; /* the stored reward */
    const char *raw;  /* stored raw text (NULL if none); borrowed, see cache_get */
    const char *meta; /* stored metadata JSON (NULL if none); borrowed */
} cache_entry;

void cache_default_params(cache_params *p);

/* Open (creating if needed) the cache at path. 0 on success with *out set; negative
 * with err filled otherwise. */
int cache_open(const cache_params *p, const char *path, cache **out, char *err, size_t errlen);
void cache_close(cache *c);

/* Look a key up. 0 with e->found set (0 or 1); negative on a database error.
 * e->raw and e->meta point into SQLite's memory and stay valid until the next call
 * on this cache: nothing for the caller to free, so a binding may raise while
 * copying them without leaking. */
int cache_get(cache *c, const char *key, cache_entry *e, char *err, size_t errlen);

/* Store n entries in one transaction (all or none). raws/metas entries may be NULL. */
int cache_put_many(cache *c, size_t n, const char *const *keys, const double *rewards,
                   const char *const *raws, const char *const *metas, char *err,
                   size_t errlen);

/* Entries stored (for tests and stats); negative on error. */
long long cache_count(cache *c);

/* SHA-256 of data as 64 lowercase hex digits plus NUL. */
void cache_sha256_hex(const void *data, size_t n, char out[65]);

#endif

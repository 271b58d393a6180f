/* cache.c — see cache.h. */
#include "cache.h"
#include "sha256.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    /* Two runs opening a new cache at once race to switch it to WAL, and SQLite
     * answers that race with SQLITE_BUSY without calling the busy handler (a lock
     * upgrade it cannot wait for), so the setup is retried here within busy_ms. */
    char *msg = NULL;
    int rc;
    for (int waited = 0;; waited += 10) {
        rc = sqlite3_exec(c->db, setup, NULL, NULL, &msg);
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || waited >= p->busy_ms)
            break;
        sqlite3_free(msg);
        msg = NULL;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (rc != SQLITE_OK) {
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

void cache_sha256_hex(const void *data, size_t n, char out[65])
{
    sha256_hex(data, n, out); /* keys must not collide, so no short hash */
}

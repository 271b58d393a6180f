/* Unit tests for host/cache.c: SHA-256 vectors, put/get, reopen, read-only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "tap.h"

static void test_sha256(void)
{
    char h[65];
    cache_sha256_hex("", 0, h);
    CHECK_STR(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    cache_sha256_hex("abc", 3, h);
    CHECK_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56 bytes */
    cache_sha256_hex(m, strlen(m), h);
    CHECK_STR(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char big[1000];
    memset(big, 'a', sizeof big);
    cache_sha256_hex(big, sizeof big, h);
    CHECK_STR(h, "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

static void test_roundtrip(void)
{
    char path[] = "/tmp/rlhost-cache-test-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    unlink(path);
    cache_params p;
    cache_default_params(&p);
    cache *c;
    char err[256];
    CHECK(cache_open(&p, path, &c, err, sizeof err) == 0);
    const char *keys[] = {"k1", "k2"};
    double rw[] = {0.25, 1.0};
    const char *raws[] = {"Rating: [[3]]", NULL};
    CHECK(cache_put_many(c, 2, keys, rw, raws, NULL, err, sizeof err) == 0);
    cache_entry e;
    CHECK(cache_get(c, "k1", &e, err, sizeof err) == 0 && e.found && e.reward == 0.25);
    CHECK_STR(e.raw, "Rating: [[3]]");
    CHECK(e.meta == NULL);
    CHECK(cache_get(c, "nope", &e, err, sizeof err) == 0 && !e.found);
    CHECK(cache_count(c) == 2);
    cache_close(c);
    /* survives a reopen; read-only handles refuse writes */
    p.readonly = 1;
    CHECK(cache_open(&p, path, &c, err, sizeof err) == 0);
    CHECK(cache_get(c, "k2", &e, err, sizeof err) == 0 && e.found && e.reward == 1.0 && !e.raw);
    CHECK(cache_put_many(c, 1, keys, rw, NULL, NULL, err, sizeof err) < 0);
    cache_close(c);
    char side[300];
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

static void test_bad_path(void)
{
    cache_params p;
    cache_default_params(&p);
    cache *c = (cache *)1;
    char err[256];
    CHECK(cache_open(&p, "/nonexistent-dir/x/y.sqlite", &c, err, sizeof err) < 0);
    CHECK(c == NULL);
    CHECK(strstr(err, "/nonexistent-dir") != NULL);
}

int main(void)
{
    RUN(test_sha256);
    RUN(test_roundtrip);
    RUN(test_bad_path);
    return tap_done();
}

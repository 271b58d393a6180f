/* test_fs.c — host/fs.c: SHA-256 against FIPS 180-4 vectors, atomic writes,
 * directories made, synced, renamed, listed and removed, in a temp directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "sha256.h"
#include "tap.h"

static char root[256];

static void sha_of(const char *s, size_t n, char hex[65])
{
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, s, n);
    sha256_final_hex(&c, hex);
}

static void test_sha256_vectors(void)
{
    char hex[65];
    sha_of("", 0, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha_of("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha_of(two, strlen(two), hex);
    CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* one million 'a', fed in uneven pieces to exercise the partial-block path */
    sha256_ctx c;
    sha256_init(&c);
    char a[997];
    memset(a, 'a', sizeof a);
    size_t left = 1000000;
    while (left) {
        size_t k = left < 997 ? left : (left % 7) + 60;
        sha256_update(&c, a, k);
        left -= k;
    }
    sha256_final_hex(&c, hex);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    /* lengths around the 55/56/64-byte padding boundaries agree with one-shot */
    for (size_t n = 50; n < 70; n++) {
        char h1[65], h2[65];
        sha_of(a, n, h1);
        sha256_init(&c);
        for (size_t i = 0; i < n; i++)
            sha256_update(&c, a + i, 1);
        sha256_final_hex(&c, h2);
        CHECK_STR(h1, h2);
    }
}

static void test_sha256_file(void)
{
    char p[512], hex[65], err[256];
    snprintf(p, sizeof p, "%s/abc.txt", root);
    CHECK(fs_write_atomic(p, "abc", 3, 0644, err, sizeof err) == 0);
    uint64_t size = 0;
    CHECK(fs_sha256_file(p, hex, &size, err, sizeof err) == 0);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(size == 3);
    snprintf(p, sizeof p, "%s/missing", root);
    CHECK(fs_sha256_file(p, hex, &size, err, sizeof err) == -1);
    CHECK(strstr(err, "missing") != NULL);
}

static void test_write_atomic(void)
{
    char p[512], err[256], buf[64];
    snprintf(p, sizeof p, "%s/a.json", root);
    CHECK(fs_write_atomic(p, "old", 3, 0600, err, sizeof err) == 0);
    CHECK(fs_write_atomic(p, "new!", 4, 0644, err, sizeof err) == 0);
    FILE *f = fopen(p, "rb");
    CHECK(f != NULL);
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    CHECK(n == 4 && memcmp(buf, "new!", 4) == 0);
    struct stat st;
    CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0644);
    /* no temporary file is left beside it */
    char **names;
    size_t count;
    CHECK(fs_list_dir(root, &names, &count, err, sizeof err) == 0);
    for (size_t i = 0; i < count; i++)
        CHECK(strstr(names[i], ".tmp-") == NULL);
    fs_list_free(names, count);
    /* a directory that does not exist is an error naming the path */
    snprintf(p, sizeof p, "%s/no/such/dir/x", root);
    CHECK(fs_write_atomic(p, "x", 1, 0644, err, sizeof err) == -1);
    CHECK(strstr(err, "no/such/dir") != NULL);
}

static void test_mkdir_list_remove(void)
{
    char p[512], q[512], err[256];
    snprintf(p, sizeof p, "%s/tree/b/c", root);
    CHECK(fs_mkdir_p(p, err, sizeof err) == 0);
    CHECK(fs_mkdir_p(p, err, sizeof err) == 0); /* existing is fine */
    snprintf(q, sizeof q, "%s/tree/b/c/f", root);
    CHECK(fs_write_atomic(q, "x", 1, 0644, err, sizeof err) == 0);
    CHECK(fs_mkdir_p(q, err, sizeof err) == -1); /* a file in the way */
    snprintf(q, sizeof q, "%s/tree/z", root);
    CHECK(fs_write_atomic(q, "z", 1, 0644, err, sizeof err) == 0);
    snprintf(q, sizeof q, "%s/tree/a", root);
    CHECK(fs_mkdir_p(q, err, sizeof err) == 0);
    /* a symlink to outside the tree: removal must not follow it */
    char outside[512], link[512];
    snprintf(outside, sizeof outside, "%s/keep", root);
    CHECK(fs_write_atomic(outside, "k", 1, 0644, err, sizeof err) == 0);
    snprintf(link, sizeof link, "%s/tree/b/link", root);
    CHECK(symlink(outside, link) == 0);

    char **names;
    size_t count;
    snprintf(p, sizeof p, "%s/tree", root);
    CHECK(fs_list_dir(p, &names, &count, err, sizeof err) == 0);
    CHECK(count == 3);
    if (count == 3) {
        CHECK_STR(names[0], "a");
        CHECK_STR(names[1], "b");
        CHECK_STR(names[2], "z");
    }
    fs_list_free(names, count);

    CHECK(fs_fsync_tree(p, err, sizeof err) == 0);
    fs_info st;
    CHECK(fs_stat(link, &st, err, sizeof err) == 0 && st.kind == FS_LINK);
    CHECK(fs_remove_tree(p, err, sizeof err) == 0);
    CHECK(fs_stat(p, &st, err, sizeof err) == 0 && st.kind == FS_NONE);
    CHECK(fs_stat(outside, &st, err, sizeof err) == 0 && st.kind == FS_FILE && st.size == 1);
    CHECK(fs_remove_tree(p, err, sizeof err) == 0); /* already gone: fine */
}

static void test_rename_durable(void)
{
    char a[512], b[512], f[600], err[256];
    snprintf(a, sizeof a, "%s/.tmp-ckpt-1", root);
    snprintf(b, sizeof b, "%s/ckpt-1", root);
    CHECK(fs_mkdir_p(a, err, sizeof err) == 0);
    snprintf(f, sizeof f, "%s/m", a);
    CHECK(fs_write_atomic(f, "m", 1, 0644, err, sizeof err) == 0);
    CHECK(fs_rename_durable(a, b, err, sizeof err) == 0);
    fs_info st;
    snprintf(f, sizeof f, "%s/m", b);
    CHECK(fs_stat(f, &st, err, sizeof err) == 0 && st.kind == FS_FILE);
    CHECK(fs_stat(a, &st, err, sizeof err) == 0 && st.kind == FS_NONE);
    /* renaming onto a non-empty directory fails and says so */
    CHECK(fs_mkdir_p(a, err, sizeof err) == 0);
    snprintf(f, sizeof f, "%s/n", a);
    CHECK(fs_write_atomic(f, "n", 1, 0644, err, sizeof err) == 0);
    CHECK(fs_rename_durable(a, b, err, sizeof err) == -1);
    CHECK(strstr(err, "ckpt-1") != NULL);
    /* a lock is exclusive until released */
    char lk[512];
    int fd1 = -1, fd2 = -1;
    snprintf(lk, sizeof lk, "%s/.lock", root);
    CHECK(fs_lock(lk, &fd1, err, sizeof err) == 0 && fd1 >= 0);
    CHECK(fs_lock(lk, &fd2, err, sizeof err) == 1 && fd2 == -1);
    close(fd1);
    CHECK(fs_lock(lk, &fd2, err, sizeof err) == 0 && fd2 >= 0);
    close(fd2);
    uint64_t freeb = 0;
    CHECK(fs_free_space(root, &freeb, err, sizeof err) == 0 && freeb > 0);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/test_fs.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_sha256_vectors);
    RUN(test_sha256_file);
    RUN(test_write_atomic);
    RUN(test_mkdir_list_remove);
    RUN(test_rename_durable);
    char err[256];
    fs_remove_tree(root, err, sizeof err);
    return tap_done();
}

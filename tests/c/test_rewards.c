/* Unit tests for host/rewards.c and the quick paths of host/sandbox.c. */
#include <math.h>
#include <string.h>

#include "rewards.h"
#include "sandbox.h"
#include "tap.h"

static void test_exact(void)
{
    CHECK(rewards_exact("42", 2, "42", 2, 0) == 1);
    CHECK(rewards_exact(" 42\n", 4, "42", 2, 0) == 0);
    CHECK(rewards_exact(" 42\n", 4, "42", 2, RW_SPACE) == 1);
    CHECK(rewards_exact("Hello  World", 12, "hello world", 11, RW_SPACE | RW_CASEFOLD) == 1);
    CHECK(rewards_exact("Hello World", 11, "hello world", 11, RW_SPACE) == 0);
    CHECK(rewards_exact("", 0, "", 0, 0) == 1);
}

static void test_contains_regex(void)
{
    const char *nd[] = {"cat", "DOG"};
    size_t ln[] = {3, 3};
    CHECK(rewards_contains_count("a cat and a dog", 15, nd, ln, 2, 0) == 1);
    CHECK(rewards_contains_count("a cat and a dog", 15, nd, ln, 2, RW_CASEFOLD) == 2);
    rewards_regex r;
    char err[128];
    CHECK(rewards_regex_compile(&r, "^answer: [0-9]+$", 0, err, sizeof err) == 0);
    CHECK(rewards_regex_match(&r, "answer: 12"));
    CHECK(!rewards_regex_match(&r, "answer: x"));
    rewards_regex_free(&r);
    CHECK(rewards_regex_compile(&r, "(unclosed", 0, err, sizeof err) < 0 && err[0]);
    rewards_regex_free(&r);
}

static void test_length(void)
{
    rewards_length_params p;
    rewards_length_default_params(&p);
    p.target = 100;
    p.scale = 50;
    CHECK(rewards_length(100, &p) == 1);
    CHECK(fabs(rewards_length(125, &p) - 0.5) < 1e-12);
    CHECK(rewards_length(300, &p) == 0);
    p.side = RW_MAX;
    CHECK(rewards_length(10, &p) == 1);
    p.shape = RW_GAUSSIAN;
    CHECK(fabs(rewards_length(150, &p) - exp(-0.5)) < 1e-12);
    p.shape = RW_STEP;
    p.tolerance = 5;
    CHECK(rewards_length(104, &p) == 1 && rewards_length(106, &p) == 0);
    CHECK(rewards_count_words("  two words\n", 12) == 2);
    CHECK(rewards_count_chars("h\xc3\xa9", 3) == 2);
}

static void test_json(void)
{
    char why[128];
    const char *req[] = {"a", "b"};
    CHECK(rewards_json("{\"a\":1,\"b\":2}", 13, req, 2, why, sizeof why) == 1);
    CHECK(rewards_json("{\"a\":1}", 7, req, 2, why, sizeof why) == 0 && strstr(why, "'b'"));
    CHECK(rewards_json("```json\n[1,2]\n```", 17, NULL, 0, why, sizeof why) == 1);
    CHECK(rewards_json("[1,2]", 5, req, 1, why, sizeof why) == 0);
    CHECK(rewards_json("{bad", 4, NULL, 0, why, sizeof why) == 0);
    CHECK(rewards_json("{} trailing", 11, NULL, 0, why, sizeof why) == 0);
}

static void test_sandbox_quick(void)
{
    sandbox_params p;
    sandbox_default_params(&p);
    p.wall_s = 1;
    sandbox_result r;
    char err[256];
    const char *ok[] = {"sh", "-c", "cat main.txt; echo err >&2", NULL};
    sandbox_file f = {"main.txt", "hello\n", 6};
    CHECK(sandbox_run(&p, ok, &f, 1, NULL, 0, &r, err, sizeof err) == 0);
    CHECK(r.reason == SB_OK);
    CHECK_STR(r.out, "hello\n");
    CHECK_STR(r.err, "err\n");
    sandbox_result_free(&r);
    const char *in[] = {"sh", "-c", "read x; exit $x", NULL};
    CHECK(sandbox_run(&p, in, NULL, 0, "3\n", 2, &r, err, sizeof err) == 0);
    CHECK(r.reason == SB_EXIT && r.exit_code == 3);
    sandbox_result_free(&r);
    const char *slow[] = {"sleep", "10", NULL};
    CHECK(sandbox_run(&p, slow, NULL, 0, NULL, 0, &r, err, sizeof err) == 0);
    CHECK(r.reason == SB_TIMEOUT && r.wall_ms < 3000);
    sandbox_result_free(&r);
    const char *none[] = {"/no/such/program", NULL};
    CHECK(sandbox_run(&p, none, NULL, 0, NULL, 0, &r, err, sizeof err) < 0);
    CHECK(r.reason == SB_SETUP && strstr(err, "/no/such/program"));
    sandbox_result_free(&r);
    sandbox_file bad = {"../x", "", 0};
    CHECK(sandbox_run(&p, ok, &bad, 1, NULL, 0, &r, err, sizeof err) < 0);
    sandbox_result_free(&r);
}

int main(void)
{
    RUN(test_exact);
    RUN(test_contains_regex);
    RUN(test_length);
    RUN(test_json);
    RUN(test_sandbox_quick);
    return tap_done();
}

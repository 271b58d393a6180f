/* Unit tests for host/http.c pieces that need no server: Retry-After parsing, what
 * is retried, and a batch against a closed loopback port. Key scrubbing:
 * tests/c/test_scrub.c; end to end: tests/e2e/test_scoring.py. */
#include <string.h>
#include <time.h>

#include "http.h"
#include "tap.h"

static void test_retry_after(void)
{
    CHECK(http_parse_retry_after("2", 0) == 2000);
    CHECK(http_parse_retry_after(" 0.5 ", 0) == 500);
    CHECK(http_parse_retry_after("abc", 0) == -1);
    CHECK(http_parse_retry_after("", 0) == -1);
    CHECK(http_parse_retry_after("-1", 0) == -1);
    /* 784111777 = Sun, 06 Nov 1994 08:49:37 GMT */
    CHECK(http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 - 3) == 3000);
    CHECK(http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 + 10) == 0);
}

static void test_retryable(void)
{
    CHECK(http_status_retryable(408) && http_status_retryable(409) && http_status_retryable(429));
    CHECK(http_status_retryable(500) && http_status_retryable(503));
    CHECK(!http_status_retryable(400) && !http_status_retryable(401) && !http_status_retryable(404));
    CHECK(!strcmp(http_kind_name(HTTP_E_RATE), "rate_limit"));
}

static void test_refused(void)
{
    http_params p;
    http_default_params(&p);
    p.max_retries = 2;
    p.backoff_initial_ms = 10;
    p.secret = "sk-SECRET";
    const char *h[] = {"Authorization: Bearer sk-SECRET"};
    http_request q[2];
    for (int i = 0; i < 2; i++)
        q[i] = (http_request){"http://127.0.0.1:9/v1/chat/completions?k=sk-SECRET", "{}", 2, h, 1};
    http_result r[2];
    http_stats st = {0};
    char err[128];
    CHECK(http_run(&p, q, 2, r, &st, err, sizeof err) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(r[i].kind == HTTP_E_CONNECT && r[i].retryable && r[i].attempts == 3);
        CHECK(strstr(r[i].err, "sk-SECRET") == NULL && strstr(r[i].err, "***") != NULL);
        http_result_free(&r[i]);
    }
    CHECK(st.requests == 2 && st.attempts == 6 && st.retries == 4 && st.failures == 2);
    http_cleanup();
}

/* A key where the error text is cut (256 bytes) must not survive as a prefix: the
 * text is scrubbed before the cut. */
static void test_key_at_the_cut(void)
{
    const char *key = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz";
    http_params p;
    http_default_params(&p);
    p.max_retries = 0;
    p.secret = key;
    char url[512];
    int pad = (int)sizeof ((http_result *)0)->err - (int)strlen("POST ") - 60;
    snprintf(url, sizeof url, "http://127.0.0.1:9/v1?pad=%0*d&k=%s", pad, 0, key);
    http_request q = {url, "{}", 2, NULL, 0};
    http_result r;
    char err[128];
    CHECK(http_run(&p, &q, 1, &r, NULL, err, sizeof err) == 0);
    CHECK(r.kind == HTTP_E_CONNECT && strstr(r.err, "&k=***") && !strstr(r.err, "sk-test-0123"));
    http_result_free(&r);
    http_cleanup();
}

int main(void)
{
    RUN(test_retry_after);
    RUN(test_retryable);
    RUN(test_refused);
    RUN(test_key_at_the_cut);
    return tap_done();
}

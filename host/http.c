/* http.c — see http.h. One multi handle for the process so that connections (and
 * TLS sessions, DNS entries) are reused across batches; easy handles are pooled for
 * the same reason. The event loop is curl_multi_poll with a bounded timeout so that a
 * second SIGINT is seen within POLL_SLICE_MS even while every transfer hangs. */
#include "http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "scrub.h"
#include "sig.h"

#define POLL_SLICE_MS 50

static CURLM *g_multi;
static CURL **g_pool; /* idle easy handles */
static size_t g_npool, g_cappool;
static long g_maxconnects;
static unsigned long long g_rng;

void http_default_params(http_params *p)
{
    memset(p, 0, sizeof *p);
    p->timeout_ms = 600000; /* the SDKs' default: 10 minutes */
    p->connect_timeout_ms = 10000;
    p->deadline_ms = 0;
    p->concurrency = 16;
    p->max_retries = 2; /* the SDKs' default */
    p->rpm = 0;
    p->backoff_initial_ms = 500;
    p->backoff_max_ms = 8000;
    p->retry_after_max_ms = 60000;
    p->max_response = 64u << 20;
    p->secret = NULL;
    p->verify_tls = 1;
    p->ca_file = NULL;
}

const char *http_kind_name(int kind)
{
    switch (kind) {
    case HTTP_OK: return "ok";
    case HTTP_E_STATUS: return "http";
    case HTTP_E_RATE: return "rate_limit";
    case HTTP_E_TIMEOUT: return "timeout";
    case HTTP_E_CONNECT: return "connect";
    case HTTP_E_INTERRUPT: return "interrupted";
    case HTTP_E_TOOBIG: return "too_big";
    default: return "internal";
    }
}

int http_status_retryable(long s) { return s == 408 || s == 409 || s == 429 || s >= 500; }

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Uniform in [0,1): jitter only, so a tiny xorshift is enough and leaves rand() and
 * Lua's generator alone (recipes seed those for reproducibility). */
static double rnd(void)
{
    if (!g_rng) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g_rng = ((unsigned long long)ts.tv_nsec << 20) ^ (unsigned long long)ts.tv_sec ^ 0x9e3779b97f4a7c15ull;
    }
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

long http_parse_retry_after(const char *v, double now_epoch)
{
    while (*v == ' ' || *v == '\t')
        v++;
    if (!*v)
        return -1;
    char *end;
    double secs = strtod(v, &end);
    if (end != v) {
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
            end++;
        if (*end == '\0')
            return secs < 0 ? -1 : (long)(secs * 1000.0);
    }
    time_t t = curl_getdate(v, NULL);
    if (t == (time_t)-1)
        return -1;
    double d = ((double)t - now_epoch) * 1000.0;
    return d < 0 ? 0 : (long)d;
}

/* ---- one attempt -------------------------------------------------------- */

typedef struct Xfer {
    size_t idx;
    CURL *easy;
    struct curl_slist *hdrs;
    char *buf;
    size_t len, cap, max;
    int too_big;
    char ctype[96];
    const char *secret; /* http_params.secret: scrubbed from what we keep */
    long ra_ms;       /* retry-after-ms or Retry-After, -1 if absent */
    int should_retry; /* x-should-retry: -1 absent, 0 false, 1 true */
} Xfer;

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
    Xfer *x = ud;
    size_t n = sz * nm;
    if (x->len + n > x->max) {
        x->too_big = 1;
        return 0; /* CURLE_WRITE_ERROR ends the transfer */
    }
    if (x->len + n + 1 > x->cap) {
        size_t c = x->cap ? x->cap : 4096;
        while (c < x->len + n + 1)
            c *= 2;
        char *q = realloc(x->buf, c);
        if (!q)
            return 0;
        x->buf = q;
        x->cap = c;
    }
    memcpy(x->buf + x->len, p, n);
    x->len += n;
    x->buf[x->len] = '\0';
    return n;
}

/* Header lines arrive one at a time, unterminated; a new status line starts a new
 * header block (interim 1xx responses), so what we keep is reset there. */
static size_t on_header(char *p, size_t sz, size_t nm, void *ud)
{
    Xfer *x = ud;
    size_t n = sz * nm;
    char line[512];
    size_t k = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, p, k);
    line[k] = '\0';
    while (k && (line[k - 1] == '\r' || line[k - 1] == '\n'))
        line[--k] = '\0';
    if (strncmp(line, "HTTP/", 5) == 0) {
        x->ctype[0] = '\0';
        x->ra_ms = -1;
        x->should_retry = -1;
        return n;
    }
    char *colon = strchr(line, ':');
    if (!colon)
        return n;
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (strcasecmp(line, "content-type") == 0) {
        scrub_secret_str(v, x->secret); /* before the cut, which could leave half a key */
        snprintf(x->ctype, sizeof x->ctype, "%s", v);
    } else if (strcasecmp(line, "retry-after-ms") == 0) {
        char *end;
        double ms = strtod(v, &end);
        if (end != v && ms >= 0)
            x->ra_ms = (long)ms; /* takes precedence over Retry-After, as in the SDKs */
    } else if (strcasecmp(line, "retry-after") == 0) {
        if (x->ra_ms < 0)
            x->ra_ms = http_parse_retry_after(v, (double)time(NULL));
    } else if (strcasecmp(line, "x-should-retry") == 0) {
        x->should_retry = strcasecmp(v, "true") == 0 ? 1 : strcasecmp(v, "false") == 0 ? 0 : -1;
    }
    return n;
}

static CURL *easy_get(void)
{
    if (g_npool)
        return g_pool[--g_npool];
    return curl_easy_init();
}

static void easy_put(CURL *e)
{
    if (g_npool == g_cappool) {
        size_t c = g_cappool ? g_cappool * 2 : 64;
        CURL **q = realloc(g_pool, c * sizeof *q);
        if (!q) {
            curl_easy_cleanup(e);
            return;
        }
        g_pool = q;
        g_cappool = c;
    }
    curl_easy_reset(e);
    g_pool[g_npool++] = e;
}

static int ensure_multi(int concurrency, char *err, size_t errlen)
{
    if (!g_multi) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            snprintf(err, errlen, "curl_global_init failed");
            return -1;
        }
        g_multi = curl_multi_init();
        if (!g_multi) {
            snprintf(err, errlen, "curl_multi_init failed");
            return -1;
        }
    }
    /* Keep an idle connection per concurrent slot so the next batch reuses them. */
    long want = (long)concurrency + 8;
    if (want > g_maxconnects) {
        curl_multi_setopt(g_multi, CURLMOPT_MAXCONNECTS, want);
        g_maxconnects = want;
    }
    return 0;
}

void http_cleanup(void)
{
    while (g_npool)
        curl_easy_cleanup(g_pool[--g_npool]);
    free(g_pool);
    g_pool = NULL;
    g_cappool = 0;
    if (g_multi) {
        curl_multi_cleanup(g_multi);
        g_multi = NULL;
        curl_global_cleanup();
    }
    g_maxconnects = 0;
}

/* ---- the batch ---------------------------------------------------------- */

typedef struct Req {
    double start; /* first attempt start (0: not started) */
    double ready; /* earliest next attempt */
    int active, done;
} Req;

static void fail_text(http_result *r, const http_params *p, const http_request *q,
                      const char *fmt, const char *detail)
{
    char what[200], full[2048];
    snprintf(what, sizeof what, fmt, detail);
    snprintf(full, sizeof full, "POST %s: %s", q->url, what);
    scrub_secret_str(full, p->secret); /* before the cut to r->err, which could halve a key */
    size_t k = strlen(full);
    if (k >= sizeof r->err)
        k = sizeof r->err - 1;
    memcpy(r->err, full, k);
    r->err[k] = '\0';
}

static void set_result_body(http_result *r, Xfer *x)
{
    free(r->body);
    if (x->buf) {
        r->body = x->buf;
        r->body_len = x->len;
    } else {
        r->body = calloc(1, 1);
        r->body_len = 0;
    }
    x->buf = NULL;
    x->len = x->cap = 0;
    /* Before anything reads it (the error excerpt below, the caller's JSON decoding):
     * a server that echoes the request's headers, plainly or escaped, must not hand
     * the key to logs, caches or metrics. */
    if (r->body)
        scrub_secret(r->body, &r->body_len, x->secret);
    snprintf(r->content_type, sizeof r->content_type, "%s", x->ctype);
}

static int start_attempt(const http_params *p, const http_request *q, Req *rq, Xfer *x,
                         http_result *r, double now)
{
    CURL *e = easy_get();
    if (!e)
        return -1;
    memset(x, 0, sizeof *x);
    x->easy = e;
    x->max = p->max_response;
    x->secret = p->secret;
    x->ra_ms = -1;
    x->should_retry = -1;
    for (int i = 0; i < q->nheaders; i++) {
        struct curl_slist *h = curl_slist_append(x->hdrs, q->headers[i]);
        if (!h)
            goto fail;
        x->hdrs = h;
    }
    /* Without this curl waits up to a second for "100 Continue" on larger bodies. */
    struct curl_slist *h = curl_slist_append(x->hdrs, "Expect:");
    if (!h)
        goto fail;
    x->hdrs = h;
    if (!rq->start)
        rq->start = now;
    long tmo = p->timeout_ms;
    if (p->deadline_ms > 0) {
        long left = p->deadline_ms - (long)(now - rq->start);
        if (left < 1)
            left = 1;
        if (tmo <= 0 || left < tmo)
            tmo = left;
    }
    curl_easy_setopt(e, CURLOPT_URL, q->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, tmo > 0 ? tmo : 0L);
    if (p->connect_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, p->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, p->verify_tls ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, p->verify_tls ? 2L : 0L);
    if (p->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, p->ca_file);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (curl_multi_add_handle(g_multi, e) != CURLM_OK)
        goto fail;
    rq->active = 1;
    r->attempts++;
    return 0;
fail:
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    easy_put(e);
    x->easy = NULL;
    return -1;
}

static void end_attempt(Xfer *x)
{
    curl_multi_remove_handle(g_multi, x->easy);
    easy_put(x->easy);
    x->easy = NULL;
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    free(x->buf);
    x->buf = NULL;
}

/* Classify a finished attempt into r; returns 1 if it should be retried. */
static int classify(const http_params *p, const http_request *q, Xfer *x, CURLcode cc,
                    http_result *r)
{
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    r->status = status;
    r->retry_after_ms = x->ra_ms;
    r->err[0] = '\0';
    if (cc == CURLE_OK) {
        set_result_body(r, x);
        if (status >= 200 && status < 300) {
            r->kind = HTTP_OK;
            r->retryable = 0;
            return 0;
        }
        r->kind = status == 429 ? HTTP_E_RATE : HTTP_E_STATUS;
        r->retryable = http_status_retryable(status);
        if (x->should_retry >= 0)
            r->retryable = x->should_retry;
        char detail[160];
        int k = snprintf(detail, sizeof detail, "HTTP %ld", status);
        if (r->body_len && k > 0 && (size_t)k < sizeof detail) {
            snprintf(detail + k, sizeof detail - (size_t)k, ": %.120s", r->body);
            for (char *c = detail; *c; c++)
                if (*c == '\n' || *c == '\r')
                    *c = ' ';
        }
        fail_text(r, p, q, "%s", detail);
        return r->retryable;
    }
    /* No complete response: keep what arrived (for diagnosis) but call it a failure. */
    set_result_body(r, x);
    if (x->too_big) {
        r->kind = HTTP_E_TOOBIG;
        r->retryable = 0;
        char d[64];
        snprintf(d, sizeof d, "%zu", p->max_response);
        fail_text(r, p, q, "response larger than %s bytes", d);
        return 0;
    }
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        r->kind = HTTP_E_TIMEOUT;
        r->retryable = 1;
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_OUT_OF_MEMORY:
        r->kind = cc == CURLE_OUT_OF_MEMORY ? HTTP_E_INTERNAL : HTTP_E_CONNECT;
        r->retryable = 0; /* a wrong URL or an untrusted peer does not heal by waiting */
        break;
    default:
        r->kind = HTTP_E_CONNECT;
        r->retryable = 1;
    }
    fail_text(r, p, q, "%s", curl_easy_strerror(cc));
    return r->retryable;
}

static long backoff_ms(const http_params *p, int retries_done, long retry_after)
{
    if (retry_after > 0 && retry_after <= p->retry_after_max_ms)
        return retry_after;
    double d = (double)p->backoff_initial_ms;
    for (int i = 0; i < retries_done && d < (double)p->backoff_max_ms; i++)
        d *= 2;
    if (d > (double)p->backoff_max_ms)
        d = (double)p->backoff_max_ms;
    return (long)(d * (1.0 - 0.25 * rnd())); /* the SDKs' jitter: up to 25% shorter */
}

int http_run(const http_params *p, const http_request *reqs, size_t n, http_result *out,
             http_stats *stats, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].retry_after_ms = -1;
        out[i].kind = HTTP_E_INTERNAL;
    }
    if (err && errlen)
        err[0] = '\0';
    if (n == 0)
        return 0;
    int conc = p->concurrency < 1 ? 1 : p->concurrency;
    if (ensure_multi(conc, err, errlen) < 0)
        return HTTP_E_INTERNAL;
    Req *rq = calloc(n, sizeof *rq);
    Xfer *xs = calloc((size_t)conc, sizeof *xs);
    int *free_slots = calloc((size_t)conc, sizeof *free_slots);
    size_t *waiting = calloc(n, sizeof *waiting); /* requests between attempts */
    if (!rq || !xs || !free_slots || !waiting) {
        free(rq);
        free(xs);
        free(free_slots);
        free(waiting);
        snprintf(err, errlen, "out of memory");
        return HTTP_E_INTERNAL;
    }
    int nfree = conc;
    for (int s = 0; s < conc; s++)
        free_slots[s] = conc - 1 - s;
    size_t ndone = 0, next_new = 0, nwait = 0;
    int nactive = 0, rc = 0;
    double next_slot = 0, gap = p->rpm > 0 ? 60000.0 / p->rpm : 0;
    long long attempts = 0, retries = 0, failures = 0;

    while (ndone < n) {
        double now = now_ms();
        if (sig_level() >= 2) {
            rc = HTTP_E_INTERRUPT;
            break;
        }
        /* Start what may start, within the concurrency cap and the rpm budget:
         * retries that are due first, then new requests in input order. Both scans
         * are bounded by what is waiting, not by the batch size. */
        double wake = now + POLL_SLICE_MS;
        size_t w = 0;
        while (nactive < conc) {
            size_t i;
            if (w < nwait) {
                i = waiting[w];
                if (rq[i].ready > now) {
                    if (rq[i].ready < wake)
                        wake = rq[i].ready;
                    w++;
                    continue;
                }
            } else if (next_new < n) {
                i = next_new;
            } else {
                break;
            }
            if (gap > 0 && next_slot > now) {
                if (next_slot < wake)
                    wake = next_slot;
                break;
            }
            if (w < nwait)
                waiting[w] = waiting[--nwait]; /* taken; the slot at w is re-examined */
            else
                next_new++;
            int slot = free_slots[--nfree];
            if (start_attempt(p, &reqs[i], &rq[i], &xs[slot], &out[i], now) < 0) {
                free_slots[nfree++] = slot;
                rq[i].done = 1;
                ndone++;
                out[i].kind = HTTP_E_INTERNAL;
                fail_text(&out[i], p, &reqs[i], "%s", "cannot start the transfer");
                failures++;
                continue;
            }
            xs[slot].idx = i;
            nactive++;
            attempts++;
            if (out[i].attempts > 1)
                retries++;
            if (gap > 0)
                next_slot = (next_slot > now ? next_slot : now) + gap;
        }

        int timeout = (int)(wake - now);
        if (timeout < 0)
            timeout = 0;
        if (timeout > POLL_SLICE_MS)
            timeout = POLL_SLICE_MS;
        if (nactive) {
            int still = 0;
            curl_multi_perform(g_multi, &still);
            curl_multi_poll(g_multi, NULL, 0, timeout, NULL);
            curl_multi_perform(g_multi, &still);
        } else if (timeout > 0) {
            struct timespec ts = {0, (long)timeout * 1000000L};
            nanosleep(&ts, NULL);
        }

        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(g_multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            Xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            if (!x)
                continue;
            size_t i = x->idx;
            http_result *r = &out[i];
            double t = now_ms();
            int again = classify(p, &reqs[i], x, m->data.result, r);
            end_attempt(x);
            free_slots[nfree++] = (int)(x - xs);
            nactive--;
            rq[i].active = 0;
            if (again && r->attempts <= p->max_retries) {
                long wait = backoff_ms(p, r->attempts - 1, r->retry_after_ms);
                if (p->deadline_ms <= 0 || (t + (double)wait) - rq[i].start < (double)p->deadline_ms) {
                    rq[i].ready = t + (double)wait;
                    waiting[nwait++] = i;
                    continue;
                }
                char d[64];
                snprintf(d, sizeof d, " (deadline of %ld ms reached)", p->deadline_ms);
                size_t el = strlen(r->err);
                snprintf(r->err + el, sizeof r->err - el, "%s", d);
            }
            r->latency_ms = t - rq[i].start;
            rq[i].done = 1;
            ndone++;
            if (r->kind != HTTP_OK)
                failures++;
        }
    }

    if (rc == HTTP_E_INTERRUPT) {
        double t = now_ms();
        for (int s = 0; s < conc; s++)
            if (xs[s].easy)
                end_attempt(&xs[s]);
        for (size_t i = 0; i < n; i++) {
            if (rq[i].done)
                continue;
            out[i].kind = HTTP_E_INTERRUPT;
            out[i].retryable = 0;
            out[i].latency_ms = rq[i].start ? t - rq[i].start : 0;
            snprintf(out[i].err, sizeof out[i].err, "interrupted by a second SIGINT");
            failures++;
        }
        snprintf(err, errlen, "interrupted by a second SIGINT");
    }
    for (size_t i = 0; i < n; i++)
        if (!out[i].body)
            out[i].body = calloc(1, 1);
    free(rq);
    free(xs);
    free(free_slots);
    free(waiting);
    if (stats) {
        stats->requests += (long long)n;
        stats->attempts += attempts;
        stats->retries += retries;
        stats->failures += failures;
    }
    return rc;
}

void http_result_free(http_result *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

/* http.h — batches of HTTP POST requests over one libcurl multi handle per process.
 *
 * Plain C: never includes lua.h. A batch runs up to `concurrency` transfers at once,
 * retries what the official OpenAI/Anthropic SDKs retry (408, 409, 429, 5xx,
 * connection failures, timeouts) with capped exponential backoff and jitter, honours
 * retry-after-ms / Retry-After, and returns results in input order. No callback into
 * the caller runs while transfers are in flight, so the Lua binding may call this
 * with no Lua on the C stack in between.
 *
 * Secrets: the caller names the secret it put in a header (the API key); response
 * bodies, content types and every error text this module writes are scrubbed of it
 * in every encoding scrub.h knows, and curl's verbose output is never on. */
#ifndef RLHOST_HTTP_H
#define RLHOST_HTTP_H

#include <stddef.h>

/* Failure kinds of one request (http_result.kind). */
enum {
    HTTP_OK = 0,           /* a 2xx response */
    HTTP_E_STATUS = -1,    /* a non-2xx response that was not (or no longer) retried */
    HTTP_E_RATE = -2,      /* 429 after the retries were spent */
    HTTP_E_TIMEOUT = -3,   /* an attempt timed out, or the request's deadline passed */
    HTTP_E_CONNECT = -4,   /* connection refused/reset, truncated body, TLS failure */
    HTTP_E_INTERRUPT = -5, /* a second SIGINT (sig_level() >= 2) stopped the batch */
    HTTP_E_INTERNAL = -6,  /* out of memory, curl setup failure */
    HTTP_E_TOOBIG = -7,    /* the response exceeded max_response bytes */
};

typedef struct http_params {
    long timeout_ms;          /* one attempt, connect to last byte (0: none) */
    long connect_timeout_ms;  /* TCP+TLS connect of one attempt (0: curl's default) */
    long deadline_ms;         /* one request, all attempts and backoff waits (0: none) */
    int concurrency;          /* transfers in flight at once (>= 1) */
    int max_retries;          /* attempts beyond the first for retryable failures */
    double rpm;               /* attempt starts per minute across the batch (0: no limit) */
    long backoff_initial_ms;  /* first backoff; doubles per retry (SDKs: 500) */
    long backoff_max_ms;      /* backoff cap (SDKs: 8000) */
    long retry_after_max_ms;  /* a server's retry-after above this is ignored (SDKs: 60 s) */
    size_t max_response;      /* response body cap in bytes */
    const char *secret;       /* text to scrub from bodies and errors (may be NULL) */
    int verify_tls;           /* 1: verify peer and host name (never 0 outside tests) */
    const char *ca_file;      /* PEM bundle to trust instead of the system's (NULL: system) */
} http_params;

/* One POST. Strings are borrowed for the duration of http_run. */
typedef struct http_request {
    const char *url;
    const char *body;          /* request body (JSON), body_len bytes */
    size_t body_len;
    const char *const *headers; /* "Name: value" lines, nheaders of them */
    int nheaders;
} http_request;

typedef struct http_result {
    int kind;             /* HTTP_OK or an HTTP_E_* */
    int retryable;        /* the last failure was of a retryable sort */
    long status;          /* last HTTP status (0: no response) */
    char *body;           /* last response body, NUL-terminated, secret scrubbed (owned;
                           * http_result_free) */
    size_t body_len;
    char content_type[96]; /* last response's Content-Type ("" if none) */
    int attempts;         /* attempts made (retries = attempts - 1) */
    double latency_ms;    /* first attempt start to final outcome */
    long retry_after_ms;  /* last server-requested wait (-1: none given) */
    char err[256];        /* why it failed, secret scrubbed ("" when ok) */
} http_result;

/* Totals over the batches run by this process (http_stats_get). */
typedef struct http_stats {
    long long requests; /* logical requests finished */
    long long attempts; /* HTTP attempts started */
    long long retries;  /* attempts beyond the first */
    long long failures; /* requests that ended in an error */
} http_stats;

void http_default_params(http_params *p);

/* Run n requests; fill out[0..n) in input order (each to be freed with
 * http_result_free, also on failure). Returns 0 when the batch ran (individual
 * requests may still have failed: see out[i].kind), HTTP_E_INTERRUPT when a second
 * SIGINT stopped it (unfinished requests carry that kind), HTTP_E_INTERNAL when
 * nothing could be started (err says why). Adds to *stats when given. Never calls
 * back into the caller; blocks until every request has an outcome. */
int http_run(const http_params *p, const http_request *reqs, size_t n, http_result *out,
             http_stats *stats, char *err, size_t errlen);

void http_result_free(http_result *r);

/* A static name for a kind: "ok", "http", "rate_limit", "timeout", "connect",
 * "interrupted", "internal", "too_big". */
const char *http_kind_name(int kind);

/* Whether an HTTP status is retried (408, 409, 429, >= 500). */
int http_status_retryable(long status);

/* Parse a Retry-After value (delta seconds, possibly fractional, or an HTTP-date
 * relative to now_epoch) into milliseconds; -1 if unparsable. Exposed for tests. */
long http_parse_retry_after(const char *v, double now_epoch);

/* Release the process-wide multi handle (at exit; optional). */
void http_cleanup(void);

#endif

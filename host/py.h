/* py.h — the embedded CPython that runs the engine in-process. Plain C (no lua.h).
 *
 * One interpreter per host process, started on first use (a recipe that never asks
 * for an embedded model never pays for Python). The GIL is held only inside
 * py_call, so the host can wait on pipes, HTTP or children while the interpreter
 * idles. Requests and replies are JSON text (scripts/PROTOCOL.md); the engine's
 * `call` never raises, so every engine failure arrives as an error reply. */
#ifndef RLHOST_PY_H
#define RLHOST_PY_H

#include <stddef.h>

enum {
    PY_OK = 0,
    PY_EINIT = -1,   /* the interpreter or the engine module could not be started */
    PY_ECALL = -2,   /* the call itself failed (an exception escaped the engine) */
    PY_ENOMEM = -3,  /* allocation failed */
};

typedef struct py_params {
    const char *venv;    /* virtual environment root: <venv>/bin/python is the program,
                            so its site-packages are on sys.path */
    const char *scripts; /* directory put first on sys.path (holds the engine package) */
    const char *module;  /* module imported, e.g. "rlengine.host" */
    const char *func;    /* function called with the request text, e.g. "call" */
    const char *close_func; /* called (if non-NULL) at process exit, e.g. "close_all" */
} py_params;

void py_default_params(py_params *p);

/* Start the interpreter and import the module, once. Later calls return the result
 * of the first (an interpreter cannot be started twice in a process, so a failed
 * start is final; err repeats why). */
int py_init(const py_params *p, char *err, size_t errlen);

/* 1 once py_init has succeeded. */
int py_ready(void);

/* Call func(request) with req[0..n) (UTF-8 JSON text). On PY_OK *reply is a
 * malloc'd, NUL-terminated copy of the reply text (*reply_len bytes) that the caller
 * frees. Takes and releases the GIL itself. */
int py_call(const char *req, size_t n, char **reply, size_t *reply_len, char *err,
            size_t errlen);

#endif

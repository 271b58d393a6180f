/* py.c — see py.h.
 *
 * Finalisation: the interpreter is never finalised (no Py_FinalizeEx). Once torch is
 * imported, interpreter teardown joins its thread pools and runs extension-module
 * destructors in an order torch does not promise to survive: hangs and crashes at
 * exit are a known failure mode, and finalising costs seconds for nothing (the
 * process is ending, the OS reclaims its memory). What must happen at exit does:
 * an atexit handler asks the engine to close its models, which removes the weight
 * files it exported to /dev/shm. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "py.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sig.h"

static int state;           /* 0 not started, 1 ready, -1 failed for good */
static char init_err[1024]; /* why it failed */
static PyObject *call_fn;   /* the engine's call(request_json) */
static PyObject *close_fn;  /* its close_all(), or NULL */

/* A second Ctrl-C (or SIGTERM, SIGHUP) must end an embedded call as it ends a wait on
 * a worker, but the call runs on this thread inside the interpreter, and the
 * interpreter has no signal handlers of its own (they belong to host/sig.c). So a
 * watcher thread looks at sig_level() while a call is in flight and, at level 2,
 * raises KeyboardInterrupt in the calling thread (PyThreadState_SetAsyncExc); the engine turns it into an error
 * reply of kind "interrupted" at its next bytecode. in_call and caller_tid change only
 * with the GIL held, and the watcher reads them with the GIL held, so an exception
 * can never be aimed at a call that has already returned. Calls made after the
 * second Ctrl-C (closing models as the host stops) are left alone. */
static atomic_int in_call;       /* 1 while py_call is inside the engine */
static atomic_int interruptible; /* that call began before the second Ctrl-C */
static unsigned long caller_tid;

static void *watch_interrupts(void *arg)
{
    (void)arg;
    int fired = 0;
    for (;;) {
        struct timespec ts = {0, 50 * 1000000L}; /* 20 cheap wake-ups a second */
        nanosleep(&ts, NULL);
        if (sig_level() < 2) {
            fired = 0;
            continue;
        }
        if (fired || !(in_call && interruptible)) /* a hint; confirmed under the GIL */
            continue;
        PyGILState_STATE g = PyGILState_Ensure();
        if (in_call && interruptible) {
            PyThreadState_SetAsyncExc(caller_tid, PyExc_KeyboardInterrupt);
            fired = 1;
        }
        PyGILState_Release(g);
    }
    return NULL;
}

void py_default_params(py_params *p)
{
    memset(p, 0, sizeof *p);
    p->module = "rlengine.host";
    p->func = "call";
    p->close_func = "close_all";
}

int py_ready(void) { return state == 1; }

/* The pending exception as "Type: message" (the traceback goes to the log by the
 * engine itself; here a line for an error message). Clears it. */
static void exc_text(char *out, size_t n, const char *prefix)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    const char *tn = type ? ((PyTypeObject *)type)->tp_name : "unknown error";
    PyObject *s = value ? PyObject_Str(value) : NULL;
    const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
    if (!msg)
        PyErr_Clear();
    snprintf(out, n, "%s%s%s%s", prefix, tn, msg && *msg ? ": " : "", msg ? msg : "");
    Py_XDECREF(s);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static void at_exit(void)
{
    if (state != 1 || !close_fn || !Py_IsInitialized())
        return;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallNoArgs(close_fn);
    if (!r)
        PyErr_Clear(); /* exiting anyway; the engine logs its own failures */
    Py_XDECREF(r);
    /* Flush Python's buffered stdout/stderr: without finalisation nothing else will. */
    PyObject *rr = PyRun_String("import sys\nfor f in (sys.stdout, sys.stderr):\n"
                                "    try: f.flush()\n    except Exception: pass\n",
                                Py_file_input, PyEval_GetBuiltins(), NULL);
    if (!rr)
        PyErr_Clear();
    Py_XDECREF(rr);
    PyGILState_Release(g);
}

static int start(const py_params *p)
{
    char program[4096];
    if ((size_t)snprintf(program, sizeof program, "%s/bin/python", p->venv) >= sizeof program) {
        snprintf(init_err, sizeof init_err, "venv path too long");
        return PY_EINIT;
    }
    /* Isolated: the user's PYTHONPATH, PYTHONHOME, PYTHONHASHSEED and user site do not
     * apply, so the embedded engine sees exactly what the worker started with
     * <venv>/bin/python sees (the worker gets PYTHONHASHSEED=0 to match). */
    /* UTF-8 mode (PEP 540): paths are bytes to Linux and UTF-8 text to the engine,
     * decoded with surrogateescape, so every byte a path can hold round-trips (a
     * UTF-8 name like 'runs/rün ✓' as itself, any other byte as U+DC80..U+DCFF). An
     * isolated pre-config would otherwise take the locale's encoding, and the host
     * never calls setlocale: ASCII, whatever LANG says. The worker gets PYTHONUTF8=1
     * (lmodel.c), so both transports read paths alike. */
    PyPreConfig pre;
    PyPreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = 1;
    PyStatus pst = Py_PreInitialize(&pre);
    if (PyStatus_Exception(pst)) {
        snprintf(init_err, sizeof init_err, "cannot pre-initialise the embedded Python: %.200s",
                 pst.err_msg ? pst.err_msg : "unknown error");
        return PY_EINIT;
    }
    PyConfig cfg;
    PyConfig_InitIsolatedConfig(&cfg);
    cfg.install_signal_handlers = 0; /* SIGINT, SIGTERM, SIGHUP stay with host/sig.c */
    cfg.use_hash_seed = 1;
    cfg.hash_seed = 0;
    cfg.site_import = 1;
    cfg.user_site_directory = 0;
    cfg.buffered_stdio = 0; /* engine logs interleave with the host's in order */
    /* program_name is how getpath finds <venv>/pyvenv.cfg, which puts the venv's
     * site-packages on sys.path and sets sys.prefix to the venv. */
    PyStatus st = PyConfig_SetBytesString(&cfg, &cfg.program_name, program);
    if (!PyStatus_Exception(st))
        st = PyConfig_SetBytesString(&cfg, &cfg.executable, program);
    if (!PyStatus_Exception(st)) {
        char *argv[] = {"rlhost", NULL};
        st = PyConfig_SetBytesArgv(&cfg, 1, argv);
    }
    if (!PyStatus_Exception(st))
        st = Py_InitializeFromConfig(&cfg);
    PyConfig_Clear(&cfg);
    if (PyStatus_Exception(st)) {
        snprintf(init_err, sizeof init_err, "cannot start the embedded Python (%.400s): %.200s",
                 program, st.err_msg ? st.err_msg : "unknown error");
        return PY_EINIT;
    }
    /* From here the interpreter exists and this thread holds the GIL. */
    int rc = PY_EINIT;
    PyObject *sys_path = PySys_GetObject("path"); /* borrowed */
    PyObject *dir = PyUnicode_DecodeFSDefault(p->scripts);
    if (!sys_path || !dir || PyList_Insert(sys_path, 0, dir) != 0) {
        exc_text(init_err, sizeof init_err, "cannot set sys.path: ");
        Py_XDECREF(dir);
        goto done;
    }
    Py_DECREF(dir);
    PyObject *mod = PyImport_ImportModule(p->module);
    if (!mod) {
        char why[768];
        exc_text(why, sizeof why, "");
        snprintf(init_err, sizeof init_err,
                 "cannot import %.100s from %.300s with %.300s: %.280s", p->module, p->scripts,
                 program, why);
        goto done;
    }
    call_fn = PyObject_GetAttrString(mod, p->func);
    if (call_fn && !PyCallable_Check(call_fn))
        Py_CLEAR(call_fn);
    if (!call_fn) {
        PyErr_Clear();
        snprintf(init_err, sizeof init_err, "%s has no function %s", p->module, p->func);
        Py_DECREF(mod);
        goto done;
    }
    if (p->close_func) {
        close_fn = PyObject_GetAttrString(mod, p->close_func);
        if (!close_fn)
            PyErr_Clear();
    }
    Py_DECREF(mod);
    rc = PY_OK;
done:
    /* Release the GIL for good; py_call takes it back around each call. The saved
     * thread state stays this thread's, so PyGILState_Ensure finds it. */
    PyEval_SaveThread();
    return rc;
}

int py_init(const py_params *p, char *err, size_t errlen)
{
    if (state == 0) {
        int rc = start(p);
        state = rc == PY_OK ? 1 : -1;
        if (state == 1) {
            atexit(at_exit);
            pthread_t t;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            /* Without the watcher (no thread to be had) a second Ctrl-C still stops
             * the recipe, only after the call in flight returns. */
            pthread_create(&t, &at, watch_interrupts, NULL);
            pthread_attr_destroy(&at);
        }
    }
    if (state == 1)
        return PY_OK;
    snprintf(err, errlen, "%s", init_err);
    return PY_EINIT;
}

int py_call(const char *req, size_t n, char **reply, size_t *reply_len, char *err,
            size_t errlen)
{
    *reply = NULL;
    *reply_len = 0;
    if (state != 1) {
        snprintf(err, errlen, "%s", state ? init_err : "the embedded Python is not started");
        return PY_EINIT;
    }
    int rc = PY_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    caller_tid = PyThread_get_thread_ident();
    interruptible = sig_level() < 2;
    in_call = 1;
    PyObject *arg = PyUnicode_DecodeUTF8(req, (Py_ssize_t)n, "strict");
    PyObject *res = arg ? PyObject_CallOneArg(call_fn, arg) : NULL;
    in_call = 0;
    /* An interrupt that arrived after the engine's last bytecode must not surface in
     * the next call: clear it. */
    PyThreadState_SetAsyncExc(caller_tid, NULL);
    Py_XDECREF(arg);
    Py_ssize_t len = 0;
    const char *s = res ? PyUnicode_AsUTF8AndSize(res, &len) : NULL;
    if (!s) {
        exc_text(err, errlen, "the engine call failed: ");
        rc = PY_ECALL;
    } else {
        char *copy = malloc((size_t)len + 1);
        if (!copy) {
            snprintf(err, errlen, "out of memory copying a %zd-byte reply", len);
            rc = PY_ENOMEM;
        } else {
            memcpy(copy, s, (size_t)len + 1);
            *reply = copy;
            *reply_len = (size_t)len;
        }
    }
    Py_XDECREF(res);
    PyGILState_Release(g);
    return rc;
}

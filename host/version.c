/* version.c — see version.h. Kept apart so only it includes every library header. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <sqlite3.h>

#include "version.h"

const char *version_python(void) { return PY_VERSION; }
const char *version_curl(void) { return LIBCURL_VERSION; }
const char *version_cjson(void) { return cJSON_Version(); }
const char *version_sqlite(void) { return SQLITE_VERSION; }

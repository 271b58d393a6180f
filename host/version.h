/* version.h — the versions rlhost was built against, for --version and rl.core. */
#ifndef RLHOST_VERSION_H
#define RLHOST_VERSION_H

#define RLHOST_VERSION "0.1.0"

const char *version_python(void);  /* PY_VERSION of the headers built against */
const char *version_curl(void);    /* LIBCURL_VERSION */
const char *version_cjson(void);   /* cJSON_Version() */
const char *version_sqlite(void);  /* SQLITE_VERSION */

#endif

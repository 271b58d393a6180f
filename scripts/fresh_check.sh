#!/bin/sh
# make fresh-check: the README's two commands on a bare Debian 12.
#
# Builds (once, cached) a debootstrap'ed Debian 12 minbase root with only the tools a
# new user is assumed to have (make gcc libc6-dev git ca-certificates), copies it,
# clones the current commit into the copy and runs `make run` then `make test` there
# as root, in a private mount namespace (so nothing it mounts outlives it). Prints the
# tail of each log and the times; exits non-zero if either command fails.
#
# Needs root, debootstrap (installed if missing) and network to the package archives.
# Not part of `make test` or CI: a first run downloads and installs everything
# (about 6 GB from PyPI). Settings (environment):
#   FRESH_CACHE   where the pristine root and pip's download cache live
#                 (default /var/cache/rlhost-fresh)
#   FRESH_MIRROR  the Debian archive (default: the first one in this machine's apt sources)
#   FRESH_PIP_CACHE=0  no shared pip download cache: every wheel is downloaded again
#   FRESH_KEEP=1  keep the work root afterwards (its path is printed)
#   FRESH_TARGETS the make targets to run, in order (default "run test")
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
cache=${FRESH_CACHE:-/var/cache/rlhost-fresh}
targets=${FRESH_TARGETS:-run test}
base=$cache/bookworm-minbase
logs=$repo/build/fresh-check

say() { echo "fresh-check: $*"; }
die() { echo "fresh-check: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"
commit=$(git rev-parse HEAD) || die "not a git checkout"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
    say "note: uncommitted changes are not tested; this checks commit ${commit%"${commit#????????????}"}"

if [ -z "${FRESH_MIRROR:-}" ]; then
    FRESH_MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
                   /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1)
    [ -n "$FRESH_MIRROR" ] || FRESH_MIRROR=$(awk '$1 == "deb" { print $2; exit }' \
                                             /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$FRESH_MIRROR" ] || die "no Debian mirror found in /etc/apt; set FRESH_MIRROR"
fi

# 1. The pristine root: minbase + the four tools. Made once; a marker file says it is
# complete, so an interrupted build is redone rather than trusted.
if [ ! -f "$base/.rlhost-fresh-complete" ]; then
    command -v debootstrap >/dev/null ||
        { say "installing debootstrap"; apt-get install -y --no-install-recommends debootstrap >/dev/null; }
    rm -rf "$base"; mkdir -p "$base"
    say "debootstrap --variant=minbase bookworm $base"
    debootstrap --variant=minbase bookworm "$base" "$FRESH_MIRROR" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    cp /etc/resolv.conf "$base/etc/resolv.conf" 2>/dev/null || true
    chroot "$base" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends make gcc libc6-dev git ca-certificates && apt-get clean' \
        >"$cache/base-tools.log" 2>&1 ||
        { tail -20 "$cache/base-tools.log" >&2; die "installing the base tools failed"; }
    touch "$base/.rlhost-fresh-complete"
fi

# 2. A throwaway copy of it, with the current commit cloned in.
work=$(mktemp -d /var/tmp/rlhost-fresh.XXXXXX)
cleanup() { [ "${FRESH_KEEP:-0}" = 1 ] && say "kept $work" || rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
say "copying the base root to $work"
cp -a "$base/." "$work/"
# This machine's way out is not under test: its resolver, its local CA certificates (an
# egress proxy's, say), its pip.conf and proxy variables go into the copy as they are.
cp /etc/resolv.conf "$work/etc/resolv.conf" 2>/dev/null || true
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$work/usr/local/share/ca-certificates/"
    chroot "$work" /usr/sbin/update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$work/etc/pip.conf"
netenv=""
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_CERT; do
    eval "val=\${$v:-}"
    [ -n "$val" ] && netenv="$netenv $v='$val'"
done
git clone -q --no-hardlinks "$repo" "$work/root/rlhost"
git -C "$work/root/rlhost" checkout -q "$commit"
mkdir -p "$logs" "$cache/pip"

# 3. make run, make test inside, with a clean environment (no locale, no proxy, no venv).
pipmount=""
[ "${FRESH_PIP_CACHE:-1}" = 1 ] && pipmount="mkdir -p $work/root/.cache/pip && mount --bind $cache/pip $work/root/.cache/pip"
status=0
for t in $targets; do
    say "make $t (log: $logs/$t.log)"
    start=$(date +%s)
    rc=0
    unshare --mount --propagation private sh -c "
        set -e
        mount -t proc proc '$work/proc'
        mount --rbind /sys '$work/sys'
        mount --rbind /dev '$work/dev'
        mount -t tmpfs -o mode=1777 shm '$work/dev/shm'
        $pipmount
        exec chroot '$work' /usr/bin/env -i HOME=/root TERM=dumb \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin $netenv \
            sh -c 'cd /root/rlhost && make $t'" >"$logs/$t.log" 2>&1 || rc=$?
    secs=$(( $(date +%s) - start ))
    tail -25 "$logs/$t.log"
    printf 'fresh-check: make %s: exit %d after %dm%02ds\n' "$t" "$rc" $((secs / 60)) $((secs % 60))
    echo "make $t: exit $rc, ${secs} s" >>"$logs/times.txt"
    if [ "$rc" != 0 ]; then status=1; break; fi
done
[ "$status" = 0 ] && say "PASS (commit $commit)" || say "FAIL (commit $commit; logs in $logs)"
exit $status

#!/bin/sh
# SPDX-License-Identifier: MIT
# shellcheck disable=SC2317 # cleanup and its helpers run from traps
# Runs the integration tests (tests/integration/test_*.py) against ./pgsteer and a throw-away
# PostgreSQL primary with two streaming replicas. Exits non-zero when any test fails, and
# leaves nothing behind: every server and pgsteer the tests started is stopped and every
# temporary directory removed, even when the tests crash, hang or are interrupted.
#
#   tests/integration/run.sh                          # the whole suite
#   tests/integration/run.sh test_core.RoutingTest    # some tests (unittest names)
#
# Environment: PGSTEER (binary, default ./pgsteer), PG_BINDIR (PostgreSQL programs),
# PGSTEER_TEST_TIMEOUT (seconds for the whole run, default 900).
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${PGSTEER:-$repo/pgsteer}
if [ ! -x "$bin" ]; then
    echo "run.sh: $bin is not built; run make first" >&2
    exit 2
fi
python=/usr/bin/python3
[ -x "$python" ] || python=python3

# All temporary directories of this run live under one parent, so that cleanup can find
# whatever a crashed test left. A large /dev/shm (tmpfs) makes PostgreSQL start much faster.
parent=/tmp
avail=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -w /dev/shm ] && [ "${avail:-0}" -ge 1048576 ]; then
    parent=/dev/shm
fi
work=$(mktemp -d "$parent/pgsteer-it.XXXXXX") || exit 2
chmod 755 "$work" # PostgreSQL runs as `postgres` when we are root: it must traverse this

# True when process $1 is alive and its command line mentions this run's directory, so that a
# recycled pid is never killed.
ours() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$work"
}

stop_pid() { # pid signal what
    ours "$1" || return 0
    echo "run.sh: stopping leftover $3 (pid $1)" >&2
    kill "-$2" "$1" 2>/dev/null
    i=0
    while ours "$1" && [ "$i" -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    ours "$1" && kill -KILL "$1" 2>/dev/null
    return 0
}

cleanup() {
    rc=$?
    trap - EXIT INT TERM HUP
    for f in "$work"/*/*.pid; do
        [ -f "$f" ] && stop_pid "$(cat "$f")" TERM pgsteer
    done
    # SIGQUIT is PostgreSQL's immediate shutdown: it also removes shared memory.
    for f in "$work"/*/*/postmaster.pid; do
        [ -f "$f" ] && stop_pid "$(head -n 1 "$f")" QUIT "postgres $(dirname "$f")"
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# libpq settings from the caller's environment would change what the tests see.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGSERVICEFILE PGOPTIONS \
    PGSSLMODE PGREQUIRESSL PGGSSENCMODE PGTARGETSESSIONATTRS PGCLIENTENCODING PGDATESTYLE PGTZ \
    PGAPPNAME PGCHANNELBINDING PGCONNECT_TIMEOUT
export PGPASSFILE="$work/no-such-pgpass" # not the caller's ~/.pgpass
export PGSTEER="$bin" PGSTEER_TEST_TMPDIR="$work" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
cd "$here" || exit 2
start=$(date +%s)
if [ $# -gt 0 ]; then
    set -- -m unittest -v "$@"
else
    set -- -m unittest discover -v -s . -p 'test_*.py'
fi
# --foreground: Ctrl-C still reaches the tests; on timeout they get SIGTERM, stop their
# servers themselves, and the cleanup above catches anything left.
timeout --foreground -k 15 "${PGSTEER_TEST_TIMEOUT:-900}" "$python" "$@"
rc=$?
if [ $rc -eq 124 ]; then
    echo "run.sh: integration tests timed out after ${PGSTEER_TEST_TIMEOUT:-900}s" >&2
fi
echo "run.sh: integration tests took $(($(date +%s) - start))s, exit status $rc" >&2
exit $rc

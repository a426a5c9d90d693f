#!/bin/sh
# SPDX-License-Identifier: MIT
# shellcheck disable=SC2317 # cleanup runs from traps
# Runs the driver tests (tests/drivers/run_all.py) against ./pgsteer in front of a throw-away
# primary with two streaming replicas, and the two PgBouncer topologies. Exits non-zero when a
# driver fails; leaves no server, pgsteer or PgBouncer behind, even when interrupted.
#
#   tests/drivers/run.sh                   # every driver
#   tests/drivers/run.sh psycopg3 jdbc     # some (run.sh --list names them)
#
# Environment: PGSTEER (binary, default ./pgsteer), PG_BINDIR, PGSTEER_DRIVERS_TIMEOUT
# (seconds for the whole run, default 900).
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

parent=/tmp
avail=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -w /dev/shm ] && [ "${avail:-0}" -ge 1048576 ]; then
    parent=/dev/shm
fi
work=$(mktemp -d "$parent/pgsteer-drv.XXXXXX") || exit 2
chmod 755 "$work" # PostgreSQL and PgBouncer run as `postgres` when we are root

# True when process $1 is alive and its command line mentions this run's directory.
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
    for f in "$work"/*/*.pid "$work"/*/*/*.pid; do
        [ -f "$f" ] && case "$f" in
        */postmaster.pid) ;;
        *) stop_pid "$(cat "$f")" TERM "process of $f" ;;
        esac
    done
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

export PGSTEER="$bin" PGSTEER_TEST_TMPDIR="$work" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
timeout --foreground -k 15 "${PGSTEER_DRIVERS_TIMEOUT:-900}" "$python" "$here/run_all.py" "$@"
rc=$?
if [ $rc -eq 124 ]; then
    echo "run.sh: driver tests timed out after ${PGSTEER_DRIVERS_TIMEOUT:-900}s" >&2
fi
echo "run.sh: driver tests took $(($(date +%s) - start))s, exit status $rc" >&2
exit $rc

# SPDX-License-Identifier: MIT
# shellcheck shell=sh disable=SC2317 # cleanup runs from traps
# Shared by the test runners (sourced): finds ./pgsteer and Python, makes one temporary
# directory for the run ($work) under /dev/shm when it is large (PostgreSQL starts much faster
# on tmpfs) or /tmp, and on exit, however it comes, stops every process whose pid file lies in
# it (PostgreSQL with SIGQUIT, its immediate shutdown) and removes it. A process counts as this
# run's only if its command line names $work, so a recycled pid is never killed.
# Set $here (the runner's folder) and $SANDBOX_NAME before sourcing.

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
work=$(mktemp -d "$parent/pgsteer-$SANDBOX_NAME.XXXXXX") || exit 2
chmod 755 "$work" # PostgreSQL and PgBouncer run as `postgres` when we are root: traversable

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

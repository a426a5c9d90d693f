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
SANDBOX_NAME=drv
# shellcheck source=../lib/sandbox.sh
. "$here/../lib/sandbox.sh"

export PGSTEER="$bin" PGSTEER_TEST_TMPDIR="$work" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
timeout --foreground -k 15 "${PGSTEER_DRIVERS_TIMEOUT:-900}" "$python" "$here/run_all.py" "$@"
rc=$?
if [ $rc -eq 124 ]; then
    echo "run.sh: driver tests timed out after ${PGSTEER_DRIVERS_TIMEOUT:-900}s" >&2
fi
echo "run.sh: driver tests took $(($(date +%s) - start))s, exit status $rc" >&2
exit $rc

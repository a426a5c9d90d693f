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
SANDBOX_NAME=it
# shellcheck source=../lib/sandbox.sh
. "$here/../lib/sandbox.sh"

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

# SPDX-License-Identifier: MIT
"""What every Python driver test shares: the connection settings run_all.py exports, a case
runner that gives each case its own time limit (a case that hangs fails and the others still
run), and the fixtures' expected values.

Output, one line per case, read by run_all.py:  "ok NAME"  or  "FAIL NAME: message"."""

import asyncio
import os
import sys
import threading
import time
import traceback

HOST = os.environ.get("PGSTEER_HOST", "127.0.0.1")
PORT = int(os.environ.get("PGSTEER_PORT", "6432"))
USER = os.environ.get("PGSTEER_USER", "app")
PASSWORD = os.environ.get("PGSTEER_PASSWORD", "secret")
DB = os.environ.get("PGSTEER_DB", "app")
PRIMARY = int(os.environ.get("PRIMARY_PORT", "0"))
REPLICAS = [int(p) for p in os.environ.get("REPLICA_PORTS", "").split(",") if p]
SCHEMA = os.environ.get("DRIVER_SCHEMA", "public")
CASE_TIMEOUT = float(os.environ.get("DRIVER_CASE_TIMEOUT", "30"))
# Set when pgsteer takes clients over TLS only: the CA its certificate is checked against.
# Drivers on libpq follow PGSSLMODE and PGSSLROOTCERT, set alongside.
SSLROOTCERT = os.environ.get("PGSTEER_SSLROOTCERT")

# Seeded by run_all.py in every driver's schema: blobs row 1 holds these, row 2 NULLs.
ALL_BYTES = bytes(range(256))
UNICODE_TEXT = "zażółć gęślą jaźń · Ελληνικά · 日本語 · \U0001F418"


class CheckFailed(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def eq(got, want, what):
    if got != want:
        raise CheckFailed("%s: got %r, want %r" % (what, short(got), short(want)))


def short(v):
    r = repr(v)
    return v if len(r) <= 200 else r[:200] + "..."


def on_replica(port, what):
    check(port in REPLICAS, "%s ran on port %s, not on a replica %s (primary %s)"
          % (what, port, REPLICAS, PRIMARY))


def on_primary(port, what):
    check(port == PRIMARY, "%s ran on port %s, not on the primary %s" % (what, port, PRIMARY))


def sqlstate_of(exc):
    """SQLSTATE of a driver exception, whatever the driver calls it."""
    for attr in ("sqlstate", "pgcode"):
        v = getattr(exc, attr, None)
        if isinstance(v, str) and len(v) == 5:
            return v
    diag = getattr(exc, "diag", None)
    if diag is not None and getattr(diag, "sqlstate", None):
        return diag.sqlstate
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's exception
    if orig is not None and orig is not exc:
        return sqlstate_of(orig)
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):  # pg8000: a dict of the error fields
        return args[0].get("C")
    for a in args:  # old pg8000: ('ERROR', 'ERROR', '57014', 'message', ...)
        if (isinstance(a, str) and len(a) == 5 and a.isalnum() and a.upper() == a
                and any(ch.isdigit() for ch in a)):
            return a
    return None


def expect_sqlstate(exc, want, what):
    got = sqlstate_of(exc)
    check(got == want, "%s: SQLSTATE %s, want %s (%s: %s)"
          % (what, got, want, type(exc).__name__, str(exc).strip()[:200]))


def _report(name, err, started):
    ms = (time.monotonic() - started) * 1000
    if err is None:
        print("ok %s (%.0f ms)" % (name, ms), flush=True)
    else:
        msg = " ".join(str(err).split()) or type(err).__name__
        print("FAIL %s: %s" % (name, msg[:1500]), flush=True)


def run_cases(cases):
    """Run [(name, fn)] one after the other, each in a thread with CASE_TIMEOUT. Exits the
    process (os._exit, so that a hung case's thread does not keep it alive)."""
    only = set(sys.argv[1:])
    failed = 0
    for name, fn in cases:
        if only and name not in only:
            continue
        box = {}

        def body(fn=fn, box=box):
            try:
                fn()
            except BaseException as e:  # noqa: B902 - any failure is the case's result
                box["err"] = e
                box["tb"] = traceback.format_exc()

        t0 = time.monotonic()
        th = threading.Thread(target=body, daemon=True)
        th.start()
        th.join(CASE_TIMEOUT)
        if th.is_alive():
            err = TimeoutError("no answer within %.0fs (hung)" % CASE_TIMEOUT)
        else:
            err = box.get("err")
            if err is not None and not isinstance(err, CheckFailed):
                sys.stderr.write("--- %s\n%s" % (name, box.get("tb", "")))
                err = "%s: %s" % (type(err).__name__, err)
        _report(name, err, t0)
        failed += err is not None
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)


def run_cases_async(cases):
    """run_cases for coroutine functions; each case runs under asyncio.wait_for."""
    only = set(sys.argv[1:])

    async def main():
        failed = 0
        for name, fn in cases:
            if only and name not in only:
                continue
            t0 = time.monotonic()
            err = None
            try:
                await asyncio.wait_for(fn(), CASE_TIMEOUT)
            except asyncio.TimeoutError:
                err = TimeoutError("no answer within %.0fs (hung)" % CASE_TIMEOUT)
            except CheckFailed as e:
                err = e
            except BaseException as e:  # noqa: B902
                sys.stderr.write("--- %s\n%s" % (name, traceback.format_exc()))
                err = "%s: %s" % (type(e).__name__, e)
            _report(name, err, t0)
            failed += err is not None
        return failed

    failed = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)

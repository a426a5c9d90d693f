#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs (or, when not root, names) the Debian/Ubuntu packages pgsteer needs.
#
#   scripts/deps.sh build   compiler, make, pkg-config and the -dev libraries
#   scripts/deps.sh test    build + cmocka, psycopg2, PostgreSQL server/client/pgbench,
#                           pgbouncer, clang-format, prometheus (for promtool): everything
#                           `make test` runs
#   scripts/deps.sh demo    build + PostgreSQL server/client/pgbench + python3
#   scripts/deps.sh bench   build + PostgreSQL server/client/pgbench + python3 + pgbouncer and
#                           pgpool2 (the proxies scripts/bench.py compares with) + valgrind
#                           (callgrind, for `make bench-instructions`)
#   scripts/deps.sh bindir  print PostgreSQL's bindir (15 preferred, else the newest)
#   scripts/deps.sh drivers test + the drivers tests/drivers/run.sh uses (Python, Java, Node,
#                           Perl, Ruby) and PgBouncer; npm packages come from tests/drivers/node
#
# Quiet when everything is present. When something is missing: as root, runs apt-get update
# and apt-get install; otherwise prints the exact install command and exits 1.
set -eu

mode=${1:-test}

build_pkgs="gcc libc6-dev make pkg-config libuv1-dev libyaml-dev libpq-dev libssl-dev"
pg_tools="initdb pg_ctl pg_basebackup postgres psql pgbench"

# PostgreSQL's bindir: $PG_BINDIR when set, else /usr/lib/postgresql/15/bin, else the newest
# /usr/lib/postgresql/*/bin that has a server. Prints nothing when none is installed.
pg_bindir() {
    if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/postgres" ]; then
        echo "$PG_BINDIR"
        return
    fi
    if [ -x /usr/lib/postgresql/15/bin/postgres ]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    # Versions are "15/bin", "9.6/bin": sort numerically on the major version.
    newest=$(for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/postgres" ] && echo "${d#/usr/lib/postgresql/}"
    done | sort -t/ -k1,1 -V | tail -n 1)
    [ -n "$newest" ] && echo "/usr/lib/postgresql/$newest"
    return 0
}

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# True when apt knows an installable version of package $1.
available() {
    cand=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

if [ "$mode" = bindir ]; then
    dir=$(pg_bindir)
    [ -n "$dir" ] || exit 1
    echo "$dir"
    exit 0
fi

case "$mode" in
build) want="$build_pkgs" need_pg=0 ;;
# prometheus: its promtool checks the format of pgsteer's /metrics in the integration tests;
# openssl: its command makes the certificates of the TLS tests.
test)
    want="$build_pkgs libcmocka-dev python3 python3-psycopg2 pgbouncer clang-format prometheus openssl"
    need_pg=1
    ;;
demo) want="$build_pkgs python3" need_pg=1 ;;
bench) want="$build_pkgs python3 pgbouncer pgpool2 valgrind" need_pg=1 ;;
drivers) # the driver tests (tests/drivers); npm ships with Debian's nodejs or as its own package
    want="$build_pkgs libcmocka-dev python3 python3-psycopg2 pgbouncer clang-format python3-psycopg \
python3-asyncpg python3-pg8000 python3-sqlalchemy libpostgresql-jdbc-java default-jdk-headless \
libdbd-pg-perl ruby ruby-pg nodejs"
    command -v npm >/dev/null 2>&1 || want="$want npm"
    need_pg=1
    ;;
*)
    echo "usage: $0 build|test|demo|bench|drivers|bindir" >&2
    exit 2
    ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps.sh: this script knows Debian and Ubuntu (dpkg/apt) only; install by hand:" >&2
    echo "  $want PostgreSQL server, client and pgbench" >&2
    exit 1
fi

missing=""
for p in $want; do
    installed "$p" || missing="$missing $p"
done

# PostgreSQL: the tools are looked for by file, because which package ships them differs
# between releases (pgbench is in postgresql-NN, postgresql-client-NN or postgresql-contrib-NN).
pg_missing_tools() {
    dir=$(pg_bindir)
    if [ -z "$dir" ]; then
        echo "$pg_tools"
        return
    fi
    for t in $pg_tools; do
        [ -x "$dir/$t" ] || printf '%s ' "$t"
    done
}

# The packages to install for PostgreSQL, given the tools still missing.
pg_packages() {
    dir=$(pg_bindir)
    if [ -z "$dir" ]; then
        # No server at all: prefer 15 when the release has it, else the release's default.
        if available postgresql-15; then
            echo "postgresql-15 postgresql-client-15"
        else
            echo "postgresql postgresql-client"
        fi
        return
    fi
    ver=$(basename "$(dirname "$dir")")
    pkgs="postgresql-$ver postgresql-client-$ver"
    # pgbench moved between packages over the years; add whichever of these exists.
    case " $(pg_missing_tools) " in
    *" pgbench "*)
        for p in "postgresql-contrib-$ver" postgresql-contrib; do
            if available "$p"; then
                pkgs="$pkgs $p"
                break
            fi
        done
        ;;
    esac
    echo "$pkgs"
}

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
pg_incomplete=0
[ "$need_pg" = 1 ] && [ -n "$(pg_missing_tools)" ] && pg_incomplete=1
updated=0
# As root, refresh apt's lists before asking apt-cache what exists (a fresh machine may have
# none), but only when something is missing: a complete machine stays quiet and offline.
if [ "$is_root" = 1 ] && { [ -n "$missing" ] || [ "$pg_incomplete" = 1 ]; }; then
    echo "deps.sh: updating apt's package lists" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    updated=1
fi

pg_extra=""
if [ "$pg_incomplete" = 1 ]; then
    for p in $(pg_packages); do
        installed "$p" || pg_extra="$pg_extra $p"
    done
    # Every package is installed yet a tool is missing: nothing apt can fix by name.
    if [ -z "$pg_extra" ]; then
        echo "deps.sh: PostgreSQL is installed but these tools are missing:" \
            "$(pg_missing_tools)" >&2
        echo "deps.sh: looked in ${PG_BINDIR:-/usr/lib/postgresql/*/bin}; set PG_BINDIR" \
            "to the directory that has them" >&2
        exit 1
    fi
fi

missing="$missing$pg_extra"
[ -z "$missing" ] && exit 0

if [ "$is_root" != 1 ]; then
    echo "deps.sh: missing packages:$missing" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi

echo "deps.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
[ "$updated" = 1 ] || apt-get update -qq >&2
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >&2

# The first install may have pulled a server whose pgbench lives in yet another package.
if [ "$need_pg" = 1 ] && [ -n "$(pg_missing_tools)" ]; then
    more=""
    for p in $(pg_packages); do
        installed "$p" || more="$more $p"
    done
    if [ -n "$more" ]; then
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $more >&2
    fi
fi
if [ "$need_pg" = 1 ] && [ -n "$(pg_missing_tools)" ]; then
    echo "deps.sh: PostgreSQL tools still missing after install: $(pg_missing_tools)" >&2
    exit 1
fi
exit 0

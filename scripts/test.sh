#!/usr/bin/env bash
# The Portcullis test command: every test of the workspace, against real databases.
#
#   scripts/test.sh                  services + test tools, then all tests and doctests
#   scripts/test.sh -E 'test(jwt)'   same set-up, then only the nextest tests the arguments select
#                                    (arguments go to `cargo nextest run`; doctests are skipped)
#   PORTCULLIS_TEST_SETUP_ONLY=1 scripts/test.sh
#                                    only the set-up (databases up, test tools installed), no cargo
#
# What it needs on the machine: PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and MariaDB on
# 127.0.0.1:3306 (root, no password), both started here if they are down; psql, pg_isready,
# pgbench, mariadb, mariadb-admin; python3 with venv; node and npm; cargo with cargo-nextest
# (installed if missing); a JDK, PgJDBC and MariaDB Connector/J (installed with apt-get if
# missing).
#
# What it provides to the tests:
#   PORTCULLIS_TEST_PYTHON  a Python 3 interpreter (venv in target/test-venv) with psycopg 3,
#                           asyncpg, PyMySQL and mysql-connector-python (with its C extension),
#                           for the tests that drive the gateway from Python.
#   PORTCULLIS_TEST_NODE_MODULES
#                           a node_modules directory (target/test-node/node_modules) with mysql2,
#                           for the tests that drive the MySQL listener from Node.js.
#   PORTCULLIS_TEST_NO_JDBC set (to the reason) only when javac or PgJDBC could not be installed:
#                           the masking bypass suite then skips its JDBC runs, loudly.
#
# The last line it prints is nextest's own summary line; the exit status is non-zero if any test
# or doctest failed, or if the set-up could not be completed.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

PG_HOST=127.0.0.1
PG_PORT=5432
MY_HOST=127.0.0.1
MY_PORT=3306
SERVICE_WAIT_SECONDS=30
VENV="$ROOT/target/test-venv"
MYSQL_CONNECTOR_PYTHON=9.7.0
NODE_DIR="$ROOT/target/test-node"

section() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

require_commands() {
    local missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    if ((${#missing[@]})); then
        die "missing commands: ${missing[*]} (install the PostgreSQL 15 / MariaDB clients, python3, Node.js with npm and Rust)"
    fi
}

# --- databases ------------------------------------------------------------------------------

pg_answers() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -t 2 &&
        psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -w -Atc 'select 1' >/dev/null 2>&1
}

mariadb_answers() {
    # `mariadb-admin ping` succeeds even when the login is refused, so also log in.
    mariadb-admin --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -uroot --connect-timeout=2 ping >/dev/null 2>&1 &&
        mariadb --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -uroot --connect-timeout=2 -e 'select 1' >/dev/null 2>&1
}

wait_for() { # wait_for NAME CHECK_FUNCTION
    local name=$1 check=$2 waited=0
    until "$check"; do
        if ((waited >= SERVICE_WAIT_SECONDS)); then return 1; fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "$name: answering after ${waited}s"
}

ensure_postgres() {
    if pg_answers; then
        echo "PostgreSQL: answering on $PG_HOST:$PG_PORT"
        return
    fi
    echo "PostgreSQL: not answering on $PG_HOST:$PG_PORT, starting it"
    local version="" dir
    for dir in /etc/postgresql/*/main; do [[ -d "$dir" ]] && version="$(basename "$(dirname "$dir")")"; done
    [[ -n "$version" ]] || die "PostgreSQL is down and no cluster is configured under /etc/postgresql"
    # Exit status 2 means "already running" (e.g. listening, but not yet accepting): wait anyway.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL pg_answers ||
        die "PostgreSQL does not answer on $PG_HOST:$PG_PORT as user postgres (trust) after ${SERVICE_WAIT_SECONDS}s; see /var/log/postgresql/postgresql-$version-main.log"
}

ensure_mariadb() {
    if mariadb_answers; then
        echo "MariaDB: answering on $MY_HOST:$MY_PORT"
        return
    fi
    echo "MariaDB: not answering on $MY_HOST:$MY_PORT, starting it"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    wait_for MariaDB mariadb_answers ||
        die "MariaDB does not answer on $MY_HOST:$MY_PORT as root without a password after ${SERVICE_WAIT_SECONDS}s; see the MariaDB error log under /var/log/mysql/"
}

# --- test tools -----------------------------------------------------------------------------

ensure_python_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "creating $VENV"
        python3 -m venv "$VENV" ||
            die "python3 -m venv failed (on Debian's own python3: apt-get install python3-venv)"
    fi
    # mysql-connector-python is pinned: its tests cover both the pure-Python implementation and
    # the C extension, and the C extension of 26.x links symbols of OpenSSL 3.2 that Debian 12's
    # OpenSSL 3.0 (already loaded by Python's ssl module) lacks, so it would not load.
    if "$VENV/bin/python" -c "import psycopg, asyncpg, pymysql, mysql.connector, sys; sys.exit(0 if psycopg.__version__.startswith('3.') and mysql.connector.__version__ == '$MYSQL_CONNECTOR_PYTHON' and mysql.connector.HAVE_CEXT else 1)" 2>/dev/null; then
        echo "Python test venv: psycopg 3, asyncpg, PyMySQL and mysql-connector-python $MYSQL_CONNECTOR_PYTHON present"
    else
        echo "Python test venv: installing psycopg[binary] 3, asyncpg, PyMySQL and mysql-connector-python $MYSQL_CONNECTOR_PYTHON"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'psycopg[binary]>=3.1,<4' 'asyncpg>=0.29' 'PyMySQL>=1.1,<2' \
            "mysql-connector-python==$MYSQL_CONNECTOR_PYTHON" ||
            die "pip could not install psycopg[binary], asyncpg, PyMySQL and mysql-connector-python into $VENV"
    fi
    export PORTCULLIS_TEST_PYTHON="$VENV/bin/python"
    echo "PORTCULLIS_TEST_PYTHON=$PORTCULLIS_TEST_PYTHON"
}

# mysql2 for the tests that drive the MySQL listener from Node.js, in a directory of the build
# tree's own (npm never touches the repository's files).
ensure_node_modules() {
    if [[ -f "$NODE_DIR/node_modules/mysql2/package.json" ]]; then
        echo "Node test modules: mysql2 present"
    else
        echo "Node test modules: installing mysql2 into $NODE_DIR"
        mkdir -p "$NODE_DIR"
        [[ -f "$NODE_DIR/package.json" ]] ||
            printf '{ "name": "portcullis-test-node", "private": true }\n' >"$NODE_DIR/package.json"
        npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error 'mysql2@^3' >/dev/null ||
            die "npm could not install mysql2 into $NODE_DIR"
    fi
    export PORTCULLIS_TEST_NODE_MODULES="$NODE_DIR/node_modules"
    echo "PORTCULLIS_TEST_NODE_MODULES=$PORTCULLIS_TEST_NODE_MODULES"
}

# libclang for pg_query's build (BUILD_PACKAGES, scripts/lib.sh); the audit tests edit a SQLite
# trail with the sqlite3 shell, as an attacker with file access would.
ensure_build_packages() {
    ensure_apt_packages "libclang and sqlite3" \
        "(libclang builds pg_query; sqlite3 is used by the audit tests)" \
        "${BUILD_PACKAGES[@]}" sqlite3
}

# A JDK and PgJDBC (Debian's libpostgresql-jdbc-java, /usr/share/java/postgresql.jar) for the
# masking bypass suite's JDBC client (tests/clients/BypassJdbc.java). When they cannot be
# installed (no network, no root) the suite skips its JDBC runs with a loud message: the reason
# reaches the tests as PORTCULLIS_TEST_NO_JDBC, and a missing driver without that reason fails.
ensure_jdbc() {
    local packages=()
    command -v javac >/dev/null 2>&1 || packages+=(default-jdk-headless)
    [[ -f /usr/share/java/postgresql.jar ]] || packages+=(libpostgresql-jdbc-java)
    if ((${#packages[@]} == 0)); then
        echo "JDBC: javac and PgJDBC present"
        return
    fi
    # In a subshell: ensure_apt_packages dies on failure, and this failure is not fatal.
    if (ensure_apt_packages "JDBC client" "(the masking bypass suite drives PgJDBC)" "${packages[@]}"); then
        echo "JDBC: installed ${packages[*]}"
    else
        export PORTCULLIS_TEST_NO_JDBC="apt-get could not install ${packages[*]}"
        printf '\n!!!!!!!! %s: the JDBC runs of the masking bypass suite will be SKIPPED !!!!!!!!\n\n' \
            "$PORTCULLIS_TEST_NO_JDBC" >&2
    fi
}

# MariaDB Connector/J (Debian's libmariadb-java, /usr/share/java/mariadb-java-client.jar) for the
# MySQL listener's JDBC test (tests/mysql_clients.rs runs tests/clients/MariadbJdbc.java with the
# JDK above). Not skipped when missing: that test then fails, saying so.
ensure_mariadb_jdbc() {
    if [[ -f /usr/share/java/mariadb-java-client.jar ]]; then
        echo "MariaDB Connector/J present"
        return
    fi
    # In a subshell: ensure_apt_packages dies on failure, and the other tests still run.
    if (ensure_apt_packages "MariaDB Connector/J" "(the MySQL client tests drive it)" libmariadb-java); then
        echo "MariaDB Connector/J: installed libmariadb-java"
    else
        printf '\n!!!!!!!! apt-get could not install libmariadb-java: the Connector/J test in tests/mysql_clients.rs will FAIL !!!!!!!!\n\n' >&2
    fi
}

ensure_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest --version | head -n1
    else
        echo "cargo-nextest missing: cargo install cargo-nextest --locked"
        cargo install --quiet cargo-nextest --locked
    fi
}

# --- main -----------------------------------------------------------------------------------

section "tools"
require_commands cargo python3 node npm psql pg_isready pgbench mariadb mariadb-admin

section "databases"
ensure_postgres
ensure_mariadb

section "test tools"
ensure_build_packages
ensure_python_venv
ensure_node_modules
ensure_jdbc
ensure_mariadb_jdbc
ensure_nextest

if [[ "${PORTCULLIS_TEST_SETUP_ONLY:-0}" == 1 ]]; then
    section "set-up done (PORTCULLIS_TEST_SETUP_ONLY=1: no tests run)"
    exit 0
fi

NEXTEST_LOG="$ROOT/target/nextest/test-sh.log"
mkdir -p "$(dirname "$NEXTEST_LOG")"
nextest_profile=default
[[ -n "${CI:-}" && "${CI}" != false ]] && nextest_profile=ci
color=never
[[ -t 1 ]] && color=always

section "cargo nextest run (profile $nextest_profile)"
set +e
cargo nextest run --workspace --all-targets --no-fail-fast --profile "$nextest_profile" \
    --color "$color" "$@" 2>&1 | tee "$NEXTEST_LOG"
nextest_rc=${PIPESTATUS[0]}
set -e

doc_rc=0
doc_result="skipped (nextest arguments given)"
if (($# == 0)); then
    section "cargo test --workspace --doc"
    set +e
    cargo test --workspace --doc
    doc_rc=$?
    set -e
    if ((doc_rc == 0)); then doc_result="passed"; else doc_result="FAILED (exit $doc_rc)"; fi
fi

section "summary"
echo "doctests: $doc_result"
plain_log="$(sed -e 's/\x1b\[[0-9;]*m//g' "$NEXTEST_LOG")"
summary="$(grep -E '^[[:space:]]*Summary \[' <<<"$plain_log" | tail -n1 || true)"
if [[ -n "$summary" ]]; then
    # The tests that did not pass (nextest lists them under its summary), then the summary itself.
    awk '/^[[:space:]]*Summary \[/ { after = 1; next } after && /^[[:space:]]+[A-Z][A-Z-]* +\[/' <<<"$plain_log"
    echo "$summary"
else
    echo "test.sh: nextest printed no summary line (exit status $nextest_rc): the build failed or no tests were found, see above"
fi

if ((nextest_rc != 0 || doc_rc != 0)); then exit 1; fi

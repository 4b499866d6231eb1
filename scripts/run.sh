#!/usr/bin/env bash
# Builds and runs the gateway, installing what the build needs first.
#
#   scripts/run.sh               the quickstart: examples/quickstart.toml, a gateway on
#                                127.0.0.1:6432 in front of PostgreSQL on 127.0.0.1:5432, and
#                                on 127.0.0.1:3307 in front of MariaDB/MySQL on 127.0.0.1:3306
#   scripts/run.sh FILE          the same with another configuration file
#
# What it needs on the machine: Rust (cargo, https://rustup.rs); on Debian/Ubuntu it installs
# libclang with apt-get (through sudo when not root), which pg_query's build needs. Elsewhere,
# install libclang yourself (and set LIBCLANG_PATH if the build cannot find it).
# The first build takes a few minutes (release profile); later runs start at once.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"

die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

if (($# > 1)); then
    die "usage: scripts/run.sh [CONFIG_FILE] (default: examples/quickstart.toml)"
fi
config="${1:-$ROOT/examples/quickstart.toml}"
# A relative path means relative to where the script was called from, as for any command.
[[ "$config" == /* ]] || config="$PWD/$config"
[[ -f "$config" ]] || die "no configuration file at $config"

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust (stable) with https://rustup.rs, then run this again"

if command -v dpkg-query >/dev/null 2>&1; then
    ensure_apt_packages "libclang" "(pg_query's build needs libclang)" "${BUILD_PACKAGES[@]}"
elif [[ -z "${LIBCLANG_PATH:-}" ]]; then
    echo "build packages: not a Debian/Ubuntu system; if the build stops with \"Unable to find libclang\", install libclang (LLVM) and set LIBCLANG_PATH to its directory"
fi

if [[ "$config" == "$ROOT/examples/quickstart.toml" ]] && command -v pg_isready >/dev/null 2>&1 &&
    ! pg_isready -q -h 127.0.0.1 -p 5432 -t 2; then
    echo "warning: nothing answers on 127.0.0.1:5432; the quickstart's target is a PostgreSQL there (user postgres, trust), so logins will fail until it runs" >&2
fi
if [[ "$config" == "$ROOT/examples/quickstart.toml" ]] && command -v mariadb-admin >/dev/null 2>&1 &&
    ! mariadb-admin --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -uroot --connect-timeout=2 ping >/dev/null 2>&1; then
    echo "warning: nothing answers on 127.0.0.1:3306; the quickstart's MySQL target is a MariaDB or MySQL there (user root, no password), so logins on 3307 will fail until it runs" >&2
fi

cd "$ROOT"
echo "starting: cargo run --release -- run --config $config"
exec cargo run --release --bin portcullis -- run --config "$config"

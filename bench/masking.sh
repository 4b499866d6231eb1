#!/usr/bin/env bash
# Masking throughput: one large result (6 columns, 2 of them masked) read directly from
# PostgreSQL, through Portcullis by an identity no masking rule names, and through Portcullis by
# one the rules mask; rows per second of each, and the gateway's peak RSS for each result size.
# Every path runs the gateway's defaults (policy judged, audit trail in written durability).
# See bench/README.md.
#
# Environment:
#   BENCH_ROWS      result sizes, in rows (default "100000 1000000")
#   BENCH_REPEAT    runs per size and path; the table shows the median (default 3)
#   PORTCULLIS_BIN  use this portcullis binary instead of building target/release/portcullis
#   ROW_RATE_BIN    use this build of examples/row_rate.rs instead of building it
#   BENCH_OUT       where to write the markdown table (default bench/results/masking.md)
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
read -r -a SIZES <<<"${BENCH_ROWS:-100000 1000000}"
REPEAT="${BENCH_REPEAT:-3}"
OUT="${BENCH_OUT:-$ROOT/bench/results/masking.md}"
DB=portcullis_mask_bench
PG_HOST=127.0.0.1
PG_PORT=5432
export PGSSLMODE=disable
unset PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT PGSERVICE

note() { printf '%s\n' "$*" >&2; }
die() { printf 'masking.sh: error: %s\n' "$*" >&2; exit 1; }
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer"
max_rows=0
for n in "${SIZES[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROWS must hold positive integers"
    ((n > max_rows)) && max_rows=$n
done

TMP="$(mktemp -d /tmp/portcullis-maskbench.XXXXXX)"
GATEWAY_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$GATEWAY_PID" ]] && kill -0 "$GATEWAY_PID" 2>/dev/null; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT

pg() { psql -X -q -w -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@"; }
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 5 || die "PostgreSQL does not answer on $PG_HOST:$PG_PORT"
have="$(pg -d "$DB" -Atc 'select count(*) from wide' 2>/dev/null || echo 0)"
if ((have < max_rows)); then
    note "creating $DB with $max_rows rows"
    pg -d postgres -c "drop database if exists $DB" -c "create database $DB" >/dev/null
    pg -d "$DB" -c "create table wide (id int primary key, name text, email text, ssn text, amount int, created timestamptz)" \
        -c "insert into wide select g, 'customer ' || g, 'user' || g || '@example.com',
               lpad((g % 899 + 100)::text, 3, '0') || '-' || lpad((g % 99 + 1)::text, 2, '0') || '-' || lpad((g % 9999 + 1)::text, 4, '0'),
               g % 100000, timestamptz '2024-01-01' + g * interval '1 second'
            from generate_series(1, $max_rows) g" \
        -c "vacuum analyze wide" >/dev/null
fi

BIN="${PORTCULLIS_BIN:-}"
RATE="${ROW_RATE_BIN:-}"
build=()
[[ -z "$BIN" ]] && build+=(--bin portcullis) && BIN="$ROOT/target/release/portcullis"
[[ -z "$RATE" ]] && build+=(--example row_rate) && RATE="$ROOT/target/release/examples/row_rate"
if ((${#build[@]})); then
    note "building (cargo build --release ${build[*]})"
    cargo build --release "${build[@]}" >&2
fi

SECRET="$TMP/hs256.secret"
(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$SECRET")
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$TMP/bench.toml" <<EOF
[gateway]
node = "bench"
data_dir = "$TMP/data"

[postgres]
listen = "127.0.0.1:$PORT"
allow_plaintext_password = true

[identity.jwt]
issuer = "bench"
audience = ["portcullis"]
algorithms = ["HS256"]
hs256_secret_file = "$SECRET"

[[targets]]
name = "$DB"
host = "$PG_HOST"
port = $PG_PORT
database = "$DB"
user = "postgres"

[policy]
[[policy.access]]
name = "bench"
groups = ["plain", "masked"]
mode = "read-only"

[masking]
[[masking.rules]]
name = "contact"
columns = ["wide.email"]
strategy = "email"
groups = ["masked"]

[[masking.rules]]
name = "national-id"
columns = ["wide.ssn"]
strategy = "partial"
keep_last = 4
groups = ["masked"]
EOF
token() { "$BIN" token mint --key "$SECRET" --iss bench --aud portcullis --sub "$1" --groups "$1" --ttl 2h | tail -n1 | tr -d '[:space:]'; }
PLAIN_TOKEN="$(token plain)"
MASKED_TOKEN="$(token masked)"
RUST_LOG=warn "$BIN" run --config "$TMP/bench.toml" >"$TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || { tail -n 20 "$TMP/gateway.log" >&2; die "the gateway did not start"; }

conninfo() { # conninfo PATH
    case "$1" in
    direct) echo "host=$PG_HOST port=$PG_PORT user=postgres dbname=$DB" ;;
    unmasked) echo "host=127.0.0.1 port=$PORT user=plain password=$PLAIN_TOKEN dbname=$DB" ;;
    masked) echo "host=127.0.0.1 port=$PORT user=masked password=$MASKED_TOKEN dbname=$DB" ;;
    esac
}
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$GATEWAY_PID/status"; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A RATE_OF=() PEAK_OF=()
for n in "${SIZES[@]}"; do
    sql="select id, name, email, ssn, amount, created from wide order by id limit $n"
    for path in direct unmasked masked; do
        rates=()
        peak=0
        for _ in $(seq "$REPEAT"); do
            # Reset the gateway's peak RSS so that each size reports its own.
            echo 5 >"/proc/$GATEWAY_PID/clear_refs" 2>/dev/null || true
            line="$("$RATE" "$(conninfo "$path")" "$sql")"
            got="$(sed -n 's/.*rows=\([0-9]*\).*/\1/p' <<<"$line")"
            [[ "$got" == "$n" ]] || die "$path, $n rows: the client read $got rows ($line)"
            rates+=("$(sed -n 's/.*rows_per_second=\([0-9]*\).*/\1/p' <<<"$line")")
            if [[ "$path" != direct ]]; then
                h="$(hwm_kib)"
                ((h > peak)) && peak=$h
            fi
        done
        RATE_OF[$path,$n]="$(printf '%s\n' "${rates[@]}" | median)"
        PEAK_OF[$path,$n]=$peak
        note "$n rows, $path: ${RATE_OF[$path,$n]} rows/s (runs: ${rates[*]})"
    done
done

mkdir -p "$(dirname "$OUT")"
{
    echo "Masking throughput, $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(pg -d postgres -Atc 'show server_version'); median of $REPEAT runs;"
    echo "6 columns (int, text, text, text, int, timestamptz), email and ssn masked (email, partial); binary results, streamed."
    echo
    echo "| rows | direct rows/s | unmasked rows/s | masked rows/s | masked / direct | gateway peak RSS unmasked | masked |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for n in "${SIZES[@]}"; do
        d=${RATE_OF[direct,$n]} u=${RATE_OF[unmasked,$n]} m=${RATE_OF[masked,$n]}
        printf '| %s | %s | %s | %s | %sx | %s MiB | %s MiB |\n' "$n" "$d" "$u" "$m" \
            "$(awk -v m="$m" -v d="$d" 'BEGIN { printf "%.2f", m / d }')" \
            "$((PEAK_OF[unmasked,$n] / 1024))" "$((PEAK_OF[masked,$n] / 1024))"
    done
} | tee "$OUT"

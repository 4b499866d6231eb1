#!/usr/bin/env bash
# Whole-path PostgreSQL benchmark: pgbench -S (select-only) against PostgreSQL directly, through
# Portcullis, and through pgbouncer, in the same run and the same order. See bench/README.md.
#
# Environment:
#   BENCH_SECONDS   duration of each pgbench run (default 15)
#   BENCH_SCALE     pgbench scale factor for portcullis_bench (default 10; 1 = 100k accounts)
#   BENCH_ROUNDS    how many times to repeat the whole sequence; the table shows medians (default 1)
#   BENCH_SYSTEMS   which systems to drive, in order (default "direct portcullis pgbouncer")
#   BENCH_REINIT=1  drop and re-create portcullis_bench even if it already has the right scale
#   PORTCULLIS_BIN  use this portcullis binary instead of building target/release/portcullis
#   PORTCULLIS_EMBEDDED_BIN
#                   use this build of examples/embedded.rs instead of building
#                   target/release/examples/embedded (BENCH_AUDIT=off)
#   BENCH_RUST_LOG  RUST_LOG for the gateway during the runs (default warn)
#   BENCH_OUT       where to write the markdown table (default bench/results/latest.md)
#   BENCH_AUDIT     the gateway's audit modes, one Portcullis column each, in this order
#                   (default "default"): "default" runs the portcullis binary with no [audit]
#                   section, i.e. what a deployment gets without configuring the trail (written
#                   durability, segment log and SQLite index in data_dir, a generated signing
#                   key); "batched" or "sync" run it with that durability and the same default
#                   sinks; "off" runs the embedding example (examples/embedded.rs: log audit sink,
#                   and the log at warn, so no record is even built).
#                   E.g. BENCH_AUDIT="off default sync".
#
# Exit status: 0 when every pgbench run that was attempted succeeded (a system that could not be
# started is reported as "skipped" in the table), 1 otherwise.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
SCALE="${BENCH_SCALE:-10}"
ROUNDS="${BENCH_ROUNDS:-1}"
SYSTEMS="${BENCH_SYSTEMS:-direct portcullis pgbouncer}"
OUT="${BENCH_OUT:-$ROOT/bench/results/latest.md}"
read -r -a AUDIT_MODES <<<"${BENCH_AUDIT:-default}"
MODES=(simple prepared)
CLIENTS=(1 16)
DB=portcullis_bench
PG_HOST=127.0.0.1
PG_PORT=5432

# TLS is not what is measured here: PostgreSQL on Debian has ssl=on, and libpq's default
# sslmode=prefer would put TLS on the direct path only. Every system is driven in plaintext.
export PGSSLMODE=disable
unset PGPASSWORD PGUSER PGDATABASE PGHOST PGPORT PGSERVICE

section() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" >&2; }
die() { printf 'pgbench.sh: error: %s\n' "$*" >&2; exit 1; }

for c in pgbench psql pg_isready python3 awk; do
    command -v "$c" >/dev/null 2>&1 || die "missing command: $c"
done
[[ "$SECONDS_PER_RUN" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
((${#AUDIT_MODES[@]})) || die "BENCH_AUDIT must name at least one of off, default, batched, sync"
for m in "${AUDIT_MODES[@]}"; do
    case "$m" in off | default | batched | sync) ;; *) die "unknown audit mode in BENCH_AUDIT: $m (off, default, batched or sync)" ;; esac
done
[[ "$(printf '%s\n' "${AUDIT_MODES[@]}" | sort | uniq -d)" == "" ]] || die "BENCH_AUDIT names a mode twice"
for s in $SYSTEMS; do
    case "$s" in direct | portcullis | pgbouncer) ;; *) die "unknown system in BENCH_SYSTEMS: $s" ;; esac
done

# "portcullis" stands for one system per audit mode, "portcullis-MODE", each with its own gateway
# process. DRIVEN: the systems as driven, in order; TABLE: the table's columns (all of them,
# "not run" for those outside BENCH_SYSTEMS).
DRIVEN=()
for s in $SYSTEMS; do
    if [[ "$s" == portcullis ]]; then
        for m in "${AUDIT_MODES[@]}"; do DRIVEN+=("portcullis-$m"); done
    else
        DRIVEN+=("$s")
    fi
done
TABLE=(direct)
for m in "${AUDIT_MODES[@]}"; do TABLE+=("portcullis-$m"); done
TABLE+=(pgbouncer)

TMP="$(mktemp -d /tmp/portcullis-bench.XXXXXX)"
chmod 755 "$TMP"
declare -A GATEWAY_PID=() # portcullis-MODE -> process id
PGBOUNCER_PIDFILE=""

cleanup() {
    local rc=$? pid
    # SIGTERM: each gateway drains its (by now idle) sessions and closes its audit trail.
    for pid in "${GATEWAY_PID[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ -n "$PGBOUNCER_PIDFILE" && -s "$PGBOUNCER_PIDFILE" ]]; then
        kill "$(cat "$PGBOUNCER_PIDFILE")" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# psql_through PORT USER: can a client run `select 1` through this port?
psql_through() {
    psql -X -q -w -h 127.0.0.1 -p "$1" -U "$2" -d "$DB" -Atc 'select 1' >/dev/null 2>"$TMP/psql.err"
}

wait_until() { # wait_until SECONDS COMMAND...
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# Where each system listens and whom pgbench logs in as; a system that could not be started is
# marked "skipped: reason" and its columns say so.
declare -A PORT=() USER_OF=() SKIP=() TPS=() LAT=()

# --- PostgreSQL and the benchmark database ---------------------------------------------------

section "PostgreSQL"
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 5 ||
    die "PostgreSQL does not answer on $PG_HOST:$PG_PORT (scripts/test.sh starts it; or: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start)"
pg() { psql -X -q -w -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@"; }
PG_VERSION="$(pg -d postgres -Atc 'show server_version')"
note "PostgreSQL $PG_VERSION on $PG_HOST:$PG_PORT"

current_scale="$(pg -d "$DB" -Atc 'select count(*) from pgbench_branches' 2>/dev/null || echo 0)"
if [[ "${BENCH_REINIT:-0}" == 1 || "$current_scale" != "$SCALE" ]]; then
    section "initialising $DB (pgbench -i -s $SCALE)"
    pg -d postgres -c "drop database if exists $DB" -c "create database $DB"
    pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" -U postgres "$DB" 2>&1 | tail -n 2 >&2
else
    note "$DB already initialised at scale $SCALE (BENCH_REINIT=1 re-creates it)"
fi
# pgbench runs with -n (no vacuum of its own, which a gateway's policy might refuse); vacuum once
# here, directly, so every system starts from the same table state.
pg -d "$DB" -c 'vacuum analyze' >/dev/null
PORT[direct]=$PG_PORT
USER_OF[direct]=postgres

# --- Portcullis --------------------------------------------------------------------------------

# One gateway per audit mode, all started before the runs and all accepting the same token:
# "default", "batched" and "sync" are the portcullis binary with its default trail (segment log
# and SQLite index in its data_dir), "off" is the embedding example (gateway-core +
# proto-postgres, log audit sink). Both have the same HS256 login, the
# same target and the same policy (an access rule and a guardrail, so every statement is parsed
# once and judged from the cache after that, as in a real deployment), so the columns differ by
# their audit trail only.
start_portcullis() {
    local bin="${PORTCULLIS_BIN:-}" embedded="${PORTCULLIS_EMBEDDED_BIN:-}" build=() m
    EMBEDDED_BIN="$embedded"
    # The binary is always needed: it mints the token.
    [[ -z "$bin" ]] && build+=(--bin portcullis) && bin="$ROOT/target/release/portcullis"
    if [[ " ${AUDIT_MODES[*]} " == *" off "* && -z "$embedded" ]]; then
        build+=(--example embedded)
        EMBEDDED_BIN="$ROOT/target/release/examples/embedded"
    fi
    if ((${#build[@]})); then
        section "building Portcullis (cargo build --release ${build[*]})"
        if ! cargo build --release "${build[@]}" >&2; then
            for m in "${AUDIT_MODES[@]}"; do SKIP[portcullis-$m]="skipped: release build failed"; done
            return
        fi
    fi
    PORTCULLIS_BIN_PATH="$bin"
    if [[ ! -x "$bin" ]]; then
        for m in "${AUDIT_MODES[@]}"; do SKIP[portcullis-$m]="skipped: no executable at $bin"; done
        return
    fi

    SECRET_FILE="$TMP/hs256.secret"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$SECRET_FILE")
    POLICY_FILE="$TMP/policy.toml"
    cat >"$POLICY_FILE" <<EOF
[policy]
[[policy.access]]
name = "bench"
groups = ["bench"]
mode = "read-write"

[[policy.rules]]
name = "no-unfiltered-writes"
action = "deny"
kinds = ["update", "delete"]
filter = "missing"
message = "UPDATE and DELETE need a WHERE clause"
EOF
    local mint=("$bin" token mint --key "$SECRET_FILE" --iss bench --aud portcullis --sub bench --groups bench --ttl 2h) rc=0 token
    "${mint[@]}" >"$TMP/mint.out" 2>"$TMP/mint.err" || rc=$?
    token="$(tail -n1 "$TMP/mint.out" | tr -d '[:space:]')"
    if ((rc != 0)) || [[ -z "$token" ]]; then
        note "'portcullis token mint' gave no token (exit status $rc, ${#token} characters on stdout); its stderr:"
        sed 's/^/    /' "$TMP/mint.err" >&2
        for m in "${AUDIT_MODES[@]}"; do SKIP[portcullis-$m]="skipped: token mint failed"; done
        return
    fi
    # The token is needed by the pgbench runs only: keep it in a file, not in the environment.
    printf '%s' "$token" >"$TMP/token"

    for m in "${AUDIT_MODES[@]}"; do start_gateway "$m"; done
}

start_gateway() { # start_gateway AUDIT_MODE: starts system portcullis-AUDIT_MODE
    local mode=$1 sys="portcullis-$1" port log="$TMP/portcullis-$1.log" bin
    port="$(free_port)"
    case "$mode" in
    off)
        bin="$EMBEDDED_BIN"
        [[ -x "$bin" ]] || { SKIP[$sys]="skipped: no executable at $bin"; return; }
        section "starting Portcullis, audit off ($bin)"
        # The log audit sink writes each record as an INFO event on portcullis::audit, and
        # serializes it only when that event is enabled: keep it off whatever BENCH_RUST_LOG says.
        RUST_LOG="${BENCH_RUST_LOG:-warn},portcullis::audit=off" "$bin" \
            --listen "127.0.0.1:$port" --upstream-host "$PG_HOST" --upstream-port "$PG_PORT" \
            --database "$DB" --upstream-user postgres \
            --jwt-secret-file "$SECRET_FILE" --jwt-issuer bench --jwt-audience portcullis \
            --policy "$POLICY_FILE" \
            >"$log" 2>&1 &
        ;;
    default | batched | sync)
        bin="$PORTCULLIS_BIN_PATH"
        section "starting Portcullis, audit $mode ($bin)"
        local audit_section=""
        [[ "$mode" == default ]] || audit_section="$(printf '[audit]\ndurability = "%s"\n' "$mode")"
        cat >"$TMP/bench-$mode.toml" <<EOF
[gateway]
node = "bench"
data_dir = "$TMP/data-$mode"

$audit_section

[postgres]
listen = "127.0.0.1:$port"
allow_plaintext_password = true

[identity.jwt]
issuer = "bench"
audience = ["portcullis"]
algorithms = ["HS256"]
hs256_secret_file = "$SECRET_FILE"

[[targets]]
name = "$DB"
host = "$PG_HOST"
port = $PG_PORT
database = "$DB"
user = "postgres"

$(cat "$POLICY_FILE")
EOF
        # Logging per statement would be measured too: warnings only, unless asked otherwise.
        RUST_LOG="${BENCH_RUST_LOG:-warn}" "$bin" run --config "$TMP/bench-$mode.toml" >"$log" 2>&1 &
        ;;
    esac
    GATEWAY_PID[$sys]=$!
    local pid=$! deadline=$((SECONDS + 30)) listening=0
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then listening=1 && break; fi
        sleep 0.2
    done
    if ((!listening)); then
        note "Portcullis (audit $mode) did not listen on 127.0.0.1:$port (exited, or not within 30 s); last lines of its log:"
        tail -n 20 "$log" | sed 's/^/    /' >&2
        SKIP[$sys]="skipped: gateway did not start"
    elif ! PGPASSWORD="$(cat "$TMP/token")" psql_through "$port" bench; then
        note "psql through Portcullis (audit $mode) failed:"
        sed 's/^/    /' "$TMP/psql.err" >&2
        tail -n 20 "$log" | sed 's/^/    /' >&2
        SKIP[$sys]="skipped: login through the gateway failed"
    else
        note "Portcullis (audit $mode) listening on 127.0.0.1:$port"
        PORT[$sys]=$port
        USER_OF[$sys]=bench
    fi
}

# --- pgbouncer ---------------------------------------------------------------------------------

start_pgbouncer() {
    local bin
    bin="$(command -v pgbouncer || true)"
    [[ -z "$bin" && -x /usr/sbin/pgbouncer ]] && bin=/usr/sbin/pgbouncer
    if [[ -z "$bin" ]]; then
        section "installing pgbouncer (apt-get install -y -qq pgbouncer)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq pgbouncer >/dev/null 2>&1 ||
            { apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null; } ||
            { SKIP[pgbouncer]="skipped: could not install pgbouncer"; return; }
        bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
    fi

    section "starting pgbouncer ($("$bin" --version | head -n1))"
    local dir="$TMP/pgbouncer" port
    port="$(free_port)"
    mkdir -p "$dir"
    # pgbouncer 1.18 (Debian 12) cannot keep protocol-level prepared statements in transaction
    # pooling (max_prepared_statements arrived in 1.21), so -M prepared needs session pooling;
    # with one pgbench connection per server connection, session mode is the fair comparison.
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$DB = host=$PG_HOST port=$PG_PORT dbname=$DB user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
default_pool_size = 20
max_client_conn = 100
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    printf '"postgres" ""\n' >"$dir/userlist.txt"
    PGBOUNCER_PIDFILE="$dir/pgbouncer.pid"
    # pgbouncer refuses to run as root.
    local as=()
    if ((EUID == 0)); then
        chown -R postgres: "$dir"
        as=(runuser -u postgres --)
    fi
    if ! "${as[@]}" "$bin" -d -q "$dir/pgbouncer.ini" || ! wait_until 15 psql_through "$port" postgres; then
        note "pgbouncer did not start; last lines of its log:"
        tail -n 20 "$dir/pgbouncer.log" 2>/dev/null | sed 's/^/    /' >&2
        SKIP[pgbouncer]="skipped: pgbouncer did not start"
        return
    fi
    note "pgbouncer listening on 127.0.0.1:$port (pool_mode = session)"
    PORT[pgbouncer]=$port
    USER_OF[pgbouncer]=postgres
    PGBOUNCER_VERSION="$("$bin" --version | head -n1 | awk '{print $NF}')"
}

PGBOUNCER_VERSION=""
for s in $SYSTEMS; do
    case "$s" in
    portcullis) start_portcullis ;;
    pgbouncer) start_pgbouncer ;;
    esac
done

# --- runs ------------------------------------------------------------------------------------

# proxy_pid SYSTEM: the process whose CPU time is the proxy's (nothing for direct).
proxy_pid() {
    case "$1" in
    portcullis-*) echo "${GATEWAY_PID[$1]:-}" ;;
    pgbouncer) [[ -s "$PGBOUNCER_PIDFILE" ]] && cat "$PGBOUNCER_PIDFILE" ;;
    esac
}

# cpu_ticks PID: user + system CPU time of the process (all its threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }

run_pgbench() { # run_pgbench SYSTEM MODE CLIENTS ROUND: appends to RUN_TPS / RUN_LAT / RUN_CPU
    local sys=$1 mode=$2 c=$3 round=$4 j out key="$1,$2,$3" pw="" tps lat pid ticks_before="" ticks_after="" txns
    j=$((c < 2 ? c : 2))
    out="$TMP/$sys-$mode-$c-$round.out"
    [[ "$sys" == portcullis-* ]] && pw="$(cat "$TMP/token")"
    note "$(printf 'round %s  %-18s -M %-8s -c %-2s -j %s -T %s' "$round" "$sys" "$mode" "$c" "$j" "$SECONDS_PER_RUN")"
    pid="$(proxy_pid "$sys")"
    [[ -n "$pid" ]] && ticks_before="$(cpu_ticks "$pid")"
    if PGPASSWORD="$pw" pgbench -n -S -M "$mode" -c "$c" -j "$j" -T "$SECONDS_PER_RUN" \
        -h 127.0.0.1 -p "${PORT[$sys]}" -U "${USER_OF[$sys]}" "$DB" >"$out" 2>&1; then
        tps="$(awk '/^tps = .*without initial connection time/ {print $3}' "$out" | tail -n1)"
        lat="$(awk '/^latency average = / {print $4}' "$out" | tail -n1)"
        txns="$(awk '/^number of transactions actually processed: / {print $6}' "$out" | tail -n1)"
        [[ -n "$pid" ]] && ticks_after="$(cpu_ticks "$pid")"
        # The proxy's CPU per transaction: what it takes from the cores PostgreSQL and pgbench
        # share with it. Less noisy than TPS on a busy machine, and comparable across runs.
        if [[ -n "$ticks_before" && -n "$ticks_after" && "${txns:-0}" -gt 0 ]]; then
            RUN_CPU[$key]="${RUN_CPU[$key]:-} $(awk -v t="$((ticks_after - ticks_before))" -v hz="$(getconf CLK_TCK)" -v n="$txns" \
                'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
        fi
    fi
    if [[ -z "${tps:-}" || -z "${lat:-}" ]]; then
        note "  pgbench failed through $sys:"
        tail -n 5 "$out" | sed 's/^/    /' >&2
        if [[ "$sys" == portcullis-* ]] && ! kill -0 "${GATEWAY_PID[$sys]}" 2>/dev/null; then
            note "  the gateway process has exited; last lines of its log:"
            tail -n 20 "$TMP/$sys.log" | sed 's/^/    /' >&2
        fi
        RUN_FAILED[$key]=$((${RUN_FAILED[$key]:-0} + 1))
        return
    fi
    note "  tps $tps, latency $lat ms"
    RUN_TPS[$key]="${RUN_TPS[$key]:-} $tps"
    RUN_LAT[$key]="${RUN_LAT[$key]:-} $lat"
}

median() { # median VALUES...: prints nothing for no values
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit;
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ACTIVE=()
for s in "${DRIVEN[@]}"; do [[ -z "${SKIP[$s]:-}" ]] && ACTIVE+=("$s"); done
declare -A RUN_TPS=() RUN_LAT=() RUN_CPU=() RUN_FAILED=() CPU=()

section "pgbench -S, ${SECONDS_PER_RUN}s per run, $ROUNDS round(s), systems: ${ACTIVE[*]}"
# Every (mode, clients) cell drives the systems back to back, so that drift on a shared machine
# (other builds, frequency, caches) falls on all of them alike; from one round to the next the
# order rotates, so that no system always runs first (after a pause) or last.
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#ACTIVE[@]}
    order=()
    for ((i = 0; i < n; i++)); do order+=("${ACTIVE[$(((i + round - 1) % n))]}"); done
    for mode in "${MODES[@]}"; do
        for c in "${CLIENTS[@]}"; do
            for s in "${order[@]}"; do
                run_pgbench "$s" "$mode" "$c" "$round"
            done
        done
    done
done

for key in "${!RUN_TPS[@]}"; do
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    TPS[$key]="$(median ${RUN_TPS[$key]})"
    # shellcheck disable=SC2086
    LAT[$key]="$(median ${RUN_LAT[$key]})"
done
for key in "${!RUN_CPU[@]}"; do
    # shellcheck disable=SC2086
    CPU[$key]="$(median ${RUN_CPU[$key]})"
done

# --- report ----------------------------------------------------------------------------------

tps_cell() { # tps_cell SYSTEM KEY: "12345 (0.87x)" relative to direct
    local sys=$1 key=$2
    if [[ -n "${SKIP[$sys]:-}" ]]; then echo "${SKIP[$sys]%%:*}"; return; fi
    [[ " ${DRIVEN[*]} " == *" $sys "* ]] || { echo "not run"; return; }
    local v="${TPS[$sys,$key]:-}" d="${TPS[direct,$key]:-}"
    [[ -z "$v" ]] && { echo failed; return; }
    awk -v v="$v" -v d="$d" -v base="$sys" 'BEGIN {
        if (base == "direct" || d == "" || d == 0) printf "%.0f", v;
        else printf "%.0f (%.2fx)", v, v / d }'
    failed_note "$sys,$key"
}

failed_note() { # failed_note KEY: " [N/ROUNDS runs failed]" when some rounds failed for this cell
    local n="${RUN_FAILED[$1]:-0}"
    ((n == 0)) || printf ' [%s/%s runs failed]' "$n" "$ROUNDS"
    echo
}

lat_cell() { # lat_cell SYSTEM KEY: "0.123 (+45)" with the difference to direct in microseconds
    local sys=$1 key=$2
    if [[ -n "${SKIP[$sys]:-}" ]]; then echo "${SKIP[$sys]%%:*}"; return; fi
    [[ " ${DRIVEN[*]} " == *" $sys "* ]] || { echo "not run"; return; }
    local v="${LAT[$sys,$key]:-}" d="${LAT[direct,$key]:-}"
    [[ -z "$v" ]] && { echo failed; return; }
    awk -v v="$v" -v d="$d" -v base="$sys" 'BEGIN {
        if (base == "direct" || d == "") printf "%.3f", v;
        else printf "%.3f (%+.0f)", v, (v - d) * 1000 }'
    failed_note "$sys,$key"
}

rounds_text="1 round"
((ROUNDS > 1)) && rounds_text="median of $ROUNDS rounds"
cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")"
[[ -n "$(git status --porcelain 2>/dev/null | head -n1)" ]] && revision="$revision+local changes"

# Column labels: the default run (the default configuration only) keeps its plain "portcullis"
# column; otherwise every Portcullis column says which audit trail it ran with.
declare -A LABEL=([direct]=direct [pgbouncer]=pgbouncer)
declare -A AUDIT_TEXT=(
    [off]="off: embedded, log sink"
    [default]="default: written, segment log + SQLite index"
    [batched]="batched"
    [sync]="sync"
)
for m in "${AUDIT_MODES[@]}"; do LABEL[portcullis-$m]="portcullis (audit ${AUDIT_TEXT[$m]})"; done
if [[ "${AUDIT_MODES[*]}" == default ]]; then
    LABEL[portcullis-default]=portcullis
    audit_header="audit: the default configuration (written durability, segment log + SQLite index)"
else
    audit_header="audit: $(printf '%s, ' "${AUDIT_MODES[@]}" | sed 's/, $//')"
fi

{
    echo "# pgbench -S: direct vs Portcullis vs pgbouncer"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ) · machine: $(nproc) cores, ${cpu_model:-unknown CPU} · PostgreSQL $PG_VERSION · pgbench -S -n, ${SECONDS_PER_RUN} s per run, $rounds_text, scale $SCALE · Portcullis $revision ($audit_header) · pgbouncer ${PGBOUNCER_VERSION:-n/a} (pool_mode = session)"
    echo
    header="| mode | clients |" rule="|---|---:|"
    for sys in "${TABLE[@]}"; do
        header+=" ${LABEL[$sys]} TPS$([[ $sys == direct ]] || echo " (ratio)") |"
        rule+="---:|"
    done
    for sys in "${TABLE[@]}"; do
        header+=" ${LABEL[$sys]} lat ms$([[ $sys == direct ]] || echo " (+us)") |"
        rule+="---:|"
    done
    echo "$header"
    echo "$rule"
    for mode in "${MODES[@]}"; do
        for c in "${CLIENTS[@]}"; do
            k="$mode,$c"
            line="| $mode | $c |"
            for sys in "${TABLE[@]}"; do line+=" $(tps_cell "$sys" "$k") |"; done
            for sys in "${TABLE[@]}"; do line+=" $(lat_cell "$sys" "$k") |"; done
            echo "$line"
        done
    done
    echo
    echo "Proxy CPU per transaction (microseconds of user + system time of the proxy process, all threads):"
    echo
    header="| mode | clients |" rule="|---|---:|"
    for sys in "${TABLE[@]}"; do
        [[ $sys == direct ]] && continue
        header+=" ${LABEL[$sys]} CPU us/tx |"
        rule+="---:|"
    done
    echo "$header"
    echo "$rule"
    for mode in "${MODES[@]}"; do
        for c in "${CLIENTS[@]}"; do
            line="| $mode | $c |"
            for sys in "${TABLE[@]}"; do
                [[ $sys == direct ]] && continue
                line+=" ${CPU[$sys,$mode,$c]:-n/a} |"
            done
            echo "$line"
        done
    done
    echo
    echo "- TPS: pgbench's \"tps ... (without initial connection time)\"; ratio = system / direct."
    echo "- lat: pgbench's \"latency average\"; (+us) = extra microseconds per statement over direct."
    order_text=""
    for s in "${ACTIVE[@]}"; do
        # The default run's single gateway keeps its plain name; others are named by audit mode.
        [[ "${LABEL[$s]}" == portcullis ]] && s=portcullis
        order_text+="${order_text:+ }$s"
    done
    echo "- Each cell's systems ran back to back (order: $order_text, rotated each round). Plaintext (sslmode=disable) everywhere."
    echo "- pgbouncer 1.18 runs in pool_mode = session: its transaction mode cannot carry -M prepared before 1.21."
    if [[ " ${AUDIT_MODES[*]} " == *" off "* ]]; then
        echo "- ${LABEL[portcullis-off]}: examples/embedded.rs, gateway-core + proto-postgres with the same token login, target and policy as the binary, and the log audit sink with its records disabled in the log (not even built): the gateway without an audit trail."
    fi
    echo "- Client, proxy and PostgreSQL share this machine's $(nproc) cores; see bench/README.md before comparing numbers."
    for s in "${TABLE[@]}"; do
        [[ -n "${SKIP[$s]:-}" ]] && echo "- ${LABEL[$s]}: ${SKIP[$s]}."
    done
} >"$TMP/latest.md"

mkdir -p "$(dirname "$OUT")"
cp "$TMP/latest.md" "$OUT"
section "results (written to ${OUT#"$ROOT"/})"
cat "$OUT"

# The table is written either way; a pgbench run that failed makes the run fail (a system that
# was skipped at start-up does not: its reason is in the table).
if ((${#RUN_FAILED[@]})); then
    note "pgbench.sh: some pgbench runs failed (see the messages above)"
    exit 1
fi

#!/usr/bin/env bash
# Whole-path MySQL benchmark: sysbench oltp_point_select and oltp_read_only against MariaDB (or
# MySQL) directly and through Portcullis's MySQL listener, in the same run and the same order.
# The MySQL counterpart of bench/pgbench.sh; see bench/README.md.
#
# Environment:
#   BENCH_SECONDS     duration of each sysbench run (default 15)
#   BENCH_ROUNDS      how many times to repeat the whole sequence; the table shows medians (default 1)
#   BENCH_SYSTEMS     which systems to drive, in order (default "direct portcullis")
#   BENCH_PS_MODES    sysbench --db-ps-mode values, one row group each (default "auto disable"):
#                     "auto" is sysbench's default, server-side prepared statements
#                     (COM_STMT_PREPARE once per connection, COM_STMT_EXECUTE per statement);
#                     "disable" sends every statement as a text query (COM_QUERY)
#   BENCH_TABLES      sysbench --tables of the sbtest database (default 4)
#   BENCH_TABLE_SIZE  sysbench --table-size (default 100000)
#   BENCH_REINIT=1    drop and re-create the sbtest database even if it already has the right tables
#   PORTCULLIS_BIN    use this portcullis binary instead of building target/release/portcullis
#   BENCH_RUST_LOG    RUST_LOG for the gateway during the runs (default warn)
#   BENCH_OUT         where to write the markdown table (default bench/results/sysbench-latest.md)
#   BENCH_AUDIT       the gateway's audit modes, one Portcullis column each, in this order
#                     (default "default"): "default" runs the portcullis binary with no [audit]
#                     section (written durability, segment log and SQLite index in data_dir, a
#                     generated signing key); "batched" or "sync" run it with that durability and
#                     the same default sinks. There is no "off": pgbench.sh's "off" is
#                     examples/embedded.rs, which serves PostgreSQL only.
#   MYSQL_HOST, MYSQL_PORT
#                     the server measured (default 127.0.0.1, 3306; user root, no password)
#
# Exit status: 0 when every sysbench run that was attempted succeeded (a system that could not be
# started is reported as "skipped" in the table), 1 otherwise.
set -euo pipefail

ROOT="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
ROUNDS="${BENCH_ROUNDS:-1}"
SYSTEMS="${BENCH_SYSTEMS:-direct portcullis}"
OUT="${BENCH_OUT:-$ROOT/bench/results/sysbench-latest.md}"
TABLES="${BENCH_TABLES:-4}"
TABLE_SIZE="${BENCH_TABLE_SIZE:-100000}"
read -r -a AUDIT_MODES <<<"${BENCH_AUDIT:-default}"
read -r -a PS_MODES <<<"${BENCH_PS_MODES:-auto disable}"
# The cells of each ps-mode group: "TEST THREADS".
CELLS=("oltp_point_select 1" "oltp_point_select 8" "oltp_read_only 8")
DB=sbtest # the upstream database, and the target's name: clients ask for it with --mysql-db
MY_HOST="${MYSQL_HOST:-127.0.0.1}"
MY_PORT="${MYSQL_PORT:-3306}"
MY_USER=root

section() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" >&2; }
die() { printf 'sysbench.sh: error: %s\n' "$*" >&2; exit 1; }

for c in python3 awk; do
    command -v "$c" >/dev/null 2>&1 || die "missing command: $c"
done
MYSQL_CLIENT="$(command -v mariadb || command -v mysql || true)"
[[ -n "$MYSQL_CLIENT" ]] || die "missing command: mariadb (or mysql); apt-get install mariadb-client"
[[ "$SECONDS_PER_RUN" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
[[ "$TABLES" =~ ^[1-9][0-9]*$ ]] || die "BENCH_TABLES must be a positive integer"
[[ "$TABLE_SIZE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_TABLE_SIZE must be a positive integer"
((${#AUDIT_MODES[@]})) || die "BENCH_AUDIT must name at least one of default, batched, sync"
for m in "${AUDIT_MODES[@]}"; do
    case "$m" in
    default | batched | sync) ;;
    off) die "BENCH_AUDIT=off is not available here: pgbench.sh's \"off\" gateway is examples/embedded.rs, which serves PostgreSQL only (use default, batched or sync)" ;;
    *) die "unknown audit mode in BENCH_AUDIT: $m (default, batched or sync)" ;;
    esac
done
[[ "$(printf '%s\n' "${AUDIT_MODES[@]}" | sort | uniq -d)" == "" ]] || die "BENCH_AUDIT names a mode twice"
((${#PS_MODES[@]})) || die "BENCH_PS_MODES must name at least one of auto, disable"
for m in "${PS_MODES[@]}"; do
    case "$m" in auto | disable) ;; *) die "unknown sysbench --db-ps-mode in BENCH_PS_MODES: $m (auto or disable)" ;; esac
done
for s in $SYSTEMS; do
    case "$s" in direct | portcullis) ;; *) die "unknown system in BENCH_SYSTEMS: $s (direct or portcullis)" ;; esac
done

# sysbench itself, installed on the first run as pgbench.sh installs pgbouncer.
if ! command -v sysbench >/dev/null 2>&1; then
    section "installing sysbench (apt-get install -y -qq sysbench)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq sysbench >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq sysbench >/dev/null; } ||
        die "could not install sysbench (apt-get install sysbench)"
fi
SYSBENCH_VERSION="$(sysbench --version | awk '{print $2; exit}')"
# The client library sysbench is linked against: MariaDB Connector/C (libmariadb, Debian's build)
# sends the password in clear text when the server asks for mysql_clear_password; libmysqlclient
# does so only with LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN set, which costs nothing otherwise.
SYSBENCH_CLIENT_LIB="$(ldd "$(command -v sysbench)" 2>/dev/null | awk '/libmariadb|libmysqlclient/ {print $1; exit}')"
export LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1
# Debian's Connector/C loads mysql_clear_password from a shared object (plugin/
# mysql_clear_password.so) on the first auth switch that names it. When several threads meet that
# switch at once, all but one fail to load it ("Plugin mysql_clear_password could not be loaded:
# it is already loaded": mysql_client_find_plugin looks for the plugin without the lock that
# mysql_load_plugin then finds it under), send no password, and the gateway refuses them (1045):
# sysbench --threads=8 then fails about one start in ten. Loading it when the library starts,
# before sysbench's threads exist, avoids the race; for a libmysqlclient build it is a no-op.
export LIBMYSQL_PLUGINS=mysql_clear_password

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

TMP="$(mktemp -d /tmp/portcullis-sysbench.XXXXXX)"
chmod 700 "$TMP"
declare -A GATEWAY_PID=() # portcullis-MODE -> process id

cleanup() {
    local rc=$? pid
    # SIGTERM: each gateway drains its (by now idle) sessions and closes its audit trail.
    for pid in "${GATEWAY_PID[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Where each system listens and with which sysbench options file (user, password, database) it is
# reached; a system that could not be started is marked "skipped: reason" and its columns say so.
# Passwords (the token) go into files, never onto a command line.
declare -A PORT=() LOGIN=() SKIP=() TPS=() QPS=() LAT=() SPT=()

# login_files NAME USER PASSWORD: writes NAME.cnf (a [client] section, for the mariadb client's
# --defaults-extra-file) and NAME.sysbench (for sysbench --config-file) in TMP, mode 0600.
login_files() {
    local name=$1 user=$2 password=$3
    (
        umask 077
        printf '[client]\nuser=%s\npassword=%s\n' "$user" "$password" >"$TMP/$name.cnf"
        {
            printf 'mysql-user=%s\n' "$user"
            [[ -n "$password" ]] && printf 'mysql-password=%s\n' "$password"
            printf 'mysql-db=%s\n' "$DB"
        } >"$TMP/$name.sysbench"
    )
    LOGIN[$name]="$TMP/$name"
}

# sql_through SYSTEM SQL: runs SQL through the system's port as its user, in the sbtest database
# (the target's name), printing the result (tab-separated, no headers).
sql_through() {
    "$MYSQL_CLIENT" --defaults-extra-file="${LOGIN[$1]}.cnf" --protocol=TCP -h 127.0.0.1 -P "${PORT[$1]}" \
        -D "$DB" -N -B -e "$2" 2>"$TMP/sql.err"
}

# --- MariaDB and the sbtest database ---------------------------------------------------------

section "MariaDB"
PORT[direct]=$MY_PORT
login_files direct "$MY_USER" ""
my() { "$MYSQL_CLIENT" --defaults-extra-file="$TMP/direct.cnf" --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -N -B "$@"; }
MY_VERSION="$(my -e 'select version()' 2>"$TMP/sql.err")" || {
    sed 's/^/    /' "$TMP/sql.err" >&2
    die "MariaDB does not answer on $MY_HOST:$MY_PORT as $MY_USER without a password (scripts/test.sh starts it; or: service mariadb start)"
}
note "MariaDB $MY_VERSION on $MY_HOST:$MY_PORT; sysbench $SYSBENCH_VERSION (${SYSBENCH_CLIENT_LIB:-client library unknown})"

# sysbench options shared by prepare and every run (the login comes from the --config-file).
SB_COMMON=(--db-driver=mysql --mysql-ssl=off --tables="$TABLES" --table-size="$TABLE_SIZE")

tables_ready() { # the sbtest database has sbtest1..N with TABLE_SIZE rows each
    local n count
    for ((n = 1; n <= TABLES; n++)); do
        count="$(my -D "$DB" -e "select count(*) from sbtest$n" 2>/dev/null)" || return 1
        [[ "$count" == "$TABLE_SIZE" ]] || return 1
    done
}
if [[ "${BENCH_REINIT:-0}" == 1 ]] || ! tables_ready; then
    section "preparing $DB (sysbench oltp_point_select --tables=$TABLES --table-size=$TABLE_SIZE prepare, directly)"
    my -e "drop database if exists $DB; create database $DB"
    sysbench oltp_point_select "${SB_COMMON[@]}" --config-file="${LOGIN[direct]}.sysbench" \
        --mysql-host="$MY_HOST" --mysql-port="$MY_PORT" prepare >"$TMP/prepare.out" 2>&1 || {
        tail -n 20 "$TMP/prepare.out" | sed 's/^/    /' >&2
        die "sysbench prepare failed"
    }
else
    note "$DB already has $TABLES tables of $TABLE_SIZE rows (BENCH_REINIT=1 re-creates them)"
fi
# Read every table once, directly, so that no system's first run pays for a cold buffer pool.
for ((n = 1; n <= TABLES; n++)); do
    my -D "$DB" -e "analyze table sbtest$n; select sum(length(c)) + sum(length(pad)) from sbtest$n" >/dev/null
done

# --- Portcullis --------------------------------------------------------------------------------

# One gateway per audit mode, all started before the runs and all accepting the same token, with
# the same MySQL listener settings, the same target and the same policy (an access rule and a
# guardrail, so every statement is judged, from the cache after its first parse), so the columns
# differ by their audit trail only.
start_portcullis() {
    local bin="${PORTCULLIS_BIN:-}" m
    if [[ -z "$bin" ]]; then
        bin="$ROOT/target/release/portcullis"
        section "building Portcullis (cargo build --release --bin portcullis)"
        if ! cargo build --release --bin portcullis >&2; then
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
    TOKEN="$token"

    for m in "${AUDIT_MODES[@]}"; do start_gateway "$m"; done
    unset TOKEN
}

start_gateway() { # start_gateway AUDIT_MODE: starts system portcullis-AUDIT_MODE
    local mode=$1 sys="portcullis-$1" port log="$TMP/portcullis-$1.log" bin="$PORTCULLIS_BIN_PATH" audit_section=""
    port="$(free_port)"
    section "starting Portcullis, audit $mode ($bin)"
    [[ "$mode" == default ]] || audit_section="$(printf '[audit]\ndurability = "%s"\n' "$mode")"
    cat >"$TMP/bench-$mode.toml" <<EOF
[gateway]
node = "bench"
data_dir = "$TMP/data-$mode"

$audit_section

[mysql]
listen = "127.0.0.1:$port"

[identity.jwt]
issuer = "bench"
audience = ["portcullis"]
algorithms = ["HS256"]
hs256_secret_file = "$SECRET_FILE"

[[targets]]
name = "$DB"
protocol = "mysql"
host = "$MY_HOST"
port = $MY_PORT
database = "$DB"
user = "$MY_USER"

$(cat "$POLICY_FILE")
EOF
    # Logging per statement would be measured too: warnings only, unless asked otherwise.
    RUST_LOG="${BENCH_RUST_LOG:-warn}" "$bin" run --config "$TMP/bench-$mode.toml" >"$log" 2>&1 &
    GATEWAY_PID[$sys]=$!
    local pid=$! deadline=$((SECONDS + 30)) listening=0
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then listening=1 && break; fi
        sleep 0.2
    done
    PORT[$sys]=$port
    login_files "$sys" bench "$TOKEN"
    if ((!listening)); then
        note "Portcullis (audit $mode) did not listen on 127.0.0.1:$port (exited, or not within 30 s); last lines of its log:"
        tail -n 20 "$log" | sed 's/^/    /' >&2
        SKIP[$sys]="skipped: gateway did not start"
    elif [[ "$(sql_through "$sys" "select count(*) from sbtest1")" != "$TABLE_SIZE" ]]; then
        note "$(basename "$MYSQL_CLIENT") through Portcullis (audit $mode) failed:"
        sed 's/^/    /' "$TMP/sql.err" >&2
        tail -n 20 "$log" | sed 's/^/    /' >&2
        SKIP[$sys]="skipped: login through the gateway failed"
    else
        note "Portcullis (audit $mode) listening on 127.0.0.1:$port"
    fi
}

for s in $SYSTEMS; do
    [[ "$s" == portcullis ]] && start_portcullis
done

# --- runs ------------------------------------------------------------------------------------

# cpu_ticks PID: user + system CPU time of the process (all its threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }

# sb_value FILE PATTERN FIELD: a number from sysbench's report.
sb_value() { awk -v f="$3" "/$2/ { v = \$f } END { gsub(/[()]/, \"\", v); print v }" "$1"; }

run_sysbench() { # run_sysbench SYSTEM PS_MODE TEST THREADS ROUND: appends to RUN_*
    local sys=$1 ps=$2 test=$3 t=$4 round=$5 out key="$1,$2,$3,$4" pid="" ticks_before="" ticks_after=""
    local rc=0 txns tps queries qps lat_sum events errors reconnects
    out="$TMP/$sys-$ps-$test-$t-$round.out"
    note "$(printf 'round %s  %-20s %-18s --db-ps-mode=%-7s --threads=%s --time=%s' "$round" "$sys" "$test" "$ps" "$t" "$SECONDS_PER_RUN")"
    [[ "$sys" == portcullis-* ]] && pid="${GATEWAY_PID[$sys]}"
    [[ -n "$pid" ]] && ticks_before="$(cpu_ticks "$pid")"
    sysbench "$test" "${SB_COMMON[@]}" --config-file="${LOGIN[$sys]}.sysbench" \
        --mysql-host=127.0.0.1 --mysql-port="${PORT[$sys]}" --db-ps-mode="$ps" \
        --threads="$t" --time="$SECONDS_PER_RUN" --report-interval=0 run >"$out" 2>&1 || rc=$?
    [[ -n "$pid" ]] && ticks_after="$(cpu_ticks "$pid")"
    txns="$(sb_value "$out" '^ *transactions:' 2)"
    tps="$(sb_value "$out" '^ *transactions:' 3)"
    queries="$(sb_value "$out" '^ *queries:' 2)"
    qps="$(sb_value "$out" '^ *queries:' 3)"
    events="$(sb_value "$out" '^ *total number of events:' 5)"
    lat_sum="$(sb_value "$out" '^ *sum:' 2)"
    errors="$(sb_value "$out" '^ *ignored errors:' 3)"
    reconnects="$(sb_value "$out" '^ *reconnects:' 2)"
    if ((rc != 0)) || [[ -z "$tps" || -z "$qps" || -z "$lat_sum" || "${events:-0}" == 0 || "${txns:-0}" == 0 ]] ||
        grep -q -E '^FATAL|ALERT' "$out"; then
        note "  sysbench failed through $sys (exit status $rc):"
        grep -E 'FATAL|ALERT|error' "$out" | head -n 10 | sed 's/^/    /' >&2
        tail -n 5 "$out" | sed 's/^/    /' >&2
        if [[ "$sys" == portcullis-* ]]; then
            kill -0 "${GATEWAY_PID[$sys]}" 2>/dev/null || note "  the gateway process has exited"
            if [[ -s "$TMP/$sys.log" ]]; then
                note "  last lines of the gateway's log:"
                tail -n 20 "$TMP/$sys.log" | sed 's/^/    /' >&2
            else
                note "  the gateway logged nothing at RUST_LOG=${BENCH_RUST_LOG:-warn} (BENCH_RUST_LOG=info logs refused logins)"
            fi
        fi
        RUN_FAILED[$key]=$((${RUN_FAILED[$key]:-0} + 1))
        return
    fi
    if [[ "${errors:-0}" != 0 || "${reconnects:-0}" != 0 ]]; then
        note "  warning: sysbench counted $errors ignored errors and $reconnects reconnects through $sys"
    fi
    # sysbench prints its average latency with two decimals (10 us steps); the sum of all event
    # latencies over the event count is the same average, to the microsecond.
    local lat spt
    lat="$(awk -v s="$lat_sum" -v n="$events" 'BEGIN { printf "%.4f", s / n }')"
    spt="$(awk -v q="$queries" -v n="$txns" 'BEGIN { printf "%.2f", q / n }')"
    note "  tps $tps, qps $qps, latency $lat ms, $spt statements per transaction"
    RUN_TPS[$key]="${RUN_TPS[$key]:-} $tps"
    RUN_QPS[$key]="${RUN_QPS[$key]:-} $qps"
    RUN_LAT[$key]="${RUN_LAT[$key]:-} $lat"
    RUN_SPT[$key]="${RUN_SPT[$key]:-} $spt"
    # The proxy's CPU per transaction: what it takes from the cores MariaDB and sysbench share
    # with it. Less noisy than TPS on a busy machine, and comparable across runs.
    if [[ -n "$ticks_before" && -n "$ticks_after" ]]; then
        RUN_CPU[$key]="${RUN_CPU[$key]:-} $(awk -v t="$((ticks_after - ticks_before))" -v hz="$(getconf CLK_TCK)" -v n="$txns" \
            'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
    fi
}

median() { # median VALUES...: prints nothing for no values
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit;
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ACTIVE=()
for s in "${DRIVEN[@]}"; do [[ -z "${SKIP[$s]:-}" ]] && ACTIVE+=("$s"); done
declare -A RUN_TPS=() RUN_QPS=() RUN_LAT=() RUN_SPT=() RUN_CPU=() RUN_FAILED=() CPU=()

section "sysbench, ${SECONDS_PER_RUN}s per run, $ROUNDS round(s), ps modes: ${PS_MODES[*]}, systems: ${ACTIVE[*]}"
# Every cell drives the systems back to back, so that drift on a shared machine (other builds,
# frequency, caches) falls on all of them alike; from one round to the next the order rotates, so
# that no system always runs first (after a pause) or last.
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#ACTIVE[@]}
    order=()
    for ((i = 0; i < n; i++)); do order+=("${ACTIVE[$(((i + round - 1) % n))]}"); done
    for ps in "${PS_MODES[@]}"; do
        for cell in "${CELLS[@]}"; do
            read -r test t <<<"$cell"
            for s in "${order[@]}"; do
                run_sysbench "$s" "$ps" "$test" "$t" "$round"
            done
        done
    done
done

for key in "${!RUN_TPS[@]}"; do
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    TPS[$key]="$(median ${RUN_TPS[$key]})"
    # shellcheck disable=SC2086
    QPS[$key]="$(median ${RUN_QPS[$key]})"
    # shellcheck disable=SC2086
    LAT[$key]="$(median ${RUN_LAT[$key]})"
    # shellcheck disable=SC2086
    SPT[$key]="$(median ${RUN_SPT[$key]})"
done
for key in "${!RUN_CPU[@]}"; do
    # shellcheck disable=SC2086
    CPU[$key]="$(median ${RUN_CPU[$key]})"
done

# --- report ----------------------------------------------------------------------------------

failed_note() { # failed_note KEY: " [N/ROUNDS runs failed]" when some rounds failed for this cell
    local n="${RUN_FAILED[$1]:-0}"
    ((n == 0)) || printf ' [%s/%s runs failed]' "$n" "$ROUNDS"
    echo
}

# cell_status SYSTEM KEY: prints why there is no number (and fails), or nothing.
cell_status() {
    local sys=$1 key=$2
    if [[ -n "${SKIP[$sys]:-}" ]]; then echo "${SKIP[$sys]%%:*}"; return 1; fi
    [[ " ${DRIVEN[*]} " == *" $sys "* ]] || { echo "not run"; return 1; }
    [[ -n "${TPS[$sys,$key]:-}" ]] || { echo "failed$(failed_note "$sys,$key")"; return 1; }
}

rate_cell() { # rate_cell SYSTEM KEY ARRAY: "12345 (0.87x)" relative to direct
    local sys=$1 key=$2
    local -n arr=$3
    cell_status "$sys" "$key" || return 0
    local v="${arr[$sys,$key]}" d="${arr[direct,$key]:-}"
    awk -v v="$v" -v d="$d" -v base="$sys" 'BEGIN {
        if (base == "direct" || d == "" || d == 0) printf "%.0f", v;
        else printf "%.0f (%.2fx)", v, v / d }'
    failed_note "$sys,$key"
}

lat_cell() { # lat_cell SYSTEM KEY THREADS: "0.123", and at 1 thread "(+45)": added us per statement
    local sys=$1 key=$2 t=$3
    cell_status "$sys" "$key" || return 0
    local v="${LAT[$sys,$key]}" d="${LAT[direct,$key]:-}" spt="${SPT[direct,$key]:-${SPT[$sys,$key]}}"
    awk -v v="$v" -v d="$d" -v base="$sys" -v t="$t" -v spt="$spt" 'BEGIN {
        if (base == "direct" || d == "" || t != 1) printf "%.3f", v;
        else printf "%.3f (%+.0f)", v, (v - d) * 1000 / spt }'
    failed_note "$sys,$key"
}

rounds_text="1 round"
((ROUNDS > 1)) && rounds_text="median of $ROUNDS rounds"
cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")"
[[ -n "$(git status --porcelain 2>/dev/null | head -n1)" ]] && revision="$revision+local changes"

# Column labels: the default run (the default configuration only) keeps its plain "portcullis"
# column; otherwise every Portcullis column says which audit trail it ran with.
declare -A LABEL=([direct]=direct)
declare -A AUDIT_TEXT=(
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
declare -A PS_TEXT=([auto]="auto (prepared)" [disable]="disable (text)")

{
    echo "# sysbench: MariaDB direct vs through Portcullis"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ) · machine: $(nproc) cores, ${cpu_model:-unknown CPU} · MariaDB $MY_VERSION · sysbench $SYSBENCH_VERSION (${SYSBENCH_CLIENT_LIB:-client library unknown}), ${SECONDS_PER_RUN} s per run, $rounds_text, $TABLES tables of $TABLE_SIZE rows · Portcullis $revision ($audit_header)"
    echo
    header="| test | ps-mode | threads | stmts/tx |" rule="|---|---|---:|---:|"
    for sys in "${TABLE[@]}"; do
        header+=" ${LABEL[$sys]} TPS$([[ $sys == direct ]] || echo " (ratio)") |"
        rule+="---:|"
    done
    for sys in "${TABLE[@]}"; do
        header+=" ${LABEL[$sys]} QPS$([[ $sys == direct ]] || echo " (ratio)") |"
        rule+="---:|"
    done
    for sys in "${TABLE[@]}"; do
        header+=" ${LABEL[$sys]} lat ms$([[ $sys == direct ]] || echo " (+us/stmt)") |"
        rule+="---:|"
    done
    echo "$header"
    echo "$rule"
    for ps in "${PS_MODES[@]}"; do
        for cell in "${CELLS[@]}"; do
            read -r test t <<<"$cell"
            k="$ps,$test,$t"
            spt="n/a"
            for sys in "${TABLE[@]}"; do [[ -n "${SPT[$sys,$k]:-}" ]] && spt="$(awk -v v="${SPT[$sys,$k]}" 'BEGIN { printf "%g", v }')" && break; done
            line="| ${test#oltp_} | ${PS_TEXT[$ps]} | $t | $spt |"
            for sys in "${TABLE[@]}"; do line+=" $(rate_cell "$sys" "$k" TPS) |"; done
            for sys in "${TABLE[@]}"; do line+=" $(rate_cell "$sys" "$k" QPS) |"; done
            for sys in "${TABLE[@]}"; do line+=" $(lat_cell "$sys" "$k" "$t") |"; done
            echo "$line"
        done
    done
    echo
    echo "Proxy CPU (microseconds of user + system time of the gateway process, all threads, per transaction and per statement):"
    echo
    header="| test | ps-mode | threads |" rule="|---|---|---:|"
    for sys in "${TABLE[@]}"; do
        [[ $sys == direct ]] && continue
        header+=" ${LABEL[$sys]} CPU us/tx | ${LABEL[$sys]} CPU us/stmt |"
        rule+="---:|---:|"
    done
    echo "$header"
    echo "$rule"
    for ps in "${PS_MODES[@]}"; do
        for cell in "${CELLS[@]}"; do
            read -r test t <<<"$cell"
            k="$ps,$test,$t"
            line="| ${test#oltp_} | ${PS_TEXT[$ps]} | $t |"
            for sys in "${TABLE[@]}"; do
                [[ $sys == direct ]] && continue
                c="${CPU[$sys,$k]:-}"
                if [[ -n "$c" ]]; then
                    line+=" $c | $(awk -v c="$c" -v s="${SPT[$sys,$k]}" 'BEGIN { printf "%.1f", c / s }') |"
                else
                    line+=" n/a | n/a |"
                fi
            done
            echo "$line"
        done
    done
    echo
    echo "- TPS, QPS: sysbench's \"transactions\" and \"queries\" per second (threads connect before the clock starts); ratio = system / direct."
    echo "- stmts/tx: sysbench's queries / transactions (point_select: one SELECT; read_only: BEGIN, 10 point SELECTs, 4 range SELECTs, COMMIT)."
    echo "- lat: average event latency (sysbench's latency sum / events); (+us/stmt), at 1 thread only, = (system - direct) / stmts/tx, in microseconds."
    echo "- ps-mode: sysbench --db-ps-mode; auto (sysbench's default) = server-side prepared statements (COM_STMT_PREPARE once per connection, then COM_STMT_EXECUTE), disable = text queries (COM_QUERY)."
    order_text=""
    for s in "${ACTIVE[@]}"; do
        [[ "${LABEL[$s]}" == portcullis ]] && s=portcullis
        order_text+="${order_text:+ }$s"
    done
    echo "- Each cell's systems ran back to back (order: $order_text, rotated each round). Plaintext everywhere (--mysql-ssl=off); the gateway's clients log in with an HS256 token (mysql_clear_password from loopback)."
    echo "- Client, proxy and MariaDB share this machine's $(nproc) cores; see bench/README.md before comparing numbers."
    for s in "${TABLE[@]}"; do
        [[ -n "${SKIP[$s]:-}" ]] && echo "- ${LABEL[$s]}: ${SKIP[$s]}."
    done
} >"$TMP/latest.md"

mkdir -p "$(dirname "$OUT")"
cp "$TMP/latest.md" "$OUT"
section "results (written to ${OUT#"$ROOT"/})"
cat "$OUT"

# The table is written either way; a sysbench run that failed makes the run fail (a system that
# was skipped at start-up does not: its reason is in the table).
if ((${#RUN_FAILED[@]})); then
    note "sysbench.sh: some sysbench runs failed (see the messages above)"
    exit 1
fi

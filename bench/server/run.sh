#!/usr/bin/env bash
# bench/server/run.sh — petrel-server against nginx on the same tree and machine:
# requests per second for metadata/timestamp.json and throughput for a 100 MB target,
# measured with wrk; then both under attack (bench/server/attack.py: 2,000 hostile
# connections — slowloris, slow readers of the large target, clients that reconnect all
# the time) while a normal client fetches timestamp.json: its latency and failures, and
# the server's peak memory. See "Server" in bench/README.md for what is measured and why.
#
# Usage (from anywhere):
#   bench/server/run.sh                          # RUNS=5 DURATION=10s
#   RUNS=3 DURATION=5s bench/server/run.sh       # quicker
#
# Environment:
#   RUNS             runs per server and workload, medians reported (default 5)
#   DURATION         wrk duration of one run (default 10s)
#   CONNECTIONS      wrk connections for timestamp.json (default 64)
#   BIG_CONNECTIONS  wrk connections for the 100 MB target (default 4)
#   BIG_MB           size of the large target in MB (default 100)
#   PIN              1 (default when the machine has at least 2 cores): wrk runs on CPU 0
#                    and the server under test on the other CPUs, with one worker per CPU
#                    it gets; 0: no pinning, each server gets one worker per core
#   BENCH_WORK       scratch directory (default <repo>/bench/work; git-ignored)
#   CARGO_TARGET_DIR honoured for the release builds
#   PETREL_BIN_DIR   use petrel-repo and petrel-server from this directory instead of
#                    building them
#   PETREL_REPO_BIN  the petrel-repo binary that writes the tree (any build will do: it
#                    is not measured)
#   PETREL_NGINX     the nginx binary (default: found or installed by scripts/ensure-nginx.sh)
#   ATTACK           1 (default): also run the attack; 0: skip it; only: just the attack
#   ATTACK_RUNS      attack runs per server (default 1)
#   ATTACK_SECONDS   how long the normal client measures under attack (default 30)
#   ATTACK_SLOWLORIS, ATTACK_SLOW_READERS, ATTACK_RECONNECTERS
#                    hostile connections of each kind (default 800, 800, 400); the
#                    script raises `ulimit -n` to the hard limit and stops if that is
#                    below twice their sum
#
# Both servers run with the access log off, keep-alive on and no cap on requests per
# connection; nginx with `sendfile on` and the recommended Petrel configuration
# (docs/nginx/*.conf). Servers alternate every run (nginx first on odd runs).
#
# Output: markdown tables on stdout (also in $BENCH_WORK/server-results/summary.md), raw
# numbers in $BENCH_WORK/server-results/runs.tsv and attack.tsv, wrk and attacker output
# in .../logs/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
work="${BENCH_WORK:-${repo_root}/bench/work}"
RUNS="${RUNS:-5}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
BIG_CONNECTIONS="${BIG_CONNECTIONS:-4}"
BIG_MB="${BIG_MB:-100}"
ATTACK="${ATTACK:-1}"
ATTACK_RUNS="${ATTACK_RUNS:-1}"
ATTACK_SECONDS="${ATTACK_SECONDS:-30}"
ATTACK_SLOWLORIS="${ATTACK_SLOWLORIS:-800}"
ATTACK_SLOW_READERS="${ATTACK_SLOW_READERS:-800}"
ATTACK_RECONNECTERS="${ATTACK_RECONNECTERS:-400}"
cores="$(nproc)"
if [[ -z "${PIN:-}" ]]; then
    PIN=0
    [[ "${cores}" -ge 2 ]] && command -v taskset >/dev/null 2>&1 && PIN=1
fi

say() { printf '[server-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

mkdir -p "${work}"
work="$(cd "${work}" && pwd)"
results="${work}/server-results"
logs="${results}/logs"
rm -rf "${logs}"
mkdir -p "${logs}"

# ---------------------------------------------------------------------------
# 1. Tools (idempotent)
# ---------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo -n)
    say "installing wrk"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null 2>&1 \
        || { "${sudo[@]}" apt-get update -q >/dev/null 2>&1 \
            && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null; } \
        || die "cannot install wrk (apt-get install wrk)"
fi
nginx_bin="$("${repo_root}/scripts/ensure-nginx.sh")" || die "no nginx"
if [[ "${PIN}" == 1 ]]; then
    wrk_cpus="0"
    server_cpus="1-$((cores - 1))"
    workers=$((cores - 1))
    on_client=(taskset -c "${wrk_cpus}")
    on_server=(taskset -c "${server_cpus}")
else
    workers="${cores}"
    on_client=()
    on_server=()
fi

target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
bin_dir="${PETREL_BIN_DIR:-${target_dir}/release}"
if [[ -z "${PETREL_BIN_DIR:-}" ]]; then
    pkgs=(-p petrel-server)
    [[ -n "${PETREL_REPO_BIN:-}" ]] || pkgs+=(-p petrel-repo)
    say "building ${pkgs[*]} (release)"
    (cd "${repo_root}" && timeout 3600 cargo build --release -q "${pkgs[@]}") \
        || die "cargo build --release failed"
fi
prepo="${PETREL_REPO_BIN:-${bin_dir}/petrel-repo}"
pserver="${bin_dir}/petrel-server"
for b in "${prepo}" "${pserver}"; do [[ -x "${b}" ]] || die "missing ${b}"; done

# ---------------------------------------------------------------------------
# 2. The tree: the demo repository plus one large target (made once)
# ---------------------------------------------------------------------------
repo="${work}/server-repo"
tree="${repo}/tree"
if [[ ! -f "${repo}/.complete-${BIG_MB}" ]]; then
    say "publishing the demo repository plus a ${BIG_MB} MB target in ${repo}"
    rm -rf "${repo}"
    content="${repo_root}/examples/demo/content"
    big_src="${work}/server-big-${BIG_MB}.bin"
    [[ -f "${big_src}" ]] || head -c "$((BIG_MB * 1000 * 1000))" /dev/urandom >"${big_src}"
    r() { "${prepo}" -r "${repo}" "$@" >>"${logs}/publish.log" 2>&1 || die "petrel-repo $* failed (see ${logs}/publish.log)"; }
    r init
    r delegate --to acme --paths 'apps/acme/*/*/*' --terminating
    r delegate --to globex --paths 'apps/globex/*/*/*' 'apps/globex/*/*/*/*' --terminating
    r delegate --from globex --to globex-bin --bins 4
    r add "${content}/README.txt"
    r add "${content}/apps/acme" --prefix apps/acme --role acme
    r add "${content}/apps/globex" --prefix apps/globex --role globex
    r add "${big_src}" --prefix images
    r publish
    touch "${repo}/.complete-${BIG_MB}"
fi
big_path="$(cd "${tree}" && find targets/images -type f -name "*.server-big-${BIG_MB}.bin" | sort | head -n1)"
[[ -n "${big_path}" ]] || die "the large target is missing from ${tree}/targets/images"
small_path="metadata/timestamp.json"
small_bytes="$(stat -c %s "${tree}/${small_path}")"
big_bytes="$(stat -c %s "${tree}/${big_path}")"

# ---------------------------------------------------------------------------
# 3. Servers
# ---------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

nginx_dir="${work}/server-nginx"
rm -rf "${nginx_dir}"
mkdir -p "${nginx_dir}/tmp"
nginx_port="$(free_port)"
cat >"${nginx_dir}/nginx.conf" <<EOF
daemon off;
worker_processes ${workers};
pid "${nginx_dir}/nginx.pid";
error_log "${nginx_dir}/error.log" warn;

events {
    worker_connections 4096;
}

http {
    include "${repo_root}/docs/nginx/petrel-http.conf";
    client_body_temp_path "${nginx_dir}/tmp/body";
    proxy_temp_path "${nginx_dir}/tmp/proxy";
    fastcgi_temp_path "${nginx_dir}/tmp/fastcgi";
    uwsgi_temp_path "${nginx_dir}/tmp/uwsgi";
    scgi_temp_path "${nginx_dir}/tmp/scgi";
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30s;
    keepalive_requests 100000000;

    server {
        listen 127.0.0.1:${nginx_port} backlog=1024;
        root "${tree}";
        include "${repo_root}/docs/nginx/petrel-tree.conf";
    }
}
EOF

server_pid=""
stop_server() {
    if [[ -n "${server_pid}" ]]; then
        kill -TERM "${server_pid}" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "${server_pid}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${server_pid}" 2>/dev/null || true
        wait "${server_pid}" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

# start_server NAME: starts it, sets server_pid and url.
start_server() {
    case "$1" in
        nginx)
            "${on_server[@]}" "${nginx_bin}" -p "${nginx_dir}" -c "${nginx_dir}/nginx.conf" \
                -e "${nginx_dir}/error.log" 2>>"${logs}/nginx.stderr" &
            server_pid=$!
            url="http://127.0.0.1:${nginx_port}"
            ;;
        petrel)
            # The background child truncates this file only when it gets to run: remove
            # it first, so an earlier run's address is never read.
            rm -f "${logs}/petrel.out"
            "${on_server[@]}" "${pserver}" serve --root "${tree}" --listen 127.0.0.1:0 \
                --workers "${workers}" >"${logs}/petrel.out" 2>>"${logs}/petrel.stderr" &
            server_pid=$!
            url=""
            for _ in $(seq 1 100); do
                url="$(sed -n 's/^listening on \(http:\/\/[^ ]*\).*/\1/p' "${logs}/petrel.out" 2>/dev/null | head -n1 || true)"
                [[ -n "${url}" ]] && break
                sleep 0.1
            done
            [[ -n "${url}" ]] || die "petrel-server did not start (see ${logs}/petrel.stderr)"
            ;;
    esac
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "${url}/${small_path}" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1 does not serve ${url}/${small_path}"
}

# ---------------------------------------------------------------------------
# 4. Runs
# ---------------------------------------------------------------------------
runs="${results}/runs.tsv"
printf 'run\tserver\tworkload\treq_per_s\tbytes_per_s\n' >"${runs}"

# wrk's "Transfer/sec: 1.23GB" → bytes per second.
to_bytes() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        m = 1
        if (u == "KB") m = 1024; else if (u == "MB") m = 1024^2; else if (u == "GB") m = 1024^3; else if (u == "TB") m = 1024^4
        printf "%.0f", n * m }'
}

measure() { # run server workload path connections
    local log="${logs}/$1-$2-$3.txt"
    "${on_client[@]}" wrk -t1 -c"$5" -d"${DURATION}" "${url}/$4" >"${log}" 2>&1 \
        || die "wrk failed: $(cat "${log}")"
    if grep -q "Non-2xx" "${log}" || ! awk '/^Requests\/sec:/ && $2 > 0 {ok=1} END {exit !ok}' "${log}"; then
        die "non-2xx answers or no complete response from $2: ${log}"
    fi
    local rps tps
    rps="$(awk '/^Requests\/sec:/ {print $2}' "${log}")"
    tps="$(to_bytes "$(awk '/^Transfer\/sec:/ {print $2}' "${log}")")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${rps}" "${tps}" >>"${runs}"
}

[[ "${ATTACK}" == only ]] && RUNS=0
say "${RUNS} runs of ${DURATION}; workers=${workers}; pinning: $([[ ${PIN} == 1 ]] && echo "wrk on CPU ${wrk_cpus}, server on CPUs ${server_cpus}" || echo none)"
for run in $(seq 1 "${RUNS}"); do
    if (( run % 2 )); then order=(nginx petrel); else order=(petrel nginx); fi
    for s in "${order[@]}"; do
        start_server "${s}"
        # Warm up (page cache, connections), then measure.
        "${on_client[@]}" wrk -t1 -c"${CONNECTIONS}" -d1s "${url}/${small_path}" >/dev/null 2>&1 || true
        measure "${run}" "${s}" small "${small_path}" "${CONNECTIONS}"
        measure "${run}" "${s}" big "${big_path}" "${BIG_CONNECTIONS}"
        stop_server
        say "run ${run}/${RUNS}: ${s} done"
    done
done

# ---------------------------------------------------------------------------
# 5. Under attack: 2,000 hostile connections and one normal client
# ---------------------------------------------------------------------------
attack_tsv="${results}/attack.tsv"
printf 'run\tserver\tphase\tcount\tfailures\tp50_ms\tp99_ms\tmax_ms\tpeak_rss_kib\topen_max\n' >"${attack_tsv}"

# Peak resident memory (VmHWM, KiB) of a process and its children (nginx's workers).
peak_rss() {
    local total=0 p v
    for p in "$1" $(ps --ppid "$1" -o pid= 2>/dev/null); do
        v="$(awk '/^VmHWM:/ {print $2}' "/proc/${p}/status" 2>/dev/null || true)"
        total=$((total + ${v:-0}))
    done
    echo "${total}"
}

# probe_fields JSON: count failures p50 p99 max, tab-separated.
probe_fields() {
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("\t".join(str(d[k]) for k in ("count","failures","p50_ms","p99_ms","max_ms")))' "$1"
}

attack_py="${here}/attack.py"
if [[ "${ATTACK}" != 0 ]]; then
    # Each hostile connection is a descriptor in the attacker and up to two in the server.
    hard="$(ulimit -Hn)"
    if [[ "${hard}" == unlimited ]] || (( hard > 65536 )); then hard=65536; fi
    ulimit -n "${hard}" 2>/dev/null || true
    hostile=$((ATTACK_SLOWLORIS + ATTACK_SLOW_READERS + ATTACK_RECONNECTERS))
    (( $(ulimit -n) >= 2 * hostile + 256 )) \
        || die "open-file limit $(ulimit -n) is too low for ${hostile} hostile connections (raise ulimit -n)"
    ramp=5
    say "attack: ${hostile} hostile connections (${ATTACK_SLOWLORIS} slowloris, ${ATTACK_SLOW_READERS} slow readers, ${ATTACK_RECONNECTERS} reconnecting), ${ATTACK_SECONDS}s of normal requests, ${ATTACK_RUNS} run(s) per server"
    for run in $(seq 1 "${ATTACK_RUNS}"); do
        if (( run % 2 )); then order=(nginx petrel); else order=(petrel nginx); fi
        for s in "${order[@]}"; do
            start_server "${s}"
            base="$("${on_client[@]}" python3 "${attack_py}" probe "${url}" "/${small_path}" --seconds 5)"
            printf '%s\t%s\tidle\t%s\t%s\t0\n' "${run}" "${s}" "$(probe_fields "${base}")" \
                "$(peak_rss "${server_pid}")" >>"${attack_tsv}"
            "${on_client[@]}" timeout $((ramp + ATTACK_SECONDS + 60)) python3 "${attack_py}" attack \
                "${url}" "/${big_path}" --seconds $((ramp + ATTACK_SECONDS + 2)) \
                --slowloris "${ATTACK_SLOWLORIS}" --slow-readers "${ATTACK_SLOW_READERS}" \
                --reconnecters "${ATTACK_RECONNECTERS}" >"${logs}/attack-${run}-${s}.json" \
                2>"${logs}/attack-${run}-${s}.stderr" &
            attacker=$!
            sleep "${ramp}"
            under="$("${on_client[@]}" python3 "${attack_py}" probe "${url}" "/${small_path}" --seconds "${ATTACK_SECONDS}")"
            wait "${attacker}" || say "attacker exited with an error (see ${logs}/attack-${run}-${s}.stderr)"
            open_max="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["open_max"])' "${logs}/attack-${run}-${s}.json" 2>/dev/null || echo 0)"
            printf '%s\t%s\tattack\t%s\t%s\t%s\n' "${run}" "${s}" "$(probe_fields "${under}")" \
                "$(peak_rss "${server_pid}")" "${open_max}" >>"${attack_tsv}"
            stop_server
            say "attack run ${run}/${ATTACK_RUNS}: ${s}: ${under}"
        done
    done
fi

# ---------------------------------------------------------------------------
# 6. Tables
# ---------------------------------------------------------------------------
rm -f "${results}/summary.md"
if [[ "${RUNS}" != 0 ]]; then
python3 - "${runs}" "${small_bytes}" "${big_bytes}" "${CONNECTIONS}" "${BIG_CONNECTIONS}" \
    "${workers}" "${PIN}" "$("${nginx_bin}" -v 2>&1 | sed 's/.*nginx\///')" "${RUNS}" "${DURATION}" \
    <<'EOF' | tee -a "${results}/summary.md"
import csv, statistics, sys
runs, small, big, conns, bconns, workers, pin, nginx_v, nruns, dur = sys.argv[1:]
rows = list(csv.DictReader(open(runs), delimiter="\t"))
def col(server, workload, key):
    return [float(r[key]) for r in rows if r["server"] == server and r["workload"] == workload]
def fmt(xs, scale, unit, digits):
    m = statistics.median(xs) / scale
    return f"{m:,.{digits}f} {unit} ({min(xs)/scale:,.{digits}f}–{max(xs)/scale:,.{digits}f})", m
print(f"| workload | nginx {nginx_v} | petrel-server | petrel / nginx |")
print("|---|---|---|---|")
for wl, key, scale, unit, digits, what in [
    ("small", "req_per_s", 1000, "k req/s", 1, f"`timestamp.json` ({small} B), {conns} connections"),
    ("big", "bytes_per_s", 1e6, "MB/s", 0, f"{int(big)/1e6:.0f} MB target, {bconns} connections"),
]:
    n, nm = fmt(col("nginx", wl, key), scale, unit, digits)
    p, pm = fmt(col("petrel", wl, key), scale, unit, digits)
    print(f"| {what} | {n} | {p} | **{pm/nm:.2f}×** |")
print()
pinning = "wrk pinned to CPU 0, the server to the other CPUs" if pin == "1" else "no CPU pinning"
print(f"Medians of {nruns} runs of `wrk -t1 -d{dur}` (min–max in brackets); {workers} worker(s) "
      f"per server; {pinning}; access logs off for both.")
EOF
fi
if [[ "${ATTACK}" != 0 ]]; then
python3 - "${attack_tsv}" "${ATTACK_SLOWLORIS}" "${ATTACK_SLOW_READERS}" "${ATTACK_RECONNECTERS}" \
    "${ATTACK_SECONDS}" "${workers}" "${big_bytes}" "$("${nginx_bin}" -v 2>&1 | sed 's/.*nginx\///')" \
    <<'EOF' | tee -a "${results}/summary.md"
import csv, statistics, sys
tsv, slow, readers, recon, secs, workers, big, nginx_v = sys.argv[1:]
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
def med(server, phase, key):
    xs = [float(r[key]) for r in rows if r["server"] == server and r["phase"] == phase]
    return statistics.median(xs) if xs else float("nan")
print()
print(f"| normal client, `timestamp.json` | nginx {nginx_v} | petrel-server |")
print("|---|---|---|")
for phase, what in [("idle", "no attack"), ("attack", "under attack")]:
    for key, label, fmt in [("p50_ms", "p50", "{:.1f} ms"), ("p99_ms", "p99", "{:.1f} ms"),
                            ("failures", "failed requests", "{:.0f}"), ("count", "requests", "{:.0f}")]:
        if phase == "idle" and key in ("failures", "count"):
            continue
        print(f"| {what}: {label} | {fmt.format(med('nginx', phase, key))} | {fmt.format(med('petrel', phase, key))} |")
print(f"| under attack: server peak RSS | {med('nginx', 'attack', 'peak_rss_kib')/1024:.0f} MiB | {med('petrel', 'attack', 'peak_rss_kib')/1024:.0f} MiB |")
print(f"| hostile connections open at once (max, attacker's count) | {med('nginx', 'attack', 'open_max'):.0f} | {med('petrel', 'attack', 'open_max'):.0f} |")
print()
print(f"Attack: {slow} slowloris, {readers} slow readers of the {int(big)/1e6:.0f} MB target and {recon} "
      f"reconnecting clients, from 127.0.0.2–9; the normal client makes one request on a fresh "
      f"connection every 20 ms for {secs} s (a failure counts as 2 s). {workers} worker(s) per "
      f"server; default limits for petrel-server; nginx with worker_connections 4096. "
      f"Medians over runs; nginx's peak RSS is its master's plus its worker's.")
EOF
fi

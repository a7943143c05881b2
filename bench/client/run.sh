#!/usr/bin/env bash
# bench/client/run.sh — client benchmark: refresh + download of one target from a
# 100k-target hashed-bin repository, Petrel (petrel-conformance) side by side with
# python-tuf's ngclient and tough, all served by the same petrel-server.
# See "Client refresh + download" in bench/README.md for what is measured and why.
#
# Usage (from anywhere):
#   bench/client/run.sh                  # N=100000 RUNS=5
#   N=10000 RUNS=3 bench/client/run.sh   # smaller repository, quicker
#
# Environment:
#   N             targets in the repositories (default 100000)
#   BINS          succinct hashed bins (TAP 15) in the main repository (default 1024)
#   CLASSIC_BINS  classic path_hash_prefixes roles in the second repository: 16, 256 or 4096
#                 (one, two or three hex digits of SHA-256(target name); default 256)
#   RUNS          runs per tool and case, medians reported (default 5)
#   TOOLS         subset of "petrel pytuf tough tough0" (default all four); tough0 is tough
#                 with HttpTransportBuilder::initial_backoff(0) (see tough-client/src/main.rs)
#   TIMEOUT       seconds allowed for one timed command (default 600)
#   BENCH_WORK    scratch directory (default <repo>/bench/work; git-ignored)
#   STATE_DIR     where the clients keep their metadata caches and downloads (default
#                 $BENCH_WORK/client-runs; e.g. a tmpfs directory to take fsync out of it)
#   RESULTS_DIR   where runs.tsv, summary.md and logs/ go (default $BENCH_WORK/client-results)
#   CARGO_TARGET_DIR  honoured for the release builds
#   PETREL_BIN_DIR    use petrel-repo, petrel-server and petrel-conformance from this
#                     directory instead of building them
#
# Output: a markdown table on stdout (also in $RESULTS_DIR/summary.md), raw per-run numbers
# in $RESULTS_DIR/runs.tsv, one log per timed command (client output, then the access-log
# lines of its requests) in $RESULTS_DIR/logs/, the server's access logs in
# $RESULTS_DIR/logs/server-*.log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
work="${BENCH_WORK:-${repo_root}/bench/work}"
N="${N:-100000}"
BINS="${BINS:-1024}"
CLASSIC_BINS="${CLASSIC_BINS:-256}"
RUNS="${RUNS:-5}"
TOOLS="${TOOLS:-petrel pytuf tough tough0}"
TIMEOUT="${TIMEOUT:-600}"

say() { printf '[client-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

mkdir -p "${work}"
work="$(cd "${work}" && pwd)"
results="${RESULTS_DIR:-${work}/client-results}"
logs="${results}/logs"
runs_dir="${STATE_DIR:-${work}/client-runs}"
mkdir -p "${logs}" "${results}" "${runs_dir}"

# ---------------------------------------------------------------------------
# 1. Tools (idempotent)
# ---------------------------------------------------------------------------
if [[ ! -x /usr/bin/time ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        say "installing GNU time (for peak RSS)"
        apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y time >/dev/null; }
    fi
    [[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS: apt-get install time"
fi

target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
bin_dir="${PETREL_BIN_DIR:-${target_dir}/release}"
if [[ -z "${PETREL_BIN_DIR:-}" ]]; then
    say "building petrel-repo, petrel-server, petrel-conformance (release)"
    (cd "${repo_root}" && timeout 3600 cargo build --release -q -p petrel-repo -p petrel-server -p petrel-client) \
        || die "cargo build --release failed"
fi
prepo="${bin_dir}/petrel-repo"
pserver="${bin_dir}/petrel-server"
pconf="${bin_dir}/petrel-conformance"
for b in "${prepo}" "${pserver}" "${pconf}"; do [[ -x "${b}" ]] || die "missing ${b}"; done

tough_client=""
if [[ " ${TOOLS} " == *" tough"* ]]; then
    say "building tough-client (release; its own workspace, first build takes minutes)"
    CARGO_TARGET_DIR="${target_dir}/tough-bench-client" timeout 3600 \
        cargo build --release -q --manifest-path "${here}/tough-client/Cargo.toml" \
        || die "cargo build of bench/client/tough-client failed"
    tough_client="${target_dir}/tough-bench-client/release/tough-bench-client"
fi

py=""
if [[ " ${TOOLS} " == *" pytuf "* ]]; then
    py="$(timeout 900 "${repo_root}/scripts/ensure-venv.sh" | tail -n1)" || die "scripts/ensure-venv.sh failed"
fi
ngclient="${repo_root}/tests/interop/python/ngclient_fetch.py"

# ---------------------------------------------------------------------------
# 2. Input and repositories (made once, cached; not timed)
# ---------------------------------------------------------------------------
width=$((${#N} > 6 ? ${#N} : 6))
# The target every client downloads: the middle one, so it is no first/last special case.
one="$(printf "%0${width}d.dat" $((N / 2)))"

input="${work}/input-${N}" # the publish benchmark makes the same deterministic files
if [[ ! -d "${input}" ]]; then
    input="${work}/client-input-${N}"
    if [[ ! -d "${input}" ]]; then
        say "generating ${input} (${N} files of 100-300 bytes)"
        timeout 1800 python3 "${repo_root}/bench/publish/gen_input.py" "${N}" "${input}"
    fi
fi

# Expiries long enough that a cached repository stays usable for weeks.
expiry=(--expiry root=365d --expiry targets=90d --expiry snapshot=90d --expiry timestamp=90d --expiry delegated=90d)

# still_fresh WS: the cached tree's timestamp expires more than 2 days from now.
still_fresh() {
    python3 - "$1/tree/metadata/timestamp.json" <<'EOF'
import json, sys, datetime
exp = json.load(open(sys.argv[1]))["signed"]["expires"]
exp = datetime.datetime.strptime(exp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
sys.exit(0 if exp - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=2) else 1)
EOF
}

# Main repository: BINS succinct hashed bins delegated from targets, N targets files/<name>.
succinct_ws="${work}/client-repo"
succinct_stamp="n=${N} bins=${BINS} prefix=files input=$(basename "${input}")"
if [[ ! -f "${succinct_ws}/.bench-ready" || "$(cat "${succinct_ws}/.bench-ready")" != "${succinct_stamp}" ]] \
    || ! still_fresh "${succinct_ws}"; then
    say "making the succinct-bins repository (${N} targets, ${BINS} bins) in ${succinct_ws}"
    tmp="${succinct_ws}.tmp"
    rm -rf "${tmp}"
    {
        "${prepo}" -r "${tmp}" init "${expiry[@]}"
        "${prepo}" -r "${tmp}" delegate --from targets --to bin --bins "${BINS}"
        timeout 3600 "${prepo}" -r "${tmp}" add "${input}" --prefix files
        timeout 3600 "${prepo}" -r "${tmp}" publish
    } >"${logs}/make-succinct.log" 2>&1 || { tail -n 20 "${logs}/make-succinct.log" >&2; die "making the succinct repository failed"; }
    printf '%s\n' "${succinct_stamp}" >"${tmp}/.bench-ready"
    rm -rf "${succinct_ws}"
    mv "${tmp}" "${succinct_ws}"
fi

# Second repository, for tough (which has no succinct hashed bins and requests consistent-
# snapshot targets in sub-directories as <hash>.<dir>/<file>, not <dir>/<hash>.<file>):
# CLASSIC_BINS roles with path_hash_prefixes, each delegated from targets, and the same N
# files under flat target names (<name>, no files/ prefix).
classic_ws="${work}/client-repo-classic"
classic_stamp="n=${N} classic_bins=${CLASSIC_BINS} prefix=none input=$(basename "${input}")"
if [[ ! -f "${classic_ws}/.bench-ready" || "$(cat "${classic_ws}/.bench-ready")" != "${classic_stamp}" ]] \
    || ! still_fresh "${classic_ws}"; then
    say "making the classic-bins repository (${N} targets, ${CLASSIC_BINS} path_hash_prefixes roles) in ${classic_ws}"
    tmp="${classic_ws}.tmp"
    rm -rf "${tmp}"
    mkdir -p "${tmp}"
    # Hard links of the input files grouped by bin: grouped/<prefix>/<name>.
    timeout 1800 python3 - "${input}" "${tmp}/grouped" "${CLASSIC_BINS}" <<'EOF'
import hashlib, os, sys
src, out, bins = sys.argv[1], sys.argv[2], int(sys.argv[3])
digits = {16: 1, 256: 2, 4096: 3}[bins]
for name in sorted(os.listdir(src)):
    p = hashlib.sha256(name.encode()).hexdigest()[:digits]
    d = os.path.join(out, p)
    os.makedirs(d, exist_ok=True)
    os.link(os.path.join(src, name), os.path.join(d, name))
EOF
    digits=$(case "${CLASSIC_BINS}" in 16) echo 1 ;; 256) echo 2 ;; 4096) echo 3 ;; *) die "CLASSIC_BINS must be 16, 256 or 4096" ;; esac)
    {
        "${prepo}" -r "${tmp}/ws" init "${expiry[@]}"
        first="$(printf "%0${digits}x" 0)"
        "${prepo}" -r "${tmp}/ws" delegate --from targets --to "bin-${first}" --hash-prefixes "${first}"
    } >"${logs}/make-classic.log" 2>&1 || { tail -n 20 "${logs}/make-classic.log" >&2; die "making the classic repository failed"; }
    key_id="$(sed -n 's/^generated key \([0-9a-f]*\).*/\1/p' "${logs}/make-classic.log" | tail -n1)"
    [[ -n "${key_id}" ]] || die "no bin key id in ${logs}/make-classic.log"
    {
        for ((i = 1; i < CLASSIC_BINS; i++)); do
            p="$(printf "%0${digits}x" "${i}")"
            "${prepo}" -r "${tmp}/ws" delegate --from targets --to "bin-${p}" --hash-prefixes "${p}" \
                --public-key "${tmp}/ws/keys/${key_id}.pem"
        done
        for d in "${tmp}/grouped"/*; do
            timeout 600 "${prepo}" -r "${tmp}/ws" add "${d}" --role "bin-$(basename "${d}")"
        done
        timeout 3600 "${prepo}" -r "${tmp}/ws" publish
    } >>"${logs}/make-classic.log" 2>&1 || { tail -n 20 "${logs}/make-classic.log" >&2; die "making the classic repository failed"; }
    rm -rf "${tmp}/grouped"
    mv "${tmp}/ws" "${tmp}/ws.done"
    rm -rf "${classic_ws}"
    mv "${tmp}/ws.done" "${classic_ws}"
    rmdir "${tmp}"
    printf '%s\n' "${classic_stamp}" >"${classic_ws}/.bench-ready"
fi

# ---------------------------------------------------------------------------
# 3. The server (one per tree, shared by all clients) and its access log
# ---------------------------------------------------------------------------
server_pid=""
server_log=""
url=""
stop_server() {
    if [[ -n "${server_pid}" ]]; then
        kill "${server_pid}" 2>/dev/null || true
        wait "${server_pid}" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

start_server() { # TREE NAME
    stop_server
    server_log="${logs}/server-$2.log"
    local out="${logs}/server-$2.out"
    : >"${server_log}"
    : >"${out}"
    # Bounded: the server stops by itself after 3 hours at the latest.
    timeout 10800 "${pserver}" serve --root "$1" --listen 127.0.0.1:0 --access-log \
        >"${out}" 2>"${server_log}" &
    server_pid=$!
    local i
    for ((i = 0; i < 100; i++)); do
        url="$(sed -n 's/^listening on //p' "${out}")"
        [[ -n "${url}" ]] && break
        sleep 0.1
    done
    [[ -n "${url}" ]] || die "petrel-server did not start (see ${server_log})"
    say "serving $1 at ${url}"
}

# Waits until the access log stops growing (a line is written when a response body is
# finished or dropped, which can be a moment after the client has exited).
log_settle() {
    local a b
    a=$(stat -c %s "${server_log}")
    while :; do
        sleep 0.2
        b=$(stat -c %s "${server_log}")
        [[ "${a}" == "${b}" ]] && break
        a="${b}"
    done
}

# ---------------------------------------------------------------------------
# 4. Measuring
# ---------------------------------------------------------------------------
runs_tsv="${results}/runs.tsv"
[[ -f "${runs_tsv}" ]] && mv "${runs_tsv}" "${runs_tsv}.prev"
printf 'repo\tcase\ttool\trun\twall_s\tmaxrss_kb\trequests\tbytes\tnot_found\tstatus\n' >"${runs_tsv}"

# measure REPO CASE TOOL RUN CMD...: runs CMD under timeout and GNU time; records wall time
# (nanosecond clock around the command), peak RSS (wait4 rusage of the largest process in
# the command tree), and the requests and response-body bytes the server logged meanwhile.
measure() {
    local repo="$1" case="$2" tool="$3" run="$4"
    shift 4
    local log="${logs}/${repo}-${case}-${tool}-${run}.log" rss_file status=0 t0 t1
    rss_file="$(mktemp)"
    log_settle
    local off0 off1
    off0=$(stat -c %s "${server_log}")
    t0=$(date +%s%N)
    timeout "${TIMEOUT}" /usr/bin/time -f '%M' -o "${rss_file}" "$@" >"${log}" 2>&1 || status=$?
    t1=$(date +%s%N)
    log_settle
    off1=$(stat -c %s "${server_log}")
    local rss wall req bytes nf
    rss="$(tail -n1 "${rss_file}")"
    rm -f "${rss_file}"
    wall="$(awk -v a="${t0}" -v b="${t1}" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
    # Access-log line: <time> INFO <METHOD> <path> <status> <body bytes> <duration>
    read -r req bytes nf < <(tail -c +$((off0 + 1)) "${server_log}" | head -c $((off1 - off0)) \
        | awk '$2 == "INFO" && ($3 == "GET" || $3 == "HEAD") { n++; b += $6; if ($5 == 404) nf++ }
               END { printf "%d %d %d\n", n, b, nf }')
    cp "${log}" "${log}.tmp" && tail -c +$((off0 + 1)) "${server_log}" | head -c $((off1 - off0)) \
        | sed 's/^/server: /' >>"${log}.tmp" && mv "${log}.tmp" "${log}"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${repo}" "${case}" "${tool}" "${run}" \
        "${wall}" "${rss:-0}" "${req}" "${bytes}" "${nf}" "${status}" >>"${runs_tsv}"
    if [[ "${status}" != 0 ]]; then
        say "  ${tool}: FAILED (exit ${status}) after ${wall} s; see ${log}"
        grep -v '^server: ' "${log}" | tail -n 3 | cut -c1-400 >&2
    else
        say "  ${tool}: ${wall} s, ${rss} KiB, ${req} requests, ${bytes} bytes"
    fi
    return 0
}

# client REPO CASE TOOL RUN TREE TARGET: one refresh + download by TOOL into its own
# state directory client-runs/REPO-TOOL-RUN (emptied first for the cold case, reused
# as the cold run left it for the warm case).
client() {
    local repo="$1" case="$2" tool="$3" run="$4" tree="$5" target="$6"
    local state="${runs_dir}/${repo}-${tool}-${run}"
    local root="${tree}/metadata/1.root.json"
    if [[ "${case}" == cold ]]; then
        rm -rf "${state}"
        mkdir -p "${state}"
        # Installing the trusted root is setup, not part of the timed command.
        [[ "${tool}" == petrel ]] && "${pconf}" --metadata-dir "${state}/md" init "${root}" 2>/dev/null
    fi
    case "${tool}" in
    petrel)
        measure "${repo}" "${case}" petrel "${run}" "${pconf}" --metadata-dir "${state}/md" \
            --metadata-url "${url}/metadata" --target-name "${target}" \
            --target-base-url "${url}/targets" --target-dir "${state}/t" download
        ;;
    pytuf)
        measure "${repo}" "${case}" pytuf "${run}" "${py}" "${ngclient}" \
            --metadata-url "${url}/metadata" --targets-url "${url}/targets" \
            --trusted-root "${root}" --metadata-dir "${state}/md" --download-dir "${state}/t" "${target}"
        ;;
    tough | tough0)
        local extra=()
        [[ "${tool}" == tough0 ]] && extra=(--initial-backoff-ms 0)
        mkdir -p "${state}/t"
        measure "${repo}" "${case}" "${tool}" "${run}" "${tough_client}" --root "${root}" \
            --metadata-url "${url}/metadata" --targets-url "${url}/targets" \
            --datastore "${state}/ds" --out "${state}/t/one" "${extra[@]}" "${target}"
        ;;
    esac
}

# The order of the tools is rotated every run so no tool is always first or last.
rotated() { # RUN TOOL...
    local run="$1" i
    shift
    local -a t=("$@")
    for ((i = 0; i < ${#t[@]}; i++)); do
        printf '%s\n' "${t[(i + run) % ${#t[@]}]}"
    done
}

bench_repo() { # REPO TREE TARGET TOOL...
    local repo="$1" tree="$2" target="$3"
    shift 3
    local run tool
    start_server "${tree}" "${repo}"
    for ((run = 1; run <= RUNS; run++)); do
        say "${repo} run ${run}/${RUNS}: cold (empty metadata dir), then warm (nothing changed)"
        for tool in $(rotated "${run}" "$@"); do client "${repo}" cold "${tool}" "${run}" "${tree}" "${target}"; done
        for tool in $(rotated "${run}" "$@"); do client "${repo}" warm "${tool}" "${run}" "${tree}" "${target}"; done
    done
    stop_server
}

tools_in() { # WORD...: the TOOLS that are among WORD...
    local t
    for t in ${TOOLS}; do [[ " $* " == *" ${t} "* ]] && printf '%s ' "${t}"; done
    return 0
}

# Main repository: Petrel and python-tuf. tough cannot read it (targets.json has
# succinct_roles and no roles list; tough's schema requires roles): one attempt per tough
# variant is made and recorded, so the failure is shown, not assumed.
succinct_tools="$(tools_in petrel pytuf)"
[[ -n "${succinct_tools}" ]] && bench_repo succinct "${succinct_ws}/tree" "files/${one}" ${succinct_tools}
if [[ -n "$(tools_in tough tough0)" ]]; then
    saved_runs="${RUNS}"
    RUNS=1
    say "succinct: one tough attempt (expected to fail: no TAP 15 support)"
    start_server "${succinct_ws}/tree" succinct-tough
    client succinct cold tough 1 "${succinct_ws}/tree" "files/${one}"
    stop_server
    RUNS="${saved_runs}"
fi

# Classic-bins repository: all tools.
classic_tools="$(tools_in petrel pytuf tough tough0)"
[[ -n "${classic_tools}" ]] && bench_repo classic "${classic_ws}/tree" "${one}" ${classic_tools}

# ---------------------------------------------------------------------------
# 5. Summary: medians and ratios
# ---------------------------------------------------------------------------
{
    rev="$(git -C "${repo_root}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    dirty="$(git -C "${repo_root}" status --porcelain -- client 2>/dev/null | wc -l)"
    echo "N=${N} targets; succinct: ${BINS} succinct bins; classic: ${CLASSIC_BINS} path_hash_prefixes roles; RUNS=${RUNS}"
    if [[ -n "${PETREL_BIN_DIR:-}" ]]; then
        petrel_from="Petrel binaries from ${PETREL_BIN_DIR} (tree now at ${rev})"
    else
        petrel_from="Petrel built at ${rev} (${dirty} changed paths under client/)"
    fi
    echo "${petrel_from}; python-tuf $("${py:-python3}" -c 'import tuf; print(tuf.__version__)' 2>/dev/null || echo '?'); tough 0.24.0; state in ${runs_dir}"
    echo
    python3 "${here}/summarize.py" "${runs_tsv}"
} | tee "${results}/summary.md"

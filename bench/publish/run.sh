#!/usr/bin/env bash
# bench/publish/run.sh — publishing benchmark: Petrel (petrel-repo) side by side with
# tuftool and python-tuf on the same input. See bench/README.md for what is measured.
#
# Usage (from anywhere):
#   bench/publish/run.sh                          # SIZES="1000 10000 100000" RUNS=5
#   SIZES="1000 10000" RUNS=3 bench/publish/run.sh
#   MODES=incremental RUNS=7 bench/publish/run.sh
#
# Environment:
#   SIZES       target counts for the fresh publish (default "1000 10000 100000")
#   RUNS        runs per tool and case; medians are reported (default 5)
#   MODES       "fresh", "incremental" or both (default "fresh incremental")
#   INCR_SIZE   targets in the repository for the incremental case (default 100000)
#   BINS        hashed bins in the incremental repositories (default 256)
#   TOOLS       subset of "petrel tuftool pytuf" (default all three)
#   FLOORS      reference commands timed on the fresh cases beside the tools, subset of
#               "cp link" (default both): `cp -r INPUT OUT` (write every file once, no
#               hashing, signing or sync) and `cp -al INPUT OUT` (one hard link per file).
#               They are no TUF tool: they show what the file system alone costs.
#   SETTLE      seconds to wait after removing a round's outputs of SETTLE_FROM or more
#               files (default 65). ext4 without a journal skips inodes freed in the
#               last 60 s when it allocates new ones (`recently_deleted`), so the first
#               run after a large removal pays for it. SETTLE=0 for a quick look.
#   SETTLE_FROM target count from which rounds settle (default 10000)
#   TIMEOUT     seconds allowed for one timed command (default 900)
#   BENCH_WORK  scratch directory (default <repo>/bench/work; git-ignored)
#   PETREL_REPO_BIN  use this petrel-repo instead of building one
#   TUFTOOL_BIN      use this tuftool instead of installing one into BENCH_WORK/tools
#   KEEP_RESULTS=1   append to results/runs.tsv instead of starting it afresh
#   CARGO_TARGET_DIR honoured when building petrel-repo (release profile)
#
# Output: a markdown table on stdout (also in $BENCH_WORK/results/summary.md), raw
# per-run numbers in $BENCH_WORK/results/runs.tsv, command logs in $BENCH_WORK/logs/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
work="${BENCH_WORK:-${repo_root}/bench/work}"
SIZES="${SIZES:-1000 10000 100000}"
RUNS="${RUNS:-5}"
MODES="${MODES:-fresh incremental}"
INCR_SIZE="${INCR_SIZE:-100000}"
BINS="${BINS:-256}"
BIN_PREFIX=bin # bin role names: bin-00 ... bin-ff (Petrel and python-tuf alike)
TOOLS="${TOOLS:-petrel tuftool pytuf}"
FLOORS="${FLOORS-cp link}"
SETTLE="${SETTLE:-65}"
SETTLE_FROM="${SETTLE_FROM:-10000}"
TIMEOUT="${TIMEOUT:-900}"

say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
has_tool() { [[ " ${TOOLS} " == *" $1 "* ]]; }
has_mode() { [[ " ${MODES} " == *" $1 "* ]]; }

mkdir -p "${work}" "${work}/logs" "${work}/results" "${work}/runs"

# tuftool opens every input file at once (one task per file): allow as many open files as
# this machine lets us. Where the hard limit is below the target count, `tuftool create`
# fails with "Too many open files" and the table says so.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "open files limit: $(ulimit -n)"
work="$(cd "${work}" && pwd)"

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

if [[ -n "${PETREL_REPO_BIN:-}" ]]; then
    petrel="${PETREL_REPO_BIN}"
else
    say "building petrel-repo (release)"
    (cd "${repo_root}" && cargo build --release -q -p petrel-repo) \
        || die "cargo build --release -p petrel-repo failed"
    petrel="${CARGO_TARGET_DIR:-${repo_root}/target}/release/petrel-repo"
fi
[[ -x "${petrel}" ]] || die "no petrel-repo binary at ${petrel}"

tuftool="${TUFTOOL_BIN:-${work}/tools/bin/tuftool}"
if has_tool tuftool && [[ ! -x "${tuftool}" ]]; then
    say "installing tuftool with cargo into ${work}/tools (takes several minutes, once)"
    cargo install tuftool --locked --root "${work}/tools" >"${work}/logs/tuftool-install.log" 2>&1 \
        || { tail -n 20 "${work}/logs/tuftool-install.log" >&2; die "cargo install tuftool failed"; }
fi

py=""
if has_tool pytuf; then
    py="$("${repo_root}/scripts/ensure-venv.sh" | tail -n1)" || die "scripts/ensure-venv.sh failed"
fi
pytuf_script="${here}/pytuf_publish.py"

# ---------------------------------------------------------------------------
# 2. Input (deterministic, reused across runs)
# ---------------------------------------------------------------------------
sizes_needed="${SIZES}"
has_mode incremental && sizes_needed="${sizes_needed} ${INCR_SIZE}"
for n in $(tr ' ' '\n' <<<"${sizes_needed}" | sort -nu); do
    if [[ ! -d "${work}/input-${n}" ]]; then
        say "generating input-${n} (${n} files of 100-300 bytes)"
        python3 "${here}/gen_input.py" "${n}" "${work}/input-${n}"
    fi
done

# ---------------------------------------------------------------------------
# 3. Measuring
# ---------------------------------------------------------------------------
runs_tsv="${work}/results/runs.tsv"
[[ -f "${runs_tsv}" && -z "${KEEP_RESULTS:-}" ]] && mv "${runs_tsv}" "${runs_tsv}.prev"
[[ -f "${runs_tsv}" ]] || printf 'case\ttool\trun\twall_s\tmaxrss_kb\tstatus\n' >"${runs_tsv}"

# measure CASE TOOL RUN CMD...: runs CMD under timeout and GNU time, appends wall time
# (nanosecond clock around the command) and peak RSS (largest process of the command
# tree, from wait4 rusage) to runs.tsv. Output goes to a log file.
measure() {
    local case="$1" tool="$2" run="$3"
    shift 3
    local log="${work}/logs/${case}-${tool}-${run}.log" rss_file
    rss_file="$(mktemp)"
    sync # start every run with no dirty pages from the previous one
    local t0 t1 status=0
    t0=$(date +%s%N)
    timeout "${TIMEOUT}" /usr/bin/time -f '%M' -o "${rss_file}" "$@" >"${log}" 2>&1 || status=$?
    t1=$(date +%s%N)
    local rss
    rss="$(tail -n1 "${rss_file}")"
    rm -f "${rss_file}"
    local wall
    wall="$(awk -v a="${t0}" -v b="${t1}" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${case}" "${tool}" "${run}" "${wall}" "${rss:-0}" "${status}" >>"${runs_tsv}"
    if [[ "${status}" != 0 ]]; then
        say "  ${tool}: FAILED (exit ${status}); last lines of ${log}:"
        tail -n 5 "${log}" >&2
    else
        say "  ${tool}: ${wall} s, ${rss} KiB"
    fi
}

# The order of the tools is rotated every run so no tool is always first or last.
# rotated RUN [EXTRA...]: TOOLS and EXTRA, rotated.
rotated() {
    local run="$1" i
    shift
    local -a t=()
    for x in ${TOOLS} "$@"; do t+=("${x}"); done
    for ((i = 0; i < ${#t[@]}; i++)); do
        printf '%s\n' "${t[(i + run) % ${#t[@]}]}"
    done
}

# tuftool: one ed25519 key for all four top-level roles and a root.json, made once
# (setup, not timed). tuftool reads ed25519 keys as PKCS#8 DER (only RSA as PEM), so the
# PEM made by `petrel-repo key generate` is converted.
tuf_keys="${work}/tuftool-keys"
tuf_root="${tuf_keys}/root.json"
tuf_key="${tuf_keys}/key.pk8"
if has_tool tuftool && [[ ! -f "${tuf_root}" ]]; then
    say "tuftool setup: key and root.json"
    rm -rf "${tuf_keys}"
    mkdir -p "${tuf_keys}"
    "${petrel}" key generate -o "${tuf_keys}/key.pem" >/dev/null
    grep -v -- '-----' "${tuf_keys}/key.pem" | tr -d '\r\n' | base64 -d >"${tuf_key}"
    "${tuftool}" root init "${tuf_root}"
    "${tuftool}" root expire "${tuf_root}" 'in 52 weeks'
    for role in root targets snapshot timestamp; do
        "${tuftool}" root set-threshold "${tuf_root}" "${role}" 1
    done
    "${tuftool}" root add-key "${tuf_root}" -k "${tuf_key}" -r root -r targets -r snapshot -r timestamp >/dev/null
    "${tuftool}" root sign "${tuf_root}" -k "${tuf_key}"
fi
tuf_versions() { # CASE-independent flags for a given version triple
    printf -- '--targets-expires\nin 90 days\n--targets-version\n%s\n--snapshot-expires\nin 7 days\n--snapshot-version\n%s\n--timestamp-expires\nin 1 day\n--timestamp-version\n%s\n' "$1" "$2" "$3"
}

# ---------------------------------------------------------------------------
# 4. Fresh publish
# ---------------------------------------------------------------------------
if has_mode fresh; then
    # tree_of TOOL OUT: where a tool's output keeps the targets/ directory.
    tree_of() {
        case "$1" in
        petrel | pytuf) printf '%s/tree' "$2" ;;
        *) printf '%s' "$2" ;;
        esac
    }
    # Every round starts with no output of earlier rounds left (removed, synced and
    # settled at the end of the round before), so no tool pays for another's removal.
    for n in ${SIZES}; do
        input="${work}/input-${n}"
        rm -rf "${work}/runs/fresh-${n}-"*
        for ((run = 1; run <= RUNS; run++)); do
            say "fresh-${n} run ${run}/${RUNS}"
            for tool in $(rotated "${run}" ${FLOORS}); do
                out="${work}/runs/fresh-${n}-${tool}"
                case "${tool}" in
                petrel)
                    measure "fresh-${n}" petrel "${run}" bash -c '
                        set -e
                        "$1" -r "$2" init
                        "$1" -r "$2" add "$3" --prefix files
                        "$1" -r "$2" publish' _ "${petrel}" "${out}" "${input}"
                    ;;
                tuftool)
                    mapfile -t vflags < <(tuf_versions 1 1 1)
                    measure "fresh-${n}" tuftool "${run}" "${tuftool}" create \
                        --root "${tuf_root}" --key "${tuf_key}" --add-targets "${input}" \
                        "${vflags[@]}" --outdir "${out}"
                    ;;
                pytuf)
                    measure "fresh-${n}" pytuf "${run}" "${py}" "${pytuf_script}" fresh "${input}" "${out}"
                    ;;
                cp)
                    mkdir -p "${out}"
                    measure "fresh-${n}" cp "${run}" cp -r "${input}" "${out}/targets"
                    ;;
                link)
                    mkdir -p "${out}"
                    measure "fresh-${n}" link "${run}" cp -al "${input}" "${out}/targets"
                    ;;
                esac
            done
            # Sanity check (not timed): every tool's tree has every target under its
            # SHA-256 name (Petrel also links each under its SHA-512 name, as the
            # specification asks for every listed hash).
            for tool in ${TOOLS}; do
                out="${work}/runs/fresh-${n}-${tool}"
                count=$(find "$(tree_of "${tool}" "${out}")/targets" \( -type f -o -type l \) 2>/dev/null \
                    | grep -cE '/[0-9a-f]{64}\.[^/]*$' || true)
                [[ "${count}" == "${n}" ]] || say "WARNING: ${tool}'s tree for ${n} (run ${run}) has ${count} of ${n} targets"
            done
            rm -rf "${work}/runs/fresh-${n}-"*
            sync
            if ((n >= SETTLE_FROM && SETTLE > 0)); then
                say "settling ${SETTLE} s after removing the round's outputs"
                sleep "${SETTLE}"
            fi
        done
    done
fi

# ---------------------------------------------------------------------------
# 5. Incremental: add one target to an existing INCR_SIZE-target repository
# ---------------------------------------------------------------------------
# Lists a metadata directory as "name size mtime" lines, to see what a publish changed.
list_md() { find "$1" -maxdepth 1 -type f -printf '%f %s %T@\n' | sort; }
changed_md() { # BEFORE AFTER: names of metadata files added or rewritten
    join -a 2 -e NONE -o '2.1,1.2,1.3,2.2,2.3' <(cut -d' ' -f1-3 "$1") <(cut -d' ' -f1-3 "$2") \
        | awk '$2 != $4 || $3 != $5 { print $1 }' | tr '\n' ' '
}
tuf_current() { # TREE: prints "targets snapshot timestamp" versions of a tuftool tree
    python3 - "$1/metadata" <<'EOF'
import json, os, sys
d = sys.argv[1]
ts = json.load(open(os.path.join(d, "timestamp.json")))["signed"]
sv = ts["meta"]["snapshot.json"]["version"]
sn = json.load(open(os.path.join(d, f"{sv}.snapshot.json")))["signed"]
print(sn["meta"]["targets.json"]["version"], sv, ts["version"])
EOF
}

if has_mode incremental; then
    n="${INCR_SIZE}"
    input="${work}/input-${n}"
    case_name="incr-${n}"
    changes_log="${work}/results/incremental-changes.txt"
    : >"${changes_log}"
    for tool in ${TOOLS}; do
        base="${work}/runs/${case_name}-${tool}"
        [[ -f "${base}.ready" ]] && continue
        say "incremental setup (not timed): ${tool}, ${n} targets"
        rm -rf "${base}" "${base}.ready" "${base}.new"
        case "${tool}" in
        petrel)
            "${petrel}" -r "${base}" init >/dev/null
            "${petrel}" -r "${base}" delegate --from targets --to bin --bins "${BINS}" >/dev/null
            "${petrel}" -r "${base}" add "${input}" --prefix files >/dev/null
            "${petrel}" -r "${base}" publish >/dev/null
            ;;
        pytuf)
            "${py}" "${pytuf_script}" fresh "${input}" "${base}" --bins "${BINS}"
            ;;
        tuftool)
            # tuftool has no hashed bins: a flat targets.json with all the targets. Built
            # from chunks of 10 000 files (create, then update per chunk) so it also works
            # where `ulimit -n` is too low for `tuftool create` on all files at once.
            chunks="${work}/input-${n}-chunks"
            if [[ ! -d "${chunks}" ]]; then
                rm -rf "${chunks}.tmp"
                python3 - "${input}" "${chunks}.tmp" <<'EOF'
import os, sys
src, out = sys.argv[1], sys.argv[2]
for i, name in enumerate(sorted(os.listdir(src))):
    d = os.path.join(out, f"{i // 10000:03d}")
    os.makedirs(d, exist_ok=True)
    os.link(os.path.join(src, name), os.path.join(d, name))  # hard links: same files
EOF
                mv "${chunks}.tmp" "${chunks}"
            fi
            k=0
            for chunk in "${chunks}"/*/; do
                k=$((k + 1))
                mapfile -t vflags < <(tuf_versions "${k}" "${k}" "${k}")
                if [[ "${k}" == 1 ]]; then
                    "${tuftool}" create --root "${tuf_root}" --key "${tuf_key}" \
                        --add-targets "${chunk}" "${vflags[@]}" --outdir "${base}" >/dev/null
                else
                    "${tuftool}" update --root "${tuf_root}" --key "${tuf_key}" \
                        --metadata-url "file://${base}/metadata/" --add-targets "${chunk}" \
                        "${vflags[@]}" --outdir "${base}" >/dev/null
                fi
            done
            ;;
        esac
        touch "${base}.ready"
    done
    for ((run = 1; run <= RUNS; run++)); do
        say "${case_name} run ${run}/${RUNS}: add one target and publish"
        for tool in $(rotated "${run}"); do
            base="${work}/runs/${case_name}-${tool}"
            # A new file every run (distinct name and content), so each run really adds one.
            # Kept afterwards: tuftool's tree symlinks to it.
            stamp="$(date +%s%N)"
            newdir="${base}.new/${stamp}"
            mkdir -p "${newdir}"
            newfile="${newdir}/new-${tool}-${stamp}.dat"
            printf 'new target %s %s\n' "${tool}" "${stamp}" >"${newfile}"
            case "${tool}" in
            petrel | pytuf) md="${base}/tree/metadata" ;;
            tuftool) md="${base}/metadata" ;;
            esac
            list_md "${md}" >"${work}/runs/md-before"
            case "${tool}" in
            petrel)
                measure "${case_name}" petrel "${run}" bash -c '
                    set -e
                    "$1" -r "$2" add "$3" --prefix files
                    "$1" -r "$2" publish' _ "${petrel}" "${base}" "${newfile}"
                ;;
            pytuf)
                measure "${case_name}" pytuf "${run}" "${py}" "${pytuf_script}" add "${base}" \
                    "${newfile}" --name "files/$(basename "${newfile}")"
                ;;
            tuftool)
                read -r tv sv tsv < <(tuf_current "${base}")
                mapfile -t vflags < <(tuf_versions $((tv + 1)) $((sv + 1)) $((tsv + 1)))
                measure "${case_name}" tuftool "${run}" "${tuftool}" update \
                    --root "${tuf_root}" --key "${tuf_key}" --metadata-url "file://${md}/" \
                    --add-targets "${newdir}" "${vflags[@]}" --outdir "${base}"
                ;;
            esac
            list_md "${md}" >"${work}/runs/md-after"
            changed="$(changed_md "${work}/runs/md-before" "${work}/runs/md-after")"
            verdict=""
            if [[ "${tool}" != tuftool ]]; then
                # Expected: exactly one bin, the snapshot and the timestamp.
                if [[ "$(wc -w <<<"${changed}")" == 3 && "${changed}" =~ [0-9]+\.${BIN_PREFIX}-[0-9a-f]+\.json ]] \
                    && [[ "${changed}" =~ [0-9]+\.snapshot\.json ]] && [[ "${changed}" == *timestamp.json* ]]; then
                    verdict="(ok: one bin + snapshot + timestamp)"
                else
                    verdict="(UNEXPECTED: expected one bin + snapshot + timestamp)"
                fi
            fi
            echo "${tool} run ${run}: ${changed}${verdict}" >>"${changes_log}"
            say "  ${tool} rewrote metadata: ${changed}${verdict}"
        done
    done
fi

# ---------------------------------------------------------------------------
# 6. Summary: medians and ratios
# ---------------------------------------------------------------------------
python3 "${here}/summarize.py" "${runs_tsv}" | tee "${work}/results/summary.md"
if [[ -s "${work}/results/incremental-changes.txt" ]] && has_mode incremental; then
    echo
    echo "Metadata files written by each incremental publish:"
    echo
    sed 's/^/    /' "${work}/results/incremental-changes.txt"
fi | tee -a "${work}/results/summary.md"

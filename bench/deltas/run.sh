#!/usr/bin/env bash
# bench/deltas/run.sh — binary deltas on real old/new pairs: Petrel's deltas side by side
# with bsdiff, xdelta3 and `zstd --patch-from`, in one run. See bench/README.md, "Binary
# deltas".
#
#   bench/deltas/fetch_pairs.sh               # once: the pairs, from the package repositories
#   bench/deltas/run.sh                       # every pair, RUNS=3
#   PAIRS="libcrypto vmlinux" RUNS=5 bench/deltas/run.sh
#   PAIRS=synthetic bench/deltas/run.sh       # the synthetic firmware-like pair (gen_pair.py)
#   OLD=a.bin NEW=b.bin bench/deltas/run.sh   # your own pair (PAIR names it, "custom")
#
# For every pair and tool, RUNS times (the tools' order rotating every run): build the
# delta, apply it, and compare the result with `new` byte for byte (a pair whose result
# differs is aborted with an error). Each command runs under peakmem.py: wall time, peak
# RSS (VmHWM) and peak anonymous RSS (RssAnon), and the delta's size. The commands:
#
#   petrel    petrel-repo delta-file OLD NEW -o D     (keeps the smallest engine's delta)
#             petrel delta-apply OLD D -o OUT         (base memory-mapped)
#             petrel delta-apply --streaming OLD D -o OUT
#   bsdiff    bsdiff OLD NEW D  /  bspatch OLD OUT D
#   xdelta3   xdelta3 -e -9 -f -s OLD NEW D  /  xdelta3 -d -f -s OLD D OUT
#   zstd      zstd -q -f ${ZSTD_LEVEL} --long=31 --patch-from=OLD NEW -o D
#             zstd -q -f -d --long=31 --patch-from=OLD D -o OUT
#
# A directory pair (pair.json kind "dir", e.g. pg-tree-dir) is measured with Petrel's
# tree deltas only, when the build has them; the peers' numbers for it are those of the
# same trees as a tar (pg-tree). Both trees are packed once per run as the tree artifacts
# `petrel-repo add` stores (`pack-tree`; the new tree's packing is timed and recorded as
# step "pack"), then, as `publish` does, the delta is built between the two containers:
#
#   petrel    petrel-repo pack-tree OLDDIR -o old.ptree (and NEWDIR -o new.ptree)
#             petrel-repo delta-file old.ptree new.ptree -o D
#             petrel delta-apply [--streaming] OLDDIR D -o OUTDIR
#
# Environment: RUNS (3), PAIRS (every pair under bench/work/deltas/pairs, smallest first),
# TOOLS ("petrel bsdiff xdelta3 zstd"), ZSTD_LEVEL ("--ultra -22"), TIMEOUT (1800 s per
# command: a command still running is killed, reported as timed out, and that tool is not
# run again on that pair), OLD/NEW/PAIR, SIZE_MIB (8, the synthetic pair), BENCH_WORK (bench/work),
# PETREL_REPO_BIN and PETREL_BIN (prebuilt binaries; default: one
# `cargo build --release -p petrel-repo -p petrel-client`), CARGO_TARGET_DIR.
# Installs xdelta3, bsdiff and zstd from the system's packages when missing (as root).
#
# Output: bench/work/deltas/results/<pair>/<tool>.jsonl (one line per measured command;
# a run replaces the files of the pairs and tools it measures, and keeps the others),
# results.json and summary.md (summarize.py, over everything under results/; also printed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
work="${BENCH_WORK:-${repo_root}/bench/work}/deltas"
RUNS="${RUNS:-3}"
TOOLS="${TOOLS:-petrel bsdiff xdelta3 zstd}"
ZSTD_LEVEL="${ZSTD_LEVEL:---ultra -22}"
TIMEOUT="${TIMEOUT:-1800}"
pairs_dir="${work}/pairs"
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[[ "${RUNS}" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"
[[ "${TIMEOUT}" =~ ^[1-9][0-9]*$ ]] || die "TIMEOUT must be a number of seconds"
for t in ${TOOLS}; do
    case "$t" in petrel | bsdiff | xdelta3 | zstd) ;; *) die "unknown tool '$t' (petrel bsdiff xdelta3 zstd)" ;; esac
done
read -r -a zstd_level <<<"${ZSTD_LEVEL}"
mkdir -p "${work}/results" "${work}/scratch"

wants() { [[ " ${TOOLS} " == *" $1 "* ]]; }

# The peers, from the system's packages.
missing=()
for t in bsdiff bspatch xdelta3 zstd; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
    [[ "$(id -u)" == 0 ]] || die "${missing[*]} missing: apt-get install xdelta3 bsdiff zstd"
    say "installing xdelta3 bsdiff zstd"
    apt-get install -y -q xdelta3 bsdiff zstd >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q xdelta3 bsdiff zstd >/dev/null; }
fi

# Petrel: release builds, copied so that a rebuild in the shared target directory cannot
# swap them during a run. Without the delta subcommands, Petrel's columns stay empty and
# the script exits non-zero at the end.
petrel_error=""
petrel_tree=0
petrel_repo="" petrel_agent=""
if wants petrel; then
    mkdir -p "${work}/bin"
    if [[ -n "${PETREL_REPO_BIN:-}" && -n "${PETREL_BIN:-}" ]]; then
        cp "${PETREL_REPO_BIN}" "${work}/bin/petrel-repo" && cp "${PETREL_BIN}" "${work}/bin/petrel"
    else
        say "building Petrel: cargo build --release -p petrel-repo -p petrel-client (log: ${work}/cargo.log)"
        target="${CARGO_TARGET_DIR:-${repo_root}/target}"
        if (cd "${repo_root}" && cargo build --release -p petrel-repo -p petrel-client) >"${work}/cargo.log" 2>&1; then
            cp "${target}/release/petrel-repo" "${work}/bin/petrel-repo"
            cp "${target}/release/petrel" "${work}/bin/petrel"
        else
            petrel_error="the release build failed (see ${work}/cargo.log)"
        fi
    fi
    petrel_repo="${work}/bin/petrel-repo" petrel_agent="${work}/bin/petrel"
    if [[ -z "${petrel_error}" ]]; then
        if ! "${petrel_repo}" delta-file --help >"${work}/delta-file.help" 2>&1; then
            petrel_error="this build of petrel-repo has no 'delta-file' subcommand"
        elif ! "${petrel_agent}" delta-apply --help >"${work}/delta-apply.help" 2>&1; then
            petrel_error="this build of petrel has no 'delta-apply' subcommand"
        elif ! grep -q -- '--streaming' "${work}/delta-apply.help"; then
            petrel_error="this build's 'petrel delta-apply' has no --streaming option"
        fi
    fi
    if [[ -n "${petrel_error}" ]]; then
        say "ERROR: Petrel cannot be measured: ${petrel_error}. Its columns are left empty; the peers are measured."
    elif grep -q 'Two tree containers' "${work}/delta-file.help" && grep -q 'tree delta' "${work}/delta-apply.help"; then
        petrel_tree=1
    fi
fi

# The pairs: NAME OLD NEW KIND.
pair_list=()
if [[ -n "${OLD:-}" || -n "${NEW:-}" ]]; then
    [[ -f "${OLD:-}" && -f "${NEW:-}" ]] || die "OLD and NEW must both name files"
    pair_list+=("${PAIR:-custom}|${OLD}|${NEW}|file")
else
    if [[ -z "${PAIRS:-}" ]]; then
        PAIRS="$(find "${pairs_dir}" -mindepth 2 -maxdepth 2 -name pair.json -printf '%h\n' 2>/dev/null \
            | while read -r d; do printf '%s %s\n' "$(du -sb "$d/new" | cut -f1)" "${d##*/}"; done \
            | sort -n | cut -d' ' -f2 | tr '\n' ' ')"
        [[ -n "${PAIRS// /}" ]] || die "no pairs under ${pairs_dir}: run bench/deltas/fetch_pairs.sh first (or PAIRS=synthetic, or OLD=/NEW=)"
    fi
    for name in ${PAIRS}; do
        d="${pairs_dir}/${name}"
        if [[ "${name}" == synthetic && ! -f "$d/pair.json" ]]; then
            python3 "${here}/gen_pair.py" "$d" "${SIZE_MIB:-8}"
            mv "$d/old.bin" "$d/old" && mv "$d/new.bin" "$d/new"
            printf '{"kind": "file", "member": "gen_pair.py, %s MiB", "old": {"bytes": %s}, "new": {"bytes": %s}}\n' \
                "${SIZE_MIB:-8}" "$(stat -c %s "$d/old")" "$(stat -c %s "$d/new")" >"$d/pair.json"
        fi
        [[ -f "$d/pair.json" ]] || die "no pair '${name}' under ${pairs_dir} (bench/deltas/fetch_pairs.sh makes them)"
        kind="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["kind"])' "$d/pair.json")"
        pair_list+=("${name}|$d/old|$d/new|${kind}")
    done
fi

results="" scratch="" pair_failed="" last="" last_cmd=""
# record JSON [KEY=VALUE...]: one line of results (VALUE is JSON if it parses, else a
# string), in the file of its tool (pair.jsonl without one).
record() {
    python3 - "${results}" "$@" <<'PY'
import json, os, sys
path, base, *kv = sys.argv[1:]
d = json.loads(base) if base else {}
for item in kv:
    k, _, v = item.partition("=")
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
with open(os.path.join(path, d.get("tool", "pair") + ".jsonl"), "a") as f:
    f.write(json.dumps(d) + "\n")
PY
}
# measure OUTPUT CMD...: runs CMD under peakmem.py, then fsyncs the file OUTPUT (timed
# with it; none for a directory); sets `last` to its JSON line; returns CMD's rc.
measure() {
    local opts=(--timeout "${TIMEOUT}" --stdout "${scratch}/cmd.out" --stderr "${scratch}/cmd.err")
    [[ "${kind}" == file ]] && opts+=(--fsync "$1")
    shift
    last_cmd="$*"
    sync
    last="$(python3 "${here}/peakmem.py" "${opts[@]}" -- "$@")" || true
    [[ "${last}" =~ \"rc\":\ ([0-9]+) ]] || { last='{"rc": 255}'; return 255; }
    return "${BASH_REMATCH[1]}"
}
# same KIND A B: A is the new version byte for byte (a directory: every entry's path, type,
# mode, symlink target and contents).
same() {
    if [[ "$1" == dir ]]; then
        [[ -d "$2" ]] || return 1
        diff <(cd "$2" && find . -printf '%P %y %m %l\n' | LC_ALL=C sort) \
            <(cd "$3" && find . -printf '%P %y %m %l\n' | LC_ALL=C sort) >/dev/null \
            && diff -r --no-dereference "$2" "$3" >/dev/null
    else
        cmp -s "$2" "$3"
    fi
}

# pack_trees OLDDIR NEWDIR RUN: the two tree artifacts, scratch/old.ptree and new.ptree
# (the new tree's packing measured, and recorded as step "pack").
pack_trees() {
    "${petrel_repo}" pack-tree "$1" -o "${scratch}/old.ptree" >/dev/null || return $?
    measure "" "${petrel_repo}" pack-tree "$2" -o "${scratch}/new.ptree" || return $?
    record "${last}" pair="${name}" tool=petrel record=run step=pack run="$3" \
        delta_bytes="$(stat -c %s "${scratch}/new.ptree")" cmd="${last_cmd}"
}

failed_pairs=()
# run_pair NAME OLD NEW KIND
run_pair() {
    local name="$1" old="$2" new="$3" kind="$4" run i tool n rc d o step reason order=() tools=() skip=" "
    scratch="${work}/scratch/${name}"
    results="${work}/results/${name}.part"
    rm -rf "${scratch}" "${results}"
    mkdir -p "${scratch}" "${results}"
    pair_failed=""
    for tool in ${TOOLS}; do
        if [[ "${kind}" == dir && "${tool}" != petrel ]]; then continue; fi
        tools+=("${tool}")
    done
    record "$(cat "$(dirname "${old}")/pair.json" 2>/dev/null || echo '{}')" pair="${name}" record=pair \
        kind="${kind}" old_path="${old}" new_path="${new}" \
        new_bytes="$(du -sb --apparent-size "${new}" | cut -f1)" old_bytes="$(du -sb --apparent-size "${old}" | cut -f1)" \
        runs="${RUNS}" zstd_level="${ZSTD_LEVEL}" started="$(date -u +%FT%TZ)"
    say "${name} (${kind}): old $(du -sb --apparent-size "${old}" | cut -f1) bytes, new $(du -sb --apparent-size "${new}" | cut -f1) bytes; tools: ${tools[*]:-none}"
    if wants petrel; then
        if [[ -n "${petrel_error}" ]]; then
            record "" pair="${name}" tool=petrel record=unavailable reason="${petrel_error}"
            skip+="petrel "
        elif [[ "${kind}" == dir && "${petrel_tree}" == 0 ]]; then
            say "tree-as-directory: not supported by this build"
            record "" pair="${name}" tool=petrel record=unavailable reason="tree-as-directory: not supported by this build"
            skip+="petrel "
        fi
    fi
    [[ "${kind}" == file ]] && cat "${old}" "${new}" >/dev/null # warm the page cache
    n="${#tools[@]}"
    for ((run = 1; run <= RUNS && n > 0; run++)); do
        order=()
        for ((i = 0; i < n; i++)); do order+=("${tools[(i + run - 1) % n]}"); done
        say "${name}: run ${run}/${RUNS}: ${order[*]}"
        for tool in "${order[@]}"; do
            [[ "${skip}" == *" ${tool} "* ]] && continue
            d="${scratch}/${tool}.delta" o="${scratch}/${tool}.out"
            rm -rf "$d" "$o"
            rc=0
            case "${tool}" in
                petrel)
                    if [[ "${kind}" == dir ]]; then
                        pack_trees "${old}" "${new}" "${run}" || rc=$?
                        ((rc == 0)) && { measure "$d" "${petrel_repo}" delta-file "${scratch}/old.ptree" "${scratch}/new.ptree" -o "$d" || rc=$?; }
                    else
                        measure "$d" "${petrel_repo}" delta-file "${old}" "${new}" -o "$d" || rc=$?
                    fi ;;
                bsdiff) measure "$d" bsdiff "${old}" "${new}" "$d" || rc=$? ;;
                xdelta3) measure "$d" xdelta3 -e -9 -f -s "${old}" "${new}" "$d" || rc=$? ;;
                zstd) measure "$d" zstd -q -f "${zstd_level[@]}" --long=31 --patch-from="${old}" "${new}" -o "$d" || rc=$? ;;
            esac
            if ((rc != 0)) || [[ ! -f "$d" ]]; then
                if [[ "${last}" == *'"timed_out": true'* ]]; then
                    say "${name}: ${tool}: building the delta took longer than TIMEOUT=${TIMEOUT} s: killed; not run again for this pair"
                else
                    say "ERROR: ${name}: ${tool}: building the delta failed (rc ${rc}): $(tail -n 3 "${scratch}/cmd.err" | tr '\n' ' ')"
                fi
                reason="building the delta failed (rc ${rc}): $(tail -c 400 "${scratch}/cmd.err")"
                [[ "${last}" == *'"timed_out": true'* ]] && reason="building the delta took longer than TIMEOUT=${TIMEOUT} s; killed"
                record "${last}" pair="${name}" tool="${tool}" record=error step=create run="${run}" timeout_s="${TIMEOUT}" \
                    reason="${reason}"
                skip+="${tool} "
                continue
            fi
            if [[ "${tool}" == petrel ]]; then
                record "${last}" pair="${name}" tool="${tool}" record=run step=create run="${run}" \
                    delta_bytes="$(stat -c %s "$d")" report="$(tail -n 1 "${scratch}/cmd.out")" cmd="${last_cmd}"
            else
                record "${last}" pair="${name}" tool="${tool}" record=run step=create run="${run}" \
                    delta_bytes="$(stat -c %s "$d")" cmd="${last_cmd}"
            fi
            for step in apply apply-streaming; do
                [[ "${skip}" == *" ${tool}/${step} "* ]] && continue
                [[ "${step}" == apply-streaming && "${tool}" != petrel ]] && continue
                rm -rf "$o"
                rc=0
                case "${tool}/${step}" in
                    petrel/apply) measure "$o" "${petrel_agent}" delta-apply "${old}" "$d" -o "$o" || rc=$? ;;
                    petrel/apply-streaming) measure "$o" "${petrel_agent}" delta-apply --streaming "${old}" "$d" -o "$o" || rc=$? ;;
                    bsdiff/apply) measure "$o" bspatch "${old}" "$o" "$d" || rc=$? ;;
                    xdelta3/apply) measure "$o" xdelta3 -d -f -s "${old}" "$d" "$o" || rc=$? ;;
                    zstd/apply) measure "$o" zstd -q -f -d --long=31 --patch-from="${old}" "$d" -o "$o" || rc=$? ;;
                esac
                if ((rc != 0)); then
                    say "ERROR: ${name}: ${tool}: ${step} failed (rc ${rc}): $(tail -n 3 "${scratch}/cmd.err" | tr '\n' ' ')"
                    record "${last}" pair="${name}" tool="${tool}" record=error step="${step}" run="${run}" timeout_s="${TIMEOUT}" \
                        reason="${step} failed (rc ${rc}): $(tail -c 400 "${scratch}/cmd.err")"
                    skip+="${tool}/${step} " # not run again for this pair; the other steps are
                    continue
                fi
                if ! same "${kind}" "$o" "${new}"; then
                    pair_failed="${tool} (${step}) did not rebuild the new version: ${o} differs from ${new}"
                    say "ERROR: ${name}: ${pair_failed}; the pair is aborted"
                    record "" pair="${name}" tool="${tool}" record=error step="${step}" run="${run}" reason="${pair_failed}"
                    keep_results "${name}"
                    failed_pairs+=("${name}")
                    return 0
                fi
                record "${last}" pair="${name}" tool="${tool}" record=run step="${step}" run="${run}" cmd="${last_cmd}"
                rm -rf "$o"
            done
        done
    done
    keep_results "${name}"
}
# keep_results NAME: this run's files replace those of the same tools.
keep_results() {
    mkdir -p "${work}/results/$1"
    mv -f "${results}"/*.jsonl "${work}/results/$1/"
    rmdir "${results}"
}

for p in "${pair_list[@]}"; do
    IFS='|' read -r name old new kind <<<"$p"
    run_pair "${name}" "${old}" "${new}" "${kind}"
done

python3 "${here}/summarize.py" "${work}" | tee "${work}/summary.md"
say "results: ${work}/results.json, ${work}/summary.md"
status=0
if ((${#failed_pairs[@]})); then
    say "ERROR: aborted pairs (an applied result differed from new): ${failed_pairs[*]}"
    status=1
fi
if wants petrel && [[ -n "${petrel_error}" ]]; then
    say "ERROR: Petrel was not measured: ${petrel_error}"
    status=1
fi
exit "${status}"

#!/usr/bin/env bash
# bench/deltas/run.sh — binary deltas: Petrel (`petrel-repo delta`) side by side with
# xdelta3, bsdiff and `zstd --patch-from` on the same old/new pair. See bench/README.md.
#
#   bench/deltas/run.sh                       # synthetic 8 MiB firmware-like pair, RUNS=5
#   OLD=a.bin NEW=b.bin bench/deltas/run.sh   # your own pair
#
# Environment: RUNS (5), OLD/NEW (default: made by gen_pair.py), SIZE_MIB (8, synthetic
# pair), BENCH_WORK (bench/work), PETREL_REPO_BIN (default: cargo build --release).
# Installs xdelta3, bsdiff and zstd from the system's packages when missing (as root).
#
# Measured per tool and run: wall time and peak RSS (GNU time) of building the delta and
# of applying it, and the delta's size. Every applied result is compared with NEW. The
# Petrel build step is what a release engineer runs: `petrel-repo delta` on a workspace
# holding both versions (setup untimed); it also applies the delta once to check it and
# stages it. Devices apply Petrel deltas with zstd's decoder (the library), which is what
# the `zstd` apply row times.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
work="${BENCH_WORK:-${repo_root}/bench/work}/deltas"
RUNS="${RUNS:-5}"
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
mkdir -p "${work}"

for t in xdelta3 bsdiff bspatch zstd; do
    if ! command -v "$t" >/dev/null; then
        [[ "$(id -u)" == 0 ]] || { say "$t is missing: apt-get install xdelta3 bsdiff zstd"; exit 1; }
        apt-get install -y xdelta3 bsdiff zstd >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && apt-get install -y xdelta3 bsdiff zstd >/dev/null; }
    fi
done
[[ -x /usr/bin/time ]] || apt-get install -y time >/dev/null 2>&1

if [[ -n "${PETREL_REPO_BIN:-}" ]]; then
    petrel="${PETREL_REPO_BIN}"
else
    (cd "${repo_root}" && cargo build --release -q -p petrel-repo)
    petrel="${CARGO_TARGET_DIR:-${repo_root}/target}/release/petrel-repo"
fi

if [[ -z "${OLD:-}" ]]; then
    [[ -f "${work}/pair/new.bin" ]] || python3 "${here}/gen_pair.py" "${work}/pair" "${SIZE_MIB:-8}"
    OLD="${work}/pair/old.bin" NEW="${work}/pair/new.bin"
fi
say "old: ${OLD} ($(stat -c %s "${OLD}") bytes), new: ${NEW} ($(stat -c %s "${NEW}") bytes)"

# Petrel workspace with both versions (untimed).
ws="${work}/ws"
rm -rf "${ws}" "${ws}.clean"
"${petrel}" -r "${ws}" init >/dev/null
"${petrel}" -r "${ws}" delegate --to deltas --paths 'deltas/*/*' --terminating >/dev/null
"${petrel}" -r "${ws}" add "${OLD}" --name app/1.0/app.bin >/dev/null
"${petrel}" -r "${ws}" add "${NEW}" --name app/2.0/app.bin >/dev/null
"${petrel}" -r "${ws}" publish >/dev/null
cp -a "${ws}" "${ws}.clean"

tsv="${work}/runs.tsv"
printf 'tool\tstep\trun\twall_s\tmaxrss_kb\tsize\n' >"${tsv}"
# measure TOOL STEP RUN SIZE_FILE CMD...
measure() {
    local tool="$1" step="$2" run="$3" size_file="$4"
    shift 4
    local rss t0 t1
    sync
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "${work}/rss" "$@" >"${work}/log" 2>&1 || { cat "${work}/log" >&2; exit 1; }
    t1=$(date +%s%N)
    rss="$(tail -n1 "${work}/rss")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${tool}" "${step}" "${run}" \
        "$(awk -v a="${t0}" -v b="${t1}" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')" "${rss}" \
        "$( [[ -n "${size_file}" ]] && stat -c %s "${size_file}" || echo 0)" >>"${tsv}"
}
check() { cmp -s "$1" "${NEW}" || { say "ERROR: $2 did not rebuild the new version"; exit 1; }; }

for ((run = 1; run <= RUNS; run++)); do
    say "run ${run}/${RUNS}"
    rm -rf "${ws}" && cp -a "${ws}.clean" "${ws}"
    measure petrel build "${run}" "" "${petrel}" -r "${ws}" delta --from app/1.0/app.bin --to app/2.0/app.bin
    # The delta's bytes: in the content store, under the hash the staged role lists.
    pd_sha="$(python3 -c 'import json, sys
t = json.load(open(sys.argv[1]))["signed"]["targets"]
print(next(v for k, v in t.items() if k.startswith("deltas/"))["hashes"]["sha256"])' "${ws}/staged/deltas.json")"
    pd="${ws}/content/${pd_sha:0:2}/${pd_sha}"
    sed -i '$ s/\t0$/\t'"$(stat -c %s "${pd}")"'/' "${tsv}"
    measure xdelta3 build "${run}" "${work}/x.vcdiff" xdelta3 -e -9 -f -s "${OLD}" "${NEW}" "${work}/x.vcdiff"
    measure xdelta3 apply "${run}" "" xdelta3 -d -f -s "${OLD}" "${work}/x.vcdiff" "${work}/x.out"
    check "${work}/x.out" xdelta3
    measure bsdiff build "${run}" "${work}/b.patch" bsdiff "${OLD}" "${NEW}" "${work}/b.patch"
    measure bsdiff apply "${run}" "" bspatch "${OLD}" "${work}/b.out" "${work}/b.patch"
    check "${work}/b.out" bsdiff
    measure zstd build "${run}" "${work}/z.zst" zstd -q -f -19 --long=31 --patch-from="${OLD}" "${NEW}" -o "${work}/z.zst"
    measure zstd apply "${run}" "" zstd -q -f -d --long=31 --patch-from="${OLD}" "${work}/z.zst" -o "${work}/z.out"
    check "${work}/z.out" zstd
    # Petrel's delta, applied by zstd's decoder (the device uses the same library).
    zstd -q -f -d --long=31 --patch-from="${OLD}" "${pd}" -o "${work}/p.out"
    check "${work}/p.out" "petrel (applied by zstd)"
done
python3 - "${tsv}" "$(stat -c %s "${NEW}")" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
full = int(sys.argv[2])
tools = ["petrel", "xdelta3", "bsdiff", "zstd"]
def med(tool, step, key):
    v = [float(r[key]) for r in rows if r["tool"] == tool and r["step"] == step]
    return statistics.median(v) if v else None
print(f"new version: {full} bytes\n")
print("| tool | delta size | of the full file | build (median) | build peak RSS | apply (median) | apply peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for t in tools:
    size = med(t, "build", "size")
    ap = med(t, "apply", "wall_s")
    apr = med(t, "apply", "maxrss_kb")
    print(f"| {t} | {size:,.0f} B | {100 * size / full:.2f} % | {med(t, 'build', 'wall_s'):.2f} s | "
          f"{med(t, 'build', 'maxrss_kb') / 1024:.0f} MiB | "
          + (f"{ap:.3f} s | {apr / 1024:.0f} MiB |" if ap is not None else "(zstd's decoder, see the zstd row) | |"))
ps = med("petrel", "build", "size")
print()
for t in tools[1:]:
    print(f"Petrel / {t}: size {ps / med(t, 'build', 'size'):.2f}, build time "
          f"{med('petrel', 'build', 'wall_s') / med(t, 'build', 'wall_s'):.2f}")
PY

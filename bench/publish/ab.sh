#!/usr/bin/env bash
# bench/publish/ab.sh OLD_PETREL_REPO NEW_PETREL_REPO — two petrel-repo builds side by side
# on the fresh publish (init + add + publish), alternating, with per-step wall times.
# Used to measure a change to repo-tool. Inputs come from run.sh (bench/work/input-N).
#   SIZES (default "10000 100000"), RUNS (default 3), BENCH_WORK (default bench/work),
#   SETTLE (default 0): seconds to wait after removing a run's workspace. ext4 skips inodes
#   freed in the last ~30 s when it allocates new ones, which makes a run right after the
#   removal of 100k files slower by a varying amount; SETTLE=35 takes that out.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${BENCH_WORK:-${here}/../work}"
old="$1" new="$2"
SIZES="${SIZES:-10000 100000}"
RUNS="${RUNS:-3}"
SETTLE="${SETTLE:-0}"
ms() { date +%s%N; }
printf 'size\tbuild\trun\tadd_s\tpublish_s\ttotal_s\n'
for n in ${SIZES}; do
    [[ -d "${work}/input-${n}" ]] || python3 "${here}/gen_input.py" "${n}" "${work}/input-${n}"
    for ((run = 1; run <= RUNS; run++)); do
        order="old new"; ((run % 2 == 0)) && order="new old"
        for which in ${order}; do
            bin="${old}"; [[ "${which}" == new ]] && bin="${new}"
            w="${work}/runs/ab-${which}"
            rm -rf "${w}"; sync
            t0=$(ms); "${bin}" -r "${w}" init >/dev/null
            t1=$(ms); timeout 900 "${bin}" -r "${w}" add "${work}/input-${n}" --prefix files >/dev/null
            t2=$(ms); timeout 900 "${bin}" -r "${w}" publish >/dev/null
            t3=$(ms)
            awk -v n="${n}" -v b="${which}" -v r="${run}" -v t0="${t0}" -v t1="${t1}" -v t2="${t2}" -v t3="${t3}" \
                'BEGIN { printf "%s\t%s\t%s\t%.2f\t%.2f\t%.2f\n", n, b, r, (t2-t1)/1e9, (t3-t2)/1e9, (t3-t0)/1e9 }'
            rm -rf "${w}"
            sync
            sleep "${SETTLE}"
        done
    done
done

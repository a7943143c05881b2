#!/usr/bin/env bash
# Fleet simulator: builds fleets of 10k, 100k and 1M devices in today's layout and in the
# scaled one, serves each on loopback and measures what sample devices download.
#
#   bench/fleet/run.sh                                  # every size, both layouts
#   SIZES="10000:100:10" bench/fleet/run.sh             # devices:groups:campaigns
#   LAYOUTS=scaled SIZES="1000000:10000:1000" bench/fleet/run.sh
#
# Results: bench/work/fleet/results/<devices>-<layout>.json and summary.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
SIZES=${SIZES:-"10000:100:10 100000:1000:100 1000000:10000:1000"}
LAYOUTS=${LAYOUTS:-"today scaled"}
BENCH_WORK=${BENCH_WORK:-$top/bench/work}
results="$BENCH_WORK/fleet/results"
mkdir -p "$results"
if [[ ! -x /usr/bin/time ]]; then
  if [[ $(id -u) == 0 ]]; then apt-get install -y time >/dev/null; else echo "run.sh: needs /usr/bin/time (GNU time)" >&2; exit 1; fi
fi
if [[ -z "${PETREL_REPO_BIN:-}" ]]; then
  (cd "$top" && cargo build --release -p petrel-repo -p petrel-server -p petrel-client --bins)
  bin="${CARGO_TARGET_DIR:-$top/target}/release"
  export PETREL_REPO_BIN="$bin/petrel-repo" PETREL_BIN="$bin/petrel" PETREL_SERVER_BIN="$bin/petrel-server"
fi
for size in $SIZES; do
  IFS=: read -r d g c <<<"$size"
  for layout in $LAYOUTS; do
    echo "==> $d devices, $g groups, $c campaigns: $layout" >&2
    python3 "$here/sim.py" --devices "$d" --groups "$g" --campaigns "$c" --layout "$layout" \
      --out "$BENCH_WORK/fleet/$d-$layout" >"$results/$d-$layout.json"
  done
done
python3 "$here/summarize.py" "$results"/*.json | tee "$results/summary.md"

#!/usr/bin/env bash
# Writing a system image into a slot: Petrel against dd of the same image, side by side in
# one run.
#
# The input is a real file system image: an ext4 file system of SIZE MiB made with
# `mkfs.ext4 -d` from a copy of a directory tree of this machine (SRC, default
# /usr/lib/python3* and /usr/share, taken in path order until about 70 % of SIZE is used),
# and, if zstd is installed, its zstd-compressed form (ZSTD_LEVEL, default 19, as
# docs/images.md recommends). Both are built once and reused (bench/work/images/input/).
# Every run writes the image into the same preallocated slot file, and measures:
#   dd          dd if=IMAGE of=SLOT bs=1M conv=fsync,notrunc
#   dd+hash     the same, then `head -c N SLOT | sha256sum`: write, read back, hash (the
#               check Petrel makes before switching)
#   petrel      `petrel update` on a simulated board (docs/images.md, "A simulator") whose
#               group names the image with install_type = "slot": refresh from a file://
#               repository, download and verify into staging, stream into slot B (hashed,
#               decompressed if zstd, checked against the signed hash), fsync, read back
#               and hash, record, set B to boot next. Its own apply time (the install,
#               without refresh and download) is taken from its log (RUST_LOG=debug,
#               --log-format json: from the last line before `rebooting` to that line),
#               and so is the download into staging.
# For the zstd form, dd reads `zstd -d -c IMAGE.zst` through a pipe. Wall time (a
# nanosecond clock around the command) and peak RSS (GNU time's "Maximum resident set
# size": the largest single process of the command) per run; medians of RUNS runs, the
# order rotating every run, `sync` before every timed command. The table (MiB/s of image
# bytes written, ratios Petrel / dd) is printed and written to bench/work/images/summary.md.
# See bench/README.md, "System images".
#
# Usage: bench/images/run.sh
# Knobs (environment): SIZE (MiB, 256), RUNS (5), SRC (directories to copy into the file
#   system), ZSTD (1: also the zstd form when zstd is installed; 0: raw only), ZSTD_LEVEL
#   (19), TIMEOUT (600 s per timed command), BENCH_WORK (bench/work/images),
#   PETREL_BIN / PETREL_REPO_BIN (use given binaries instead of building), CARGO_TARGET_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

SIZE=${SIZE:-256}
RUNS=${RUNS:-5}
ZSTD=${ZSTD:-1}
ZSTD_LEVEL=${ZSTD_LEVEL:-19}
TIMEOUT=${TIMEOUT:-600}
BENCH_WORK=${BENCH_WORK:-$top/bench/work/images}
if [ -z "${SRC:-}" ]; then
  SRC=""
  for d in /usr/lib/python3* /usr/share; do [ -d "$d" ] && SRC="$SRC $d"; done
  SRC=${SRC# }
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images bench: %s\n' "$*" >&2; exit 1; }
case $SIZE in '' | *[!0-9]*) die "SIZE must be a number of MiB" ;; esac
case $RUNS in '' | *[!0-9]*) die "RUNS must be a number" ;; esac
[ "$SIZE" -ge 16 ] || die "SIZE must be at least 16 (MiB)"
[ "$RUNS" -ge 1 ] || die "RUNS must be at least 1"

if ! command -v mkfs.ext4 >/dev/null && [ ! -x /usr/sbin/mkfs.ext4 ] && [ ! -x /sbin/mkfs.ext4 ]; then
  echo "images bench: skipped: mkfs.ext4 is missing (install e2fsprogs); it builds the ext4 image measured" >&2
  exit 0
fi
mkfs=$(command -v mkfs.ext4 || { [ -x /usr/sbin/mkfs.ext4 ] && echo /usr/sbin/mkfs.ext4; } || echo /sbin/mkfs.ext4)
command -v python3 >/dev/null || die "python3 is needed (the summary)"
gnu_time=""
if [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; then
  gnu_time=/usr/bin/time
else
  log "GNU time (/usr/bin/time) is missing: no peak RSS (apt-get install time)"
fi
forms=(raw)
if [ "$ZSTD" = 1 ]; then
  if command -v zstd >/dev/null; then forms+=(zst); else log "zstd is missing: the raw image only"; fi
fi

mkdir -p "$BENCH_WORK"
BENCH_WORK=$(cd "$BENCH_WORK" && pwd)

# ---------------------------------------------------------------- binaries
tdir="${CARGO_TARGET_DIR:-$top/target}/release"
if [ -z "${PETREL_BIN:-}" ] || [ -z "${PETREL_REPO_BIN:-}" ]; then
  log "building petrel, petrel-repo (release)"
  (cd "$top" && cargo build --release -q -p petrel-client -p petrel-repo --bin petrel --bin petrel-repo)
fi
PETREL_BIN=${PETREL_BIN:-$tdir/petrel}
PETREL_REPO_BIN=${PETREL_REPO_BIN:-$tdir/petrel-repo}
for b in "$PETREL_BIN" "$PETREL_REPO_BIN"; do [ -x "$b" ] || die "missing binary $b"; done
# Copies, so a rebuild in the shared target directory cannot swap them mid-benchmark.
mkdir -p "$BENCH_WORK/bin"
cp "$PETREL_BIN" "$BENCH_WORK/bin/petrel"
cp "$PETREL_REPO_BIN" "$BENCH_WORK/bin/petrel-repo"
petrel=$BENCH_WORK/bin/petrel
repo_tool=$BENCH_WORK/bin/petrel-repo
build_kind=release
case $PETREL_BIN in */debug/*) build_kind=debug ;; esac

# ---------------------------------------------------------------- the input image
in=$BENCH_WORK/input
image=$in/rootfs.ext4
image_zst=$in/rootfs.ext4.zst
key="SIZE=$SIZE SRC=$SRC"
if [ ! -s "$image" ] || [ "$(cat "$in/key" 2>/dev/null)" != "$key" ]; then
  log "building a $SIZE MiB ext4 image from $SRC"
  rm -rf "$in"
  mkdir -p "$in/tree"
  # Files in path order until their blocks (4 KiB each, rounded up) fill 70 % of SIZE.
  budget=$((SIZE * 1024 * 1024 * 7 / 10))
  # shellcheck disable=SC2086
  find $SRC -xdev -type f -readable -printf '%s\t%p\n' 2>/dev/null | LC_ALL=C sort -t "$(printf '\t')" -k2 |
    awk -F'\t' -v budget="$budget" '
      { b = int(($1 + 4095) / 4096) * 4096 + 4096
        if (used + b <= budget) { used += b; print $2 }
        if (used > budget - 65536) exit }' >"$in/files.txt" || true
  [ -s "$in/files.txt" ] || die "no files found under $SRC"
  tar -C / -cf - --files-from="$in/files.txt" 2>"$in/tar.log" | tar -C "$in/tree" -xf - ||
    die "copying the tree failed: $(tail -n 5 "$in/tar.log")"
  files=$(find "$in/tree" | wc -l)
  truncate -s "${SIZE}M" "$image"
  # Enough inodes for the tree; a fixed UUID and hash seed.
  "$mkfs" -q -F -L rootfs -N $((files + 4096)) -U 6f1c2a3e-5b4d-4e6f-8a7b-9c0d1e2f3a4b \
    -E hash_seed=1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d -d "$in/tree" "$image" >"$in/mkfs.log" 2>&1 ||
    die "mkfs.ext4 failed: $(tail -n 5 "$in/mkfs.log")"
  rm -rf "$in/tree"
  echo "$key" >"$in/key"
  log "    $(wc -l <"$in/files.txt") files, $(du -sh --apparent-size "$image" | cut -f1) image"
fi
if [[ " ${forms[*]} " == *" zst "* ]] && { [ ! -s "$image_zst" ] || [ "$image_zst" -ot "$image" ] || [ "$(cat "$in/zst-level" 2>/dev/null)" != "$ZSTD_LEVEL" ]; }; then
  log "compressing it: zstd -$ZSTD_LEVEL"
  zstd -q -T0 "-$ZSTD_LEVEL" -f "$image" -o "$image_zst"
  echo "$ZSTD_LEVEL" >"$in/zst-level"
fi
image_bytes=$(stat -c %s "$image")
image_sha=$(sha256sum "$image" | cut -d' ' -f1)
zst_bytes=0
[ -s "$image_zst" ] && zst_bytes=$(stat -c %s "$image_zst")

# ---------------------------------------------------------------- the board and its repositories
B=$BENCH_WORK/board
log "a simulated board: slots of $SIZE MiB; a file:// repository per form"
rm -rf "$B" "$BENCH_WORK/repo-raw" "$BENCH_WORK/repo-zst"
mkdir -p "$B/slots" "$B/apps"
truncate -s "$image_bytes" "$B/slots/a.img"
# Slot B, which every run writes, is allocated once: dd and Petrel overwrite the same blocks.
dd if=/dev/zero of="$B/slots/b.img" bs=1M count="$SIZE" conv=fsync status=none
echo 1.0 >"$B/factory-version"
cat >"$B/profile.toml" <<'TOML'
id = "bench-board"
type = "board"
vendor = "acme"
region = "eu-west"
channel = "stable"
utc_offset_minutes = 0
locale = "en"
TOML
echo bench-board >"$B/devices.txt"
cat >"$B/health.sh" <<'SH'
#!/bin/sh
exit 0
SH
for form in "${forms[@]}"; do
  repo=$BENCH_WORK/repo-$form
  src=$image name=apps/acme/os/2.0/rootfs.ext4
  [ "$form" = zst ] && src=$image_zst name=apps/acme/os/2.0/rootfs.ext4.zst
  cat >"$B/group-$form.toml" <<TOML
kind = "group"
schema_version = 1
id = "boards"
revision = 1

[apps."acme.os"]
version = "2.0"
target = "$name"
install_type = "slot"
TOML
  cat >"$B/campaign.toml" <<'TOML'
kind = "campaign"
schema_version = 1
id = "os-2.0"
revision = 1
state = "active"

[notice.en]
title = "System image 2.0"
body = "The images benchmark."
severity = "recommended"

[consent]
policy = "none"

[payload]
group = { id = "boards", revision = 1 }
TOML
  {
    "$repo_tool" -r "$repo" init --expiry timestamp=7d
    "$repo_tool" -r "$repo" add "$src" --name "$name"
    "$repo_tool" -r "$repo" group set "$B/group-$form.toml"
    "$repo_tool" -r "$repo" assign --group boards --devices "$B/devices.txt"
    "$repo_tool" -r "$repo" campaign create "$B/campaign.toml"
    "$repo_tool" -r "$repo" publish
  } >"$BENCH_WORK/repo-$form.log" 2>&1 || die "petrel-repo failed: $(tail -n 20 "$BENCH_WORK/repo-$form.log")"
  cat >"$B/device-$form.toml" <<TOML
state_dir = "state"
profile = "profile.toml"

[repository]
metadata_url = "file://$repo/tree/metadata"
targets_url = "file://$repo/tree/targets"

[inventory]
dir = "apps"

[slots]
app = "acme.os"
a = "slots/a.img"
b = "slots/b.img"
bootloader = "file"
attempts = 2
version_file = "factory-version"

[slots.file]
path = "boot.json"

[reboot]
command = ["sh", "-c", "touch '$B/reboot-requested'"]

[health]
command = ["sh", "$B/health.sh"]
timeout_secs = 10
TOML
done

# A factory-fresh board: no state, slot A booted, both slots with their tries.
reset_board() {
  local form=$1
  rm -rf "$B/state" "$B/boot.json" "$B/reboot-requested"
  timeout 60 "$petrel" --config "$B/device-$form.toml" init --root "$BENCH_WORK/repo-$form/tree/metadata/1.root.json" >/dev/null 2>&1 ||
    die "petrel init failed"
  timeout 60 "$petrel" --config "$B/device-$form.toml" slots boot --init >/dev/null 2>&1 || die "petrel slots boot --init failed"
}

# ---------------------------------------------------------------- one timed command
tsv=$BENCH_WORK/runs.tsv
runs_dir=$BENCH_WORK/runs
# timed CASE FORM RUN CMD...: runs CMD under timeout (and GNU time), after sync; appends
# "case form run seconds rss_kib" to runs.tsv; its output and GNU time's report go to runs/CASE-FORM-RUN/.
timed() {
  local c=$1 form=$2 run=$3; shift 3
  local d=$runs_dir/$c-$form-$run t0 t1 status=0 rss=""
  mkdir -p "$d"
  sync
  t0=$(date +%s%N)
  if [ -n "$gnu_time" ]; then
    timeout "$TIMEOUT" "$gnu_time" -v -o "$d/time.txt" "$@" >"$d/stdout" 2>"$d/stderr" || status=$?
  else
    timeout "$TIMEOUT" "$@" >"$d/stdout" 2>"$d/stderr" || status=$?
  fi
  t1=$(date +%s%N)
  [ "$status" = 0 ] || die "$c ($form, run $run) exited $status: $(tail -n 5 "$d/stderr")"
  [ -n "$gnu_time" ] && rss=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$d/time.txt")
  printf '%s\t%s\t%s\t%s\t%s\n' "$c" "$form" "$run" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", (b - a) / 1e9}')" "${rss:-}" >>"$tsv"
}
# check_slot CASE FORM RUN: slot B's first bytes must be the image.
check_slot() {
  local got
  got=$(head -c "$image_bytes" "$B/slots/b.img" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$image_sha" ] || die "$1 ($2, run $3): slot B does not hold the image"
}
# scrub_slot: overwrite the image's bytes in slot B with zeros (untimed), so no run finds
# the previous run's bytes in place.
scrub_slot() {
  dd if=/dev/zero of="$B/slots/b.img" bs=1M count="$SIZE" conv=notrunc status=none
}

run_case() {
  local c=$1 form=$2 run=$3 src=$image
  [ "$form" = zst ] && src=$image_zst
  scrub_slot
  case $c in
    dd)
      if [ "$form" = raw ]; then
        timed dd "$form" "$run" dd if="$src" of="$B/slots/b.img" bs=1M conv=fsync,notrunc status=none
      else
        timed dd "$form" "$run" sh -c 'zstd -q -d -c "$1" | dd of="$2" bs=1M iflag=fullblock conv=fsync,notrunc status=none' sh "$src" "$B/slots/b.img"
      fi
      ;;
    dd+hash)
      if [ "$form" = raw ]; then
        timed dd+hash "$form" "$run" sh -c 'dd if="$1" of="$2" bs=1M conv=fsync,notrunc status=none && head -c "$3" "$2" | sha256sum' \
          sh "$src" "$B/slots/b.img" "$image_bytes"
      else
        timed dd+hash "$form" "$run" sh -c 'zstd -q -d -c "$1" | dd of="$2" bs=1M iflag=fullblock conv=fsync,notrunc status=none && head -c "$3" "$2" | sha256sum' \
          sh "$src" "$B/slots/b.img" "$image_bytes"
      fi
      [ "$(cut -d' ' -f1 "$runs_dir/$c-$form-$run/stdout")" = "$image_sha" ] || die "dd+hash ($form, run $run): the hash read back is not the image's"
      ;;
    petrel)
      reset_board "$form"
      timed petrel "$form" "$run" env RUST_LOG=debug "$petrel" --config "$B/device-$form.toml" --log-format json update --json
      python3 - "$runs_dir/petrel-$form-$run/stdout" <<'PY' || die "petrel ($form, run $run): the install did not end pending the reboot (see $runs_dir/petrel-$form-$run)"
import json, sys
v = json.load(open(sys.argv[1]))
r = [i["result"] for i in v.get("installs", [])]
sys.exit(0 if r == ["pending_reboot"] else 1)
PY
      [ -e "$B/reboot-requested" ] || die "petrel ($form, run $run): no reboot requested"
      ;;
  esac
  check_slot "$c" "$form" "$run"
}

# ---------------------------------------------------------------- main
log "image: $SIZE MiB ext4 ($image_bytes bytes)$([ "$zst_bytes" -gt 0 ] && echo ", zstd -$ZSTD_LEVEL: $zst_bytes bytes"); RUNS=$RUNS; petrel: $build_kind build"
rm -f "$tsv"; rm -rf "$runs_dir"
cases=()
for form in "${forms[@]}"; do for c in dd dd+hash petrel; do cases+=("$c:$form"); done; done
n=${#cases[@]}
for run in $(seq 1 "$RUNS"); do
  for k in $(seq 0 $((n - 1))); do
    cf=${cases[$(((k + run - 1) % n))]}
    log "run $run/$RUNS: ${cf%%:*} (${cf#*:})"
    run_case "${cf%%:*}" "${cf#*:}" "$run"
  done
done

python3 - "$tsv" "$runs_dir" "$image_bytes" "$zst_bytes" >"$BENCH_WORK/table.md" <<'PY'
import json, os, statistics, sys
from datetime import datetime

tsv, runs_dir, image_bytes, zst_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
mib = image_bytes / (1 << 20)

def ts(s):
    # RFC 3339 with nanoseconds: keep microseconds for datetime.
    s = s.rstrip("Z")
    if "." in s:
        a, b = s.split(".")
        s = a + "." + (b + "000000")[:6]
    return datetime.fromisoformat(s).timestamp()

def spans(d):
    """(download, apply) seconds from Petrel's log (--log-format json): the download is from
    its first progress line to the line saying the image is in staging; the apply (the
    install: stream into the slot, read back, record, set next, queue the report) is from
    the last line before the `rebooting` line (the re-check's last lookup) to that line.
    None where the log does not show it."""
    lines = []
    try:
        for l in open(os.path.join(d, "stderr")):
            try:
                v = json.loads(l)
                lines.append((ts(v["timestamp"]), v.get("message") or v.get("fields", {}).get("message", "")))
            except (ValueError, KeyError):
                continue
    except OSError:
        return None, None
    dl = ap = None
    start = next((t for t, m in lines if m.startswith("download progress: apps/")), None)
    end = next((t for t, m in lines if m.startswith('downloaded "apps/') and "staging" in m), None)
    if start is not None and end is not None and end >= start:
        dl = end - start
    for i, (t, m) in enumerate(lines):
        if m.startswith("rebooting") and i > 0:
            ap = t - lines[i - 1][0]
    return dl, ap

data = {}
for c, form, run, secs, rss in rows:
    e = data.setdefault((c, form), {"t": [], "rss": [], "apply": [], "download": []})
    e["t"].append(float(secs))
    if rss:
        e["rss"].append(int(rss))
    if c == "petrel":
        dl, ap = spans(os.path.join(runs_dir, "%s-%s-%s" % (c, form, run)))
        if dl is not None:
            e["download"].append(dl)
        if ap is not None:
            e["apply"].append(ap)

def med(xs):
    return statistics.median(xs) if xs else None

def cell(xs):
    if not xs:
        return "–"
    m = med(xs)
    s = "%.2f s, %.0f MiB/s" % (m, mib / m) if m > 0 else "%.3f s" % m
    if len(xs) > 1:
        s += " (%.2f–%.2f s)" % (min(xs), max(xs))
    return s

def ratio(a, b):
    a, b = med(a), med(b)
    return "%.2f" % (a / b) if a and b else "–"

def rss(xs):
    return "%.0f MiB" % (med(xs) / 1024) if xs else "–"

print("| image | `dd` | `dd` + read back + `sha256sum` | Petrel `update` | Petrel apply (from its log) | Petrel / `dd` | Petrel / (`dd` + hash) | Petrel apply / (`dd` + hash) |")
print("|---|---|---|---|---|---|---|---|")
for form in ("raw", "zst"):
    if ("petrel", form) not in data:
        continue
    g = lambda c, k="t": data.get((c, form), {}).get(k, [])
    name = "ext4, %.0f MiB" % mib if form == "raw" else "ext4, %.0f MiB, zstd (%.1f MiB)" % (mib, zst_bytes / (1 << 20))
    print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        name, cell(g("dd")), cell(g("dd+hash")), cell(g("petrel")), cell(g("petrel", "apply")),
        ratio(g("petrel"), g("dd")), ratio(g("petrel"), g("dd+hash")), ratio(g("petrel", "apply"), g("dd+hash"))))
print()
print("Petrel's `update`, from its log (median): the download of the image into staging (verified), and the apply.")
print()
print("| image | download into staging | apply | the rest (start, refresh, decide, staging checks, re-check) |")
print("|---|---|---|---|")
for form in ("raw", "zst"):
    if ("petrel", form) not in data:
        continue
    e = data[("petrel", form)]
    dl, ap, tot = med(e["download"]), med(e["apply"]), med(e["t"])
    rest = "%.2f s" % (tot - dl - ap) if dl is not None and ap is not None else "–"
    print("| %s | %s | %s | %s |" % ("ext4" if form == "raw" else "ext4, zstd",
        "%.2f s" % dl if dl is not None else "–", "%.2f s" % ap if ap is not None else "–", rest))
print()
print("Peak RSS (median):")
print()
print("| image | `dd` | `dd` + read back + `sha256sum` | Petrel `update` | Petrel / `dd` |")
print("|---|---|---|---|---|")
for form in ("raw", "zst"):
    if ("petrel", form) not in data:
        continue
    g = lambda c: data.get((c, form), {}).get("rss", [])
    name = "ext4" if form == "raw" else "ext4, zstd"
    print("| %s | %s | %s | %s | %s |" % (name, rss(g("dd")), rss(g("dd+hash")), rss(g("petrel")), ratio(g("petrel"), g("dd"))))
PY
{
  echo "Measured $(date -u +'%Y-%m-%d %H:%M UTC'): SIZE=$SIZE RUNS=$RUNS ZSTD_LEVEL=$ZSTD_LEVEL, petrel $build_kind build;" \
    "$(nproc) CPUs, $(uname -r); slot: a file on $(df -PT "$B" | awk 'NR == 2 {print $2}') ($(df -P "$B" | awk 'NR == 2 {print $1}'))."
  echo "MiB/s: image bytes written into the slot ($image_bytes) per second of the median; ratios of medians (above 1: Petrel takes longer)."
  echo
  cat "$BENCH_WORK/table.md"
} >"$BENCH_WORK/summary.md"
cat "$BENCH_WORK/summary.md"
echo
echo "summary: $BENCH_WORK/summary.md; raw numbers: $tsv; per run: $runs_dir/"

#!/usr/bin/env bash
# The resident device agent's idle cost, side by side with peers, in one run.
#
# For Petrel's `petrel run` and for the peers installable from Debian's packages here,
# Mender's `mender daemon` (mender-client 3.4) and SWUpdate in suricatta mode (swupdate
# 2022.12, polling a hawkBit server), each polling a loopback server every INTERVAL seconds
# with nothing to update, this measures per run:
#   * idle resident memory: VmRSS and VmHWM (/proc/PID/status) of the agent's process tree,
#     after the warm-up and at the end;
#   * CPU time per poll: the tree's CPU time over the measurement window (taskstats,
#     nanoseconds; and utime+stime(+cutime+cstime) from /proc/PID/stat in clock ticks) divided
#     by the number of polls the server saw in the window;
#   * bytes per no-change poll: every byte of the TCP streams between the agent and its
#     server, both directions (HTTP headers included), counted by the same logging TCP proxy
#     (proxy.py) in front of every server;
#   * requests per poll.
# Then, once per agent, it is measured asleep: configured to poll every IDLE_INTERVAL
# (3600 s), over the IDLE_SECONDS (60; 0 skips this) after its warm-up: CPU and wake-ups
# between two polls.
# Every server and proxy binds 127.0.0.1 only. Runs alternate between the agents, the order
# rotating every round. Results: bench/work/agent/summary.md (and runs.tsv, idle.tsv,
# runs/*/). See bench/README.md, "The resident device agent".
#
# Usage: bench/agent/run.sh
# Knobs (environment): RUNS (3), SECONDS_PER_RUN (60), WARMUP (10), INTERVAL (5),
#   TOOLS ("petrel mender swupdate"), MENDER_INVENTORY_INTERVAL (INTERVAL), IDLE_SECONDS (60),
#   IDLE_INTERVAL (3600), BENCH_WORK (bench/work/agent), PETREL_BIN / PETREL_SERVER_BIN /
#   PETREL_REPO_BIN (use given binaries instead of building), CARGO_TARGET_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-60}
WARMUP=${WARMUP:-10}
INTERVAL=${INTERVAL:-5}
TOOLS=${TOOLS:-"petrel mender swupdate"}
MENDER_INVENTORY_INTERVAL=${MENDER_INVENTORY_INTERVAL:-$INTERVAL}
IDLE_SECONDS=${IDLE_SECONDS:-60}
IDLE_INTERVAL=${IDLE_INTERVAL:-3600}
BENCH_WORK=${BENCH_WORK:-$top/bench/work/agent}
# Upper bound of one run (start, warm-up, aligning to polls, window, stop), for the
# watchdogs and the servers' own --max-seconds.
longest=$SECONDS_PER_RUN; [ "$IDLE_SECONDS" -gt "$longest" ] && longest=$IDLE_SECONDS
RUN_BOUND=$((WARMUP + longest + 8 * INTERVAL + 60))
# The interval the agents are configured with: INTERVAL for the measured runs,
# IDLE_INTERVAL for the asleep runs.
poll_interval=$INTERVAL
inventory_interval=$MENDER_INVENTORY_INTERVAL

mkdir -p "$BENCH_WORK"
BENCH_WORK=$(cd "$BENCH_WORK" && pwd)
py=python3
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'agent bench: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
# Process groups we started (each long-running process runs under setsid).
pgids=()
cleanup() {
  local g
  for g in "${pgids[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${pgids[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_bg VAR OUT ERR CMD...: start CMD in its own session (so its whole tree can be
# stopped), remember its process group, set VAR to its pid (which setsid keeps: it execs).
start_bg() {
  local var=$1 out=$2 err=$3; shift 3
  setsid "$@" >"$out" 2>"$err" </dev/null &
  pgids+=("$!")
  printf -v "$var" '%s' "$!"
}
# stop_group PID: SIGTERM to its process group, up to 10 s, then SIGKILL.
stop_group() {
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() g
  for g in "${pgids[@]}"; do [ "$g" = "$pid" ] || keep+=("$g"); done
  pgids=("${keep[@]}")
}
# wait_file FILE SECONDS: until FILE is non-empty.
wait_file() {
  local i
  for i in $(seq 1 $(($2 * 10))); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}

# ---------------------------------------------------------------- tools
want() { case " $TOOLS " in *" $1 "*) return 0 ;; esac; return 1; }
missing=()
want mender && ! command -v mender >/dev/null && missing+=(mender-client)
want swupdate && ! command -v swupdate >/dev/null && missing+=(swupdate)
want swupdate && ! command -v openssl >/dev/null && missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >"$BENCH_WORK/apt.log" 2>&1 ||
      { apt-get update >>"$BENCH_WORK/apt.log" 2>&1 &&
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$BENCH_WORK/apt.log" 2>&1; } ||
      log "apt-get install failed (see $BENCH_WORK/apt.log)"
  else
    log "not root: cannot install ${missing[*]}"
  fi
fi
tools=()
for t in $TOOLS; do
  case $t in
    petrel) tools+=(petrel) ;;
    mender) if command -v mender >/dev/null && command -v unshare >/dev/null; then tools+=(mender)
            else log "skipping mender: mender (mender-client) or unshare missing"; fi ;;
    swupdate) if command -v swupdate >/dev/null && command -v openssl >/dev/null; then tools+=(swupdate)
              else log "skipping swupdate: swupdate or openssl missing"; fi ;;
    *) die "unknown tool $t (petrel mender swupdate)" ;;
  esac
done
[ "${#tools[@]}" -gt 0 ] || die "no tool to measure"

if want petrel; then
  tdir="${CARGO_TARGET_DIR:-$top/target}/release"
  if [ -z "${PETREL_BIN:-}" ] || [ -z "${PETREL_SERVER_BIN:-}" ] || [ -z "${PETREL_REPO_BIN:-}" ]; then
    log "building petrel, petrel-server, petrel-repo (release)"
    (cd "$top" && cargo build --release -q -p petrel-client -p petrel-server -p petrel-repo \
      --bin petrel --bin petrel-server --bin petrel-repo)
  fi
  PETREL_BIN=${PETREL_BIN:-$tdir/petrel}
  PETREL_SERVER_BIN=${PETREL_SERVER_BIN:-$tdir/petrel-server}
  PETREL_REPO_BIN=${PETREL_REPO_BIN:-$tdir/petrel-repo}
  for b in "$PETREL_BIN" "$PETREL_SERVER_BIN" "$PETREL_REPO_BIN"; do
    [ -x "$b" ] || die "missing binary $b"
  done
  # Copies, so a rebuild in the shared target directory cannot swap them mid-benchmark.
  mkdir -p "$BENCH_WORK/bin"
  cp "$PETREL_BIN" "$BENCH_WORK/bin/petrel"
  cp "$PETREL_SERVER_BIN" "$BENCH_WORK/bin/petrel-server"
  cp "$PETREL_REPO_BIN" "$BENCH_WORK/bin/petrel-repo"
  PETREL_BIN=$BENCH_WORK/bin/petrel
  PETREL_SERVER_BIN=$BENCH_WORK/bin/petrel-server
  PETREL_REPO_BIN=$BENCH_WORK/bin/petrel-repo
fi

# ---------------------------------------------------------------- servers
# start_server TOOL DIR: the tool's upstream server (petrel-server or the stub) and the
# logging proxy in front of it; sets server_pid, proxy_pid, proxy_url.
start_server() {
  local tool=$1 d=$2 up_port
  rm -f "$d/upstream.port" "$d/proxy.port"
  case $tool in
    petrel)
      start_bg server_pid "$d/server.out" "$d/access.log" timeout "$RUN_BOUND" \
        "$PETREL_SERVER_BIN" serve --root "$BENCH_WORK/petrel/repo/tree" --listen 127.0.0.1:0 --access-log
      local i url=""
      for i in $(seq 1 100); do
        url=$(sed -n 's/^listening on \(http:\/\/[^ ]*\).*/\1/p' "$d/server.out" | head -n1)
        [ -n "$url" ] && break
        sleep 0.1
      done
      [ -n "$url" ] || die "petrel-server did not start: $(cat "$d/access.log")"
      up_port=${url##*:}; up_port=${up_port%%/*}
      ;;
    mender | swupdate)
      local api=mender; [ "$tool" = swupdate ] && api=hawkbit
      start_bg server_pid "$d/server.out" "$d/server.err" "$py" "$here/stub_server.py" --api "$api" \
        --log "$d/stub.log" --port-file "$d/upstream.port" --poll-sleep "$poll_interval" --max-seconds "$RUN_BOUND"
      wait_file "$d/upstream.port" 10 || die "stub server did not start: $(cat "$d/server.err")"
      up_port=$(cat "$d/upstream.port")
      ;;
  esac
  start_bg proxy_pid "$d/proxy.out" "$d/proxy.err" "$py" "$here/proxy.py" --upstream "127.0.0.1:$up_port" \
    --log "$d/proxy.log" --port-file "$d/proxy.port" --max-seconds "$RUN_BOUND"
  wait_file "$d/proxy.port" 10 || die "proxy did not start: $(cat "$d/proxy.err")"
  proxy_url="http://127.0.0.1:$(cat "$d/proxy.port")"
}
stop_server() {
  stop_group "$proxy_pid"
  stop_group "$server_pid"
}

# ---------------------------------------------------------------- setup, once
P=$BENCH_WORK/petrel
M=$BENCH_WORK/mender
S=$BENCH_WORK/swupdate

setup_petrel() {
  log "petrel: a small repository (a group the device already runs, its assignment, a campaign it satisfies)"
  rm -rf "$P"
  mkdir -p "$P/content/apps/acme/thermostat/1.0" "$P/device/apps/acme.thermostat" "$P/device/state"
  local fw=$P/content/apps/acme/thermostat/1.0/firmware.bin
  "$py" -c 'import hashlib,sys; sys.stdout.buffer.write(b"".join(hashlib.sha256(b"fw-1.0-%d" % i).digest() for i in range(512)))' >"$fw"
  cat >"$P/group.toml" <<'TOML'
kind = "group"
schema_version = 1
id = "bench-idle"
revision = 1
description = "Agent benchmark: what every device already runs"

[apps."acme.thermostat"]
version = "1.0"
target = "apps/acme/thermostat/1.0/firmware.bin"
post_install = "start"
TOML
  cat >"$P/campaign.toml" <<'TOML'
kind = "campaign"
schema_version = 1
id = "bench-idle-1.0"
revision = 1
state = "active"
method = "normal"
default_locale = "en"

[notice.en]
title = "Thermostat firmware 1.0"
body = "What every device of the benchmark already runs."
severity = "info"

[consent]
policy = "none"

[applies_to]
device_types = ["thermostat"]

[payload]
group = { id = "bench-idle", revision = 1 }
TOML
  echo "bench-0001" >"$P/devices.txt"
  cat >"$P/device/profile.toml" <<'TOML'
id = "bench-0001"
type = "thermostat"
vendor = "acme"
region = "eu-west"
channel = "stable"
utc_offset_minutes = 0
locale = "en"
TOML
  local r="$PETREL_REPO_BIN" repo=$P/repo
  {
    "$r" -r "$repo" init --expiry timestamp=7d
    "$r" -r "$repo" delegate --to acme --paths 'apps/acme/*/*/*' --terminating
    "$r" -r "$repo" add "$P/content/apps/acme" --prefix apps/acme --role acme
    "$r" -r "$repo" group set "$P/group.toml"
    "$r" -r "$repo" assign --group bench-idle --devices "$P/devices.txt"
    "$r" -r "$repo" campaign create "$P/campaign.toml"
    "$r" -r "$repo" publish
    "$r" -r "$repo" verify
  } >"$P/repo.log" 2>&1 || die "petrel-repo failed: $(tail -n 20 "$P/repo.log")"
  cp "$fw" "$P/device/apps/acme.thermostat/firmware.bin"
  echo 1.0 >"$P/device/apps/acme.thermostat/VERSION"
  write_petrel_config "http://127.0.0.1:9"  # placeholder until a server runs
  PETREL_CONFIG=$P/device/device.toml "$PETREL_BIN" init --root "$repo/tree/metadata/1.root.json" >"$P/init.log" 2>&1 ||
    die "petrel init failed: $(cat "$P/init.log")"
  # Provisioning: one cycle against the real server, so every run starts on warm caches.
  local d=$P/provision; mkdir -p "$d"
  start_server petrel "$d"
  write_petrel_config "$proxy_url"
  PETREL_CONFIG=$P/device/device.toml timeout 60 "$PETREL_BIN" update >"$d/update.log" 2>&1 ||
    die "petrel update failed: $(cat "$d/update.log")"
  PETREL_CONFIG=$P/device/device.toml timeout 60 "$PETREL_BIN" check >"$d/check.log" 2>&1 || true
  stop_server
  sed -e 's/^/    /' "$d/check.log" | head -n 5 >&2
}
write_petrel_config() {
  cat >"$P/device/device.toml" <<TOML
state_dir = "$P/device/state"
profile = "$P/device/profile.toml"

[repository]
metadata_url = "$1/metadata"
targets_url = "$1/targets"

[inventory]
dir = "$P/device/apps"
TOML
}

# Mender runs in a private mount namespace: /etc/mender and /usr/share/mender (where
# mender-client 3.4 reads artifact_info, the device identity script, inventory scripts and
# update modules: fixed paths, not configurable) are bind mounts of private directories,
# its data store is a private directory (--data), and fw_printenv/fw_setenv (U-Boot's
# environment tools) are stubs first in PATH that change nothing.
setup_mender() {
  log "mender: private configuration, identity, data store; bootstrap (device key, accepted)"
  rm -rf "$M"
  mkdir -p "$M/etc" "$M/data" "$M/bin"
  cp -a /usr/share/mender "$M/share"
  cat >"$M/share/identity/mender-device-identity" <<'SH'
#!/bin/sh
echo mac=02:00:00:00:be:01
SH
  chmod +x "$M/share/identity/mender-device-identity"
  echo "artifact_name=bench-idle-1" >"$M/etc/artifact_info"
  echo "device_type=bench-device" >"$M/data/device_type"
  local t
  for t in fw_printenv fw_setenv grub-editenv grub-mkenvimage; do
    printf '#!/bin/sh\necho "agent bench: %s stubbed out" >&2\nexit 1\n' "$t" >"$M/bin/$t"
    chmod +x "$M/bin/$t"
  done
  local d=$M/provision; mkdir -p "$d"
  start_server mender "$d"
  write_mender_config "$proxy_url"
  timeout 120 unshare -m --propagation private sh -c '
    mount --bind "$1/etc" /etc/mender && mount --bind "$1/share" /usr/share/mender &&
    PATH="$1/bin:$PATH" exec mender --no-syslog -c "$1/etc/mender.conf" -b "$1/data/mender.conf" -d "$1/data" bootstrap
  ' sh "$M" >"$d/bootstrap.log" 2>&1 || die "mender bootstrap failed: $(tail -n 20 "$d/bootstrap.log")"
  stop_server
}
write_mender_config() {
  cat >"$M/etc/mender.conf" <<JSON
{
  "ServerURL": "$1",
  "UpdatePollIntervalSeconds": $poll_interval,
  "InventoryPollIntervalSeconds": $inventory_interval,
  "RetryPollIntervalSeconds": $poll_interval,
  "DeviceTypeFile": "$M/data/device_type",
  "DBus": {"Enabled": false}
}
JSON
}

# SWUpdate: Debian's build insists on signed images, so it needs a certificate (-k) even to
# poll: a self-signed one made here. Its IPC sockets go to a private TMPDIR; the bootloader
# interface is "none" (the default of this build), so no bootloader environment is read or
# written.
setup_swupdate() {
  log "swupdate: private TMPDIR, configuration, a self-signed certificate"
  rm -rf "$S"
  mkdir -p "$S/tmp"
  openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=petrel-agent-bench -days 3650 \
    -keyout "$S/key.pem" -out "$S/cert.pem" >"$S/openssl.log" 2>&1 || die "openssl failed: $(cat "$S/openssl.log")"
  cat >"$S/swupdate.cfg" <<CFG
globals : {
  loglevel = 3;
};
CFG
}

# ---------------------------------------------------------------- one run
poll_pattern() {
  case $1 in
    petrel) echo '^/metadata/timestamp\.json$' ;;
    mender) echo '/deployments/device/deployments/next' ;;
    swupdate) echo '^/DEFAULT/controller/v1/dev1$' ;;
  esac
}
start_agent() {
  local tool=$1 d=$2
  case $tool in
    petrel)
      write_petrel_config "$proxy_url"
      start_bg agent_pid "$d/agent.out" "$d/agent.log" env PETREL_CONFIG="$P/device/device.toml" \
        "$PETREL_BIN" run --interval "${poll_interval}s"
      ;;
    mender)
      write_mender_config "$proxy_url"
      start_bg agent_pid "$d/agent.out" "$d/agent.log" unshare -m --propagation private sh -c '
        mount --bind "$1/etc" /etc/mender && mount --bind "$1/share" /usr/share/mender &&
        PATH="$1/bin:$PATH" exec mender --no-syslog -c "$1/etc/mender.conf" -b "$1/data/mender.conf" -d "$1/data" daemon
      ' sh "$M"
      ;;
    swupdate)
      start_bg agent_pid "$d/agent.out" "$d/agent.log" env TMPDIR="$S/tmp" \
        swupdate -f "$S/swupdate.cfg" -k "$S/cert.pem" \
        -u "-t DEFAULT -u $proxy_url -i dev1 -p $poll_interval"
      ;;
  esac
}
# The comm each agent's process has once it has exec'ed (env, unshare and sh exec in turn).
agent_comm() { case $1 in petrel) echo petrel ;; mender) echo mender ;; swupdate) echo swupdate ;; esac; }

tsv=$BENCH_WORK/runs.tsv
idle_tsv=$BENCH_WORK/idle.tsv
# one_run TOOL RUN [idle]: one measured run; with "idle", the agent polls every
# IDLE_INTERVAL and the window is the IDLE_SECONDS after the warm-up, while it sleeps.
one_run() {
  local tool=$1 run=$2 mode=${3:-poll} d=$BENCH_WORK/runs/$1-$2 pat out=$tsv
  if [ "$mode" = idle ]; then
    poll_interval=$IDLE_INTERVAL inventory_interval=$IDLE_INTERVAL out=$idle_tsv d=$BENCH_WORK/runs/idle-$1
  else
    poll_interval=$INTERVAL inventory_interval=$MENDER_INVENTORY_INTERVAL
  fi
  rm -rf "$d"; mkdir -p "$d"
  pat=$(poll_pattern "$tool")
  start_server "$tool" "$d"
  start_agent "$tool" "$d"
  # Watchdog: the run cannot outlive its bound.
  local watchdog
  start_bg watchdog /dev/null /dev/null bash -c "sleep $RUN_BOUND; kill -KILL -- -$agent_pid"
  local comm="" i
  for i in $(seq 1 50); do
    comm=$(cat "/proc/$agent_pid/comm" 2>/dev/null || true)
    [ "$comm" = "$(agent_comm "$tool")" ] && break
    sleep 0.1
  done
  [ "$comm" = "$(agent_comm "$tool")" ] || die "$tool did not start: $(tail -n 20 "$d/agent.log")"
  sleep "$WARMUP"
  kill -0 "$agent_pid" 2>/dev/null || die "$tool exited during the warm-up: $(tail -n 20 "$d/agent.log")"
  if [ "$mode" = idle ]; then
    grep -q " req " "$d/proxy.log" || die "$tool: no request during the warm-up: $(tail -n 20 "$d/agent.log")"
    "$py" "$here/procstat.py" "$agent_pid" >"$d/start.json"
    sleep "$IDLE_SECONDS"
  else
    # Open the window half an interval after a poll, when the agent is idle.
    "$py" "$here/analyze.py" wait-poll "$d/proxy.log" "$pat" $((3 * INTERVAL + 5)) >/dev/null ||
      die "$tool: no poll seen after the warm-up: $(tail -n 20 "$d/agent.log")"
    sleep "$(awk -v i="$INTERVAL" 'BEGIN{print i/2}')"
    "$py" "$here/procstat.py" "$agent_pid" >"$d/start.json"
    sleep "$SECONDS_PER_RUN"
    # Close it half an interval after the next poll.
    "$py" "$here/analyze.py" wait-poll "$d/proxy.log" "$pat" $((3 * INTERVAL + 5)) >/dev/null ||
      die "$tool: stopped polling: $(tail -n 20 "$d/agent.log")"
    sleep "$(awk -v i="$INTERVAL" 'BEGIN{print i/2}')"
  fi
  "$py" "$here/procstat.py" "$agent_pid" >"$d/end.json"
  kill -0 "$agent_pid" 2>/dev/null || die "$tool exited during the window: $(tail -n 20 "$d/agent.log")"
  stop_group "$agent_pid"
  stop_group "$watchdog"
  stop_server
  if [ -s "$out" ]; then
    "$py" "$here/analyze.py" run "$tool" "$run" "$pat" "$d" >>"$out"
  else
    "$py" "$here/analyze.py" run "$tool" "$run" "$pat" "$d" --header >"$out"
  fi
  tail -n1 "$out" | awk -F'\t' '{printf "    %s run %s: %.0f s, %s polls, %s requests, %d bytes, rss %d kB, hwm %d kB, cpu %.1f ms\n",
    $1, $2, $5, $6, $7, $9 + $10, $14, $15, $21 / 1e6}' >&2
}

# ---------------------------------------------------------------- main
log "agents: ${tools[*]}; RUNS=$RUNS SECONDS_PER_RUN=$SECONDS_PER_RUN WARMUP=$WARMUP INTERVAL=$INTERVAL"
for t in "${tools[@]}"; do "setup_$t"; done
rm -f "$tsv" "$idle_tsv"; rm -rf "$BENCH_WORK/runs"
n=${#tools[@]}
for run in $(seq 1 "$RUNS"); do
  for k in $(seq 0 $((n - 1))); do
    t=${tools[$(((k + run - 1) % n))]}
    log "run $run/$RUNS: $t"
    one_run "$t" "$run"
  done
done
if [ "$IDLE_SECONDS" -gt 0 ]; then
  for t in "${tools[@]}"; do
    log "asleep: $t, polling every ${IDLE_INTERVAL}s, ${IDLE_SECONDS}s after the warm-up"
    one_run "$t" idle idle
  done
fi

{
  echo "Measured $(date -u +'%Y-%m-%d %H:%M UTC'): RUNS=$RUNS SECONDS_PER_RUN=$SECONDS_PER_RUN WARMUP=$WARMUP INTERVAL=$INTERVAL," \
    "MENDER_INVENTORY_INTERVAL=$MENDER_INVENTORY_INTERVAL IDLE_SECONDS=$IDLE_SECONDS IDLE_INTERVAL=$IDLE_INTERVAL; $(nproc) CPUs, $(uname -r)."
  echo
  "$py" "$here/analyze.py" summary "$tsv" --tools "${tools[*]}"
  echo
  if [ -s "$idle_tsv" ]; then
    echo "Asleep: each agent configured to poll every ${IDLE_INTERVAL} s, measured over the ${IDLE_SECONDS} s after its warm-up (its first poll):"
    echo
    "$py" "$here/analyze.py" idle-summary "$idle_tsv" --tools "${tools[*]}"
    echo
  fi
  echo "Requests in the window of the last run of each agent (count, method, path, status, request bytes, response bytes):"
  echo
  for t in "${tools[@]}"; do
    echo "$t:"
    echo '```'
    grep -v '^#' "$BENCH_WORK/runs/$t-$RUNS/requests.txt" || true
    echo '```'
  done
} >"$BENCH_WORK/summary.md"
cat "$BENCH_WORK/summary.md"
echo
echo "summary: $BENCH_WORK/summary.md; raw numbers: $tsv; per run: $BENCH_WORK/runs/"

#!/usr/bin/env bash
# The main job on an embedded default: sign a demo repository from examples/demo (content,
# a tested group, a campaign that needs consent, the device's assignment), serve it on
# loopback with petrel-server (with its report endpoint), and take a device through it: the
# TUF client's verified downloads, then the device agent deciding, asking for consent,
# staging and applying the update all or nothing, and reporting the result, which the repo
# tool turns into rollout status; then the resident agent (`petrel run`) installs a security
# fix by itself, and restores the previous firmware by itself when the next one fails the
# device's health check.
# Usage: ./demo.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")"
top=$PWD

echo "==> building"
cargo build -q --bins
bin="${CARGO_TARGET_DIR:-$top/target}/debug"
repo_tool="$bin/petrel-repo"
server="$bin/petrel-server"
client="$bin/petrel-conformance"
agent="$bin/petrel"

work="${1:-$(mktemp -d -t petrel-demo.XXXXXX)}"
mkdir -p "$work"
repo="$work/repo"
device="$work/device"
rm -rf "$repo" "$device" "$work"/reports.db*
demo="$top/examples/demo"
content="$demo/content"

echo "==> signing a demo repository in $repo"
"$repo_tool" -r "$repo" init --expiry timestamp=1d
"$repo_tool" -r "$repo" delegate --to acme --paths 'apps/acme/*/*/*' --terminating
"$repo_tool" -r "$repo" delegate --to globex --paths 'apps/globex/*/*/*' 'apps/globex/*/*/*/*' --terminating
"$repo_tool" -r "$repo" delegate --from globex --to globex-bin --bins 4
"$repo_tool" -r "$repo" add "$content/README.txt"
"$repo_tool" -r "$repo" add "$content/apps/acme" --prefix apps/acme --role acme
"$repo_tool" -r "$repo" add "$content/apps/globex" --prefix apps/globex --role globex
"$repo_tool" -r "$repo" publish
echo "==> a tested group, the device's assignment (hashed id only) and a campaign"
echo "==> a binary delta from firmware 1.0 to 1.1, for devices that run 1.0"
"$repo_tool" -r "$repo" delegate --to deltas --paths 'deltas/*/*' --terminating
"$repo_tool" -r "$repo" delta --from apps/acme/thermostat/1.0/firmware.bin --to apps/acme/thermostat/1.1/firmware.bin
"$repo_tool" -r "$repo" group set "$demo/group-thermostats.toml"
"$repo_tool" -r "$repo" assign --group thermostats --devices "$demo/devices.txt"
"$repo_tool" -r "$repo" campaign create "$demo/campaign-thermostat-1.1.toml"
"$repo_tool" -r "$repo" publish
"$repo_tool" -r "$repo" verify

echo "==> serving $repo/tree on loopback"
log="$work/server.log"
"$server" serve --root "$repo/tree" --listen 127.0.0.1:0 --access-log --reports-db "$work/reports.db" >"$work/server.out" 2>"$log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/^listening on \(http:\/\/[^ ]*\).*/\1/p' "$work/server.out" | head -n1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "server did not start; log:"; cat "$log"; exit 1; }
echo "    $url"

echo "==> device: trust the root, refresh, download verified targets"
"$client" --metadata-dir "$device/metadata" init "$repo/tree/metadata/1.root.json"
"$client" --metadata-dir "$device/metadata" --metadata-url "$url/metadata" refresh
targets=(README.txt apps/acme/thermostat/1.1/firmware.bin apps/globex/kiosk/3.2/kiosk.sh apps/globex/kiosk/3.2/assets/config.json)
args=()
for t in "${targets[@]}"; do args+=(--target-name "$t"); done
"$client" --metadata-dir "$device/metadata" --metadata-url "$url/metadata" \
  --target-base-url "$url/targets" --target-dir "$device/downloads" "${args[@]}" download

echo "==> checking downloads against the source files"
for t in "${targets[@]}"; do
  # petrel-conformance names each download after its percent-encoded target path.
  cmp "$content/$t" "$device/downloads/${t//\//%2F}"
  echo "    ok  $t"
done
echo "==> second refresh: nothing changed, so only the next-root probe and timestamp.json are requested"
before=$(wc -l <"$log")
"$client" --metadata-dir "$device/metadata" --metadata-url "$url/metadata" refresh
echo "    requests: $(( $(wc -l <"$log") - before ))"
echo "==> the device agent: firmware 1.0 installed, what will happen and why?"
mkdir -p "$device/apps/acme.thermostat" "$device/state"
cp "$content/apps/acme/thermostat/1.0/firmware.bin" "$device/apps/acme.thermostat/"
echo 1.0 >"$device/apps/acme.thermostat/VERSION"
cat >"$device/device.toml" <<TOML
state_dir = "$device/state"
profile = "$demo/device/profile.toml"
report_url = "$url/v1/reports"
[repository]
metadata_url = "$url/metadata"
targets_url = "$url/targets"
[inventory]
dir = "$device/apps"
TOML
export PETREL_CONFIG="$device/device.toml"
"$agent" init --root "$repo/tree/metadata/1.root.json"
"$agent" check --explain
echo "==> the user reads the notice and agrees"
"$agent" consent show thermostat-1.1
"$agent" consent accept thermostat-1.1
"$agent" check
echo "==> enrolling the device's report key with the server"
"$agent" device-key >"$work/device.pub.pem"
"$server" enroll --reports-db "$work/reports.db" --device "$(sed -n 's/^id *= *"\(.*\)"/\1/p' "$demo/device/profile.toml")" \
  --public-key "$work/device.pub.pem"
echo "==> update: download into staging (verified), re-check the campaign, apply all or nothing, report"
"$agent" update
echo "    installed: acme.thermostat $(cat "$device/apps/acme.thermostat/VERSION")"
cmp "$content/apps/acme/thermostat/1.1/firmware.bin" "$device/apps/acme.thermostat/firmware.bin"
"$agent" status
echo "==> the release engineer's view: rollout status from the device reports"
"$repo_tool" -r "$repo" rollout status --reports "$url"

echo "==> the resident agent: petrel run, with a health check (the firmware's self-test)"
cat >>"$device/device.toml" <<TOML
[health]
command = ["$demo/device/health.sh", "$device/apps"]
timeout_secs = 10
TOML
"$agent" run --interval 2s >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
trap 'kill $agent_pid 2>/dev/null || true; kill $server_pid 2>/dev/null || true' EXIT
wait_for() { # wait_for SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS
  local limit=$1; shift
  for _ in $(seq 1 $((limit * 10))); do "$@" && return 0; sleep 0.1; done
  echo "timed out waiting for: $*"; echo "agent log:"; cat "$work/agent.log"; exit 1
}
installed() { [ "$(cat "$device/apps/acme.thermostat/VERSION" 2>/dev/null)" = "$1" ]; }
echo "==> a security fix (no consent needed) is published; nobody runs a command on the device"
"$repo_tool" -r "$repo" group set "$demo/group-thermostats-1.2.toml"
"$repo_tool" -r "$repo" campaign create "$demo/campaign-thermostat-1.2.toml"
"$repo_tool" -r "$repo" publish
wait_for 60 installed 1.2
echo "    the agent installed acme.thermostat 1.2 by itself; its health check passed"
echo "==> firmware 1.3 fails its self-test on the device"
"$repo_tool" -r "$repo" group set "$demo/group-thermostats-1.3.toml"
"$repo_tool" -r "$repo" campaign create "$demo/campaign-thermostat-1.3.toml"
"$repo_tool" -r "$repo" publish
wait_for 60 grep -q "ROLLED BACK\|rolled_back\|was restored" "$work/agent.log"
installed 1.2 || { echo "expected 1.2 to be restored"; cat "$work/agent.log"; exit 1; }
echo "    the health check failed, the agent restored 1.2 by itself and reported the failure"
kill -TERM "$agent_pid"
status=0
wait "$agent_pid" || status=$?
echo "==> petrel run stopped on SIGTERM (exit status $status); what it logged:"
grep -E "installed group|restored|cycle done" "$work/agent.log" | sed -e 's/^/    /' | tail -n 8
[ "$status" = 0 ] || { echo "petrel run should exit 0 on SIGTERM"; exit 1; }
"$agent" status
"$repo_tool" -r "$repo" rollout status --reports "$url"
echo "demo complete: repository $repo, device state $device"

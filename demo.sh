#!/usr/bin/env bash
# The main job on an embedded default: sign a demo repository from examples/demo (content,
# a tested group, a campaign that needs consent, the device's assignment), serve it on
# loopback with petrel-server (with its report endpoint), and take a device through it: the
# TUF client's verified downloads, then the device agent deciding, asking for consent
# (which holds across a halt and a resume of the rollout),
# staging and applying the update all or nothing, and reporting the result, which the repo
# tool turns into rollout status; then the resident agent (`petrel run`) installs a security
# fix by itself, and restores the previous firmware by itself when the next one fails the
# device's health check. Last, a simulated board (examples/board: two slot files, the `file`
# bootloader, a health check reading the booted image) takes system images into its A/B
# slots (docs/images.md): image 1.1 is written into slot B, boots, fails its health check,
# is marked bad, and the board reboots into slot A and reports the failure, rolled back;
# image 1.2 (zstd-compressed when zstd is installed) boots from B, passes, is marked good
# and reported succeeded. Then a kiosk (examples/kiosk) installs a web application that is a
# directory tree (one tree artifact with its signed file manifest) and updates it through a
# tree delta, where a file edited by hand is read again alone from the full tree. Needs
# bash, python3 (the board's image maker, the kiosk's tree maker and summaries), diffutils
# and coreutils' timeout.
# Usage: ./demo.sh [WORK_DIR]
#   PETREL_DEMO_NO_BUILD=1 ./demo.sh [WORK_DIR]   uses the binaries already built (no cargo build)
set -euo pipefail
cd "$(dirname "$0")"
top=$PWD

if [ -z "${PETREL_DEMO_NO_BUILD:-}" ]; then
  if [ -x "${CARGO_TARGET_DIR:-$top/target}/debug/petrel" ]; then
    echo "==> building (only what changed)"
  else
    echo "==> building: the first build compiles every dependency, which takes several minutes on a small machine (see the README)"
  fi
  # Cargo's own progress: a progress bar on a terminal, one line per crate otherwise.
  cargo build --bins
fi
bin="${CARGO_TARGET_DIR:-$top/target}/debug"
repo_tool="$bin/petrel-repo"
server="$bin/petrel-server"
client="$bin/petrel-conformance"
agent="$bin/petrel"

work="${1:-$(mktemp -d -t petrel-demo.XXXXXX)}"
mkdir -p "$work"
repo="$work/repo"
device="$work/device"
rm -rf "$repo" "$device" "$work/board" "$work/images" "$work"/reports.db*
demo="$top/examples/demo"
content="$demo/content"

echo "==> signing a demo repository in $repo"
"$repo_tool" -r "$repo" init --expiry timestamp=1d
# The layout of a large fleet, in miniature (docs/scale.md): hashed bins under the manifest
# roles and the campaign index; the snapshot tree is on by default.
cat >>"$repo/petrel-repo.toml" <<'TOML'

[layout]
groups_bins = 4
campaigns_bins = 4
index_bins = 4
assign_bins = 4
campaign_index = true
TOML
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
echo "==> the operator halts the rollout and resumes it: consent is bound to the offer (notice, payload), not to the rollout state, so the answer holds"
"$repo_tool" -r "$repo" campaign halt thermostat-1.1
"$repo_tool" -r "$repo" publish
before=$(wc -l <"$log")
"$agent" check | grep -F "thermostat-1.1"
echo "    that check fetched $(tail -n +$((before + 1)) "$log" | grep -c ' GET ') files, $(tail -n +$((before + 1)) "$log" | awk '/ GET /{b+=$6} END{print b+0}') bytes: the timestamp, the snapshot tree's new head and nodes on the device's paths, the campaign's bin and manifest (not snapshot.json)"
"$repo_tool" -r "$repo" campaign resume thermostat-1.1
"$repo_tool" -r "$repo" publish
"$agent" check --explain | grep -F "still holds"
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
echo "==> a security fix (no consent needed), gated: the lab thermostat (a canary) goes first"
lab="$work/lab"
rm -rf "$lab"
mkdir -p "$lab/apps/acme.thermostat" "$lab/state"
cp "$device/apps/acme.thermostat/"* "$lab/apps/acme.thermostat/"
cat >"$lab/device.toml" <<TOML
state_dir = "$lab/state"
profile = "$demo/lab/profile.toml"
report_url = "$url/v1/reports"
[repository]
metadata_url = "$url/metadata"
targets_url = "$url/targets"
[inventory]
dir = "$lab/apps"
TOML
lab_agent() { timeout 60 "$agent" --config "$lab/device.toml" "$@"; }
lab_agent init --root "$repo/tree/metadata/1.root.json"
lab_agent device-key >"$work/lab.pub.pem"
"$server" enroll --reports-db "$work/reports.db" --device thermo-lab-01 --public-key "$work/lab.pub.pem"
"$repo_tool" -r "$repo" group set "$demo/group-thermostats-1.2.toml"
"$repo_tool" -r "$repo" assign --group thermostats --devices "$demo/canaries.txt" --canary
"$repo_tool" -r "$repo" campaign create "$demo/campaign-thermostat-1.2.toml"
"$repo_tool" -r "$repo" publish
echo "==> the fleet view (report server + published tree): the canary stage decides"
"$repo_tool" -r "$repo" fleet status --reports "$url" --campaign thermostat-1.2
sleep 3
installed 1.1 || { echo "the device installed 1.2 before the canaries passed"; exit 1; }
echo "    the resident agent waits: not a canary device, and no revision says the canaries passed"
echo "==> the canary installs 1.2 and reports success (after its health check)"
lab_agent update | sed -e 's/^/    /'
echo "==> rollout advance (safe from cron): the gate passes the canaries and publishes the revision that opens the rollout"
"$repo_tool" -r "$repo" rollout advance --reports "$url"
wait_for 60 installed 1.2
echo "    the agent installed acme.thermostat 1.2 by itself; its health check passed"
"$repo_tool" -r "$repo" fleet status --reports "$url" --campaign thermostat-1.2
echo "    the same view, read-only in a browser: $url/dashboard"
if command -v curl >/dev/null; then
  page=$(curl -fsS "$url/dashboard")
  echo "    the page shows $(grep -o '<article class="campaign"' <<<"$page" | wc -l) campaign(s) and $(grep -o '<tr class="device' <<<"$page" | wc -l) device(s)"
fi
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

echo "==> a board with a system image in two slots (docs/images.md): factory image 1.0 in slot A"
# The simulated board of examples/board: slot files, the `file` bootloader (boot.json,
# powered on with `petrel slots boot`), a reboot command that leaves a marker, and a health
# check that reads the booted image's header. Every petrel command runs under a time bound.
board_ex="$top/examples/board"
board="$work/board"
images="$work/images"
mkdir -p "$board/slots" "$board/apps" "$images/1.1" "$images/1.2"
image_kib=4096 # the images: 4 MiB
slot_size=8M   # each slot
board_agent() { timeout 60 "$agent" --config "$board/device.toml" "$@"; }
python3 "$board_ex/make-image.py" 1.0 good "$image_kib" "$images/factory.img"
cp "$images/factory.img" "$board/slots/a.img"
truncate -s "$slot_size" "$board/slots/a.img" "$board/slots/b.img"
echo 1.0 >"$board/factory-version"
sed -e "s|@URL@|$url|g" -e "s|@BOARD@|$board|g" -e "s|@EXAMPLES@|$board_ex|g" \
  "$board_ex/device.toml.in" >"$board/device.toml"
board_agent init --root "$repo/tree/metadata/1.root.json"
board_agent slots boot --init
board_agent device-key >"$work/board.pub.pem"
"$server" enroll --reports-db "$work/reports.db" --device "$(sed -n 's/^id *= *"\(.*\)"/\1/p' "$board_ex/profile.toml")" \
  --public-key "$work/board.pub.pem"
board_agent slots status

# board_update: one `petrel update --json` on the board, summarized; it must exit 0.
board_step=0
board_update() {
  board_step=$((board_step + 1))
  local out="$work/board-update-$board_step.json" status=0
  board_agent update --json >"$out" || status=$?
  python3 - "$out" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
r = v.get("recovered")
if r:
    print("    recovered: campaign %s: %s%s" % (r["campaign"], r["outcome"], ", rolled back" if r.get("rolled_back") else ""))
for i in v.get("installs", []):
    print("    install: campaign %s: %s" % (i["campaign"], i["result"]))
for q in v.get("reports", []):
    print("    report: campaign %s: %s: %s" % (q["campaign"], q["result"], q["reason"]))
if not (r or v.get("installs") or v.get("reports")):
    print("    nothing to install")
PY
  [ -e "$board/reboot-requested" ] && echo "    the agent asked for a reboot"
  [ "$status" = 0 ] || { echo "petrel update exited $status (see $out)"; exit 1; }
}
# reboot_board: the simulated power cycle. The bootloader picks a slot (the first in the
# order with tries left takes one), the system starts `petrel recover`, then the agent.
reboot_board() {
  rm -f "$board/reboot-requested"
  local slot
  slot=$(board_agent slots boot)
  echo "    power on: the bootloader boots slot $slot"
  board_agent recover
  board_update
}
booted() { [ "$(sed -n 's/.*"booted": *"\([AB]\)".*/\1/p' "$board/boot.json")" = "$1" ]; }
expect() { # expect WHAT COMMAND...: stop the demo unless COMMAND succeeds
  local what=$1; shift
  "$@" || { echo "expected: $what"; board_agent slots status; exit 1; }
}

echo "==> system image 1.1 (it fails the board's self-test) is published as campaign os-1.1"
python3 "$board_ex/make-image.py" 1.1 unhealthy "$image_kib" "$images/1.1/rootfs.img"
head -n 1 "$images/1.1/rootfs.img" | sed -e 's/^/    header: /'
"$repo_tool" -r "$repo" add "$images/1.1/rootfs.img" --name apps/acme/os/1.1/rootfs.img --role acme
"$repo_tool" -r "$repo" group set "$board_ex/group-boards-1.1.toml"
"$repo_tool" -r "$repo" assign --group boards --devices "$board_ex/devices.txt"
"$repo_tool" -r "$repo" campaign create "$board_ex/campaign-os-1.1.toml"
"$repo_tool" -r "$repo" publish
echo "==> the board installs 1.1 into slot B, reads it back, and sets B to boot next"
board_update
expect "a reboot request" test -e "$board/reboot-requested"
board_agent slots status
echo "==> reboot: B comes up, fails its health check, is marked bad; the agent reboots into A"
reboot_board
expect "slot B booted" booted B
expect "a reboot request" test -e "$board/reboot-requested"
board_agent slots status
echo "==> reboot: A, the previous system, runs again; the agent reports 1.1 failed and rolled back"
reboot_board
expect "slot A booted" booted A
expect "no reboot request" test ! -e "$board/reboot-requested"
board_agent slots status
"$repo_tool" -r "$repo" rollout status --reports "$url" --campaign os-1.1

echo "==> the fixed image 1.2 is published as campaign os-1.2 (group boards revision 2)"
python3 "$board_ex/make-image.py" 1.2 good "$image_kib" "$images/1.2/rootfs.img"
group_12="$board_ex/group-boards-1.2.toml"
if command -v zstd >/dev/null; then
  zstd -q -19 -f "$images/1.2/rootfs.img" -o "$images/1.2/rootfs.img.zst"
  echo "    zstd-compressed: $(wc -c <"$images/1.2/rootfs.img") bytes -> $(wc -c <"$images/1.2/rootfs.img.zst") bytes; the agent decompresses it into the slot"
  "$repo_tool" -r "$repo" add "$images/1.2/rootfs.img.zst" --name apps/acme/os/1.2/rootfs.img.zst --role acme
else
  echo "    zstd is not installed: the image is published uncompressed"
  sed -e 's|rootfs\.img\.zst|rootfs.img|' "$group_12" >"$images/group-boards-1.2.toml"
  group_12="$images/group-boards-1.2.toml"
  "$repo_tool" -r "$repo" add "$images/1.2/rootfs.img" --name apps/acme/os/1.2/rootfs.img --role acme
fi
"$repo_tool" -r "$repo" group set "$group_12"
"$repo_tool" -r "$repo" campaign create "$board_ex/campaign-os-1.2.toml"
"$repo_tool" -r "$repo" publish
echo "==> the board installs 1.2 into slot B"
board_update
expect "a reboot request" test -e "$board/reboot-requested"
echo "==> reboot: B comes up, passes its health check, is marked good; the agent reports success"
reboot_board
expect "slot B booted" booted B
expect "no reboot request" test ! -e "$board/reboot-requested"
cmp -n "$(wc -c <"$images/1.2/rootfs.img")" "$images/1.2/rootfs.img" "$board/slots/b.img"
cmp -n "$(wc -c <"$images/factory.img")" "$images/factory.img" "$board/slots/a.img"
echo "    slot B holds exactly image 1.2; slot A still holds the factory image"
board_agent slots status
rejected=$(find "$board/state/outbox" -name '*.reason.txt' | head -n 5)
[ -z "$rejected" ] || { echo "the report endpoint rejected reports of the board:"; cat $rejected; exit 1; }
echo "==> the release engineer's view: rollout status of both image campaigns from the board's reports"
"$repo_tool" -r "$repo" rollout status --reports "$url" --campaign os-1.1
"$repo_tool" -r "$repo" rollout status --reports "$url" --campaign os-1.2

echo "==> a kiosk's web application: a directory published as one tree artifact (docs/formats.md, Tree artifacts)"
kiosk_ex="$top/examples/kiosk"
kiosk="$work/kiosk"
web="$work/web"
rm -rf "$kiosk" "$web"
mkdir -p "$kiosk/apps" "$web"
python3 "$kiosk_ex/make-web.py" 1.0 "$web/1.0"
python3 "$kiosk_ex/make-web.py" 1.1 "$web/1.1"
"$repo_tool" -r "$repo" add --tree "$web/1.0" --prefix apps/acme/web/1.0 --name web.ptree --role acme
"$repo_tool" -r "$repo" group set "$kiosk_ex/group-kiosks-1.0.toml"
"$repo_tool" -r "$repo" assign --group kiosks --devices "$kiosk_ex/devices.txt"
"$repo_tool" -r "$repo" campaign create "$kiosk_ex/campaign-web-1.0.toml"
"$repo_tool" -r "$repo" publish
cat >"$kiosk/device.toml" <<TOML
state_dir = "$kiosk/state"
profile = "$kiosk_ex/profile.toml"
[repository]
metadata_url = "$url/metadata"
targets_url = "$url/targets"
[inventory]
dir = "$kiosk/apps"
TOML
kiosk_agent() { timeout 60 "$agent" --config "$kiosk/device.toml" "$@"; }
kiosk_agent init --root "$repo/tree/metadata/1.root.json"
echo "==> the kiosk installs web 1.0: the whole tree, every file checked against the signed manifest"
kiosk_agent update | sed -e 's/^/    /'
diff -r --no-dereference "$web/1.0" "$kiosk/apps/acme.web/tree"
echo "    installed: $(find "$kiosk/apps/acme.web/tree" -type f | wc -l) files, link lib/libweb.so.1 -> $(readlink "$kiosk/apps/acme.web/tree/lib/libweb.so.1")"
echo "==> someone edits a font file on the kiosk by hand"
echo "edited" >>"$kiosk/apps/acme.web/tree/share/fonts/kiosk.ttf"
echo "==> web 1.1 and its tree delta: unchanged files by hash, the renamed library and the stylesheet as file deltas"
"$repo_tool" -r "$repo" add --tree "$web/1.1" --prefix apps/acme/web/1.1 --name web.ptree --role acme
"$repo_tool" -r "$repo" delta --from apps/acme/web/1.0/web.ptree --to apps/acme/web/1.1/web.ptree
"$repo_tool" -r "$repo" group set "$kiosk_ex/group-kiosks-1.1.toml"
"$repo_tool" -r "$repo" campaign create "$kiosk_ex/campaign-web-1.1.toml"
"$repo_tool" -r "$repo" publish
echo "==> the kiosk updates through the tree delta; only the edited font is read again, alone, from the full tree"
kiosk_agent update 2>"$work/kiosk.log" | sed -e 's/^/    /'
grep -o "installed file(s) of acme.web were not the ones.*" "$work/kiosk.log" | sed -e 's/^/    /' || true
diff -r --no-dereference "$web/1.1" "$kiosk/apps/acme.web/tree"
echo "    the installed tree is exactly web 1.1 (link lib/libweb.so.1 -> $(readlink "$kiosk/apps/acme.web/tree/lib/libweb.so.1"))"
echo "demo complete: repository $repo, device state $device, board $board, kiosk $kiosk"

#!/usr/bin/env bash
# Tests the RAUC and SWUpdate recipes (dist/recipes/) without RAUC or SWUpdate: stub
# `rauc`, `swupdate`, `fw_printenv` and `fw_setenv` (tests/recipes/stubs/) come first on
# PATH, log their arguments under $STUB_DIR and keep their state in files there. Each
# recipe script runs as the agent runs it (the staged plan as the last argument,
# PETREL_STAGING and PETREL_CAMPAIGN in the environment), under /bin/sh; its exit status,
# its stderr and what the stubs saw are checked.
#
#   bash tests/recipes/run.sh        prints "recipes: N checks passed", or each failure
#
# Needs bash, coreutils, awk and python3 (for the JSON checks).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
rauc_dir=$root/dist/recipes/rauc
swu_dir=$root/dist/recipes/swupdate
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PATH="$root/tests/recipes/stubs:$PATH"
export STUB_DIR="$tmp/stub"
export PETREL_CAMPAIGN=os-1.1
export PETREL_STAGING="$tmp/staging"
# The JSON checks are collected in $tmp/json and made by one python3 at the end.
mkdir -p "$tmp/json"
json_checks=0

passed=0
failed=0
ok() { passed=$((passed + 1)); }
bad() {
    failed=$((failed + 1))
    printf 'FAIL: %s: %s\n' "$current" "$1" >&2
    if [ -s "$tmp/err" ]; then sed 's/^/    stderr: /' "$tmp/err" >&2; fi
}

# A fresh device: no stub state, a staged bundle and .swu, and a staged plan.
fresh() {
    current=$1
    rm -rf "$STUB_DIR" "$PETREL_STAGING"
    mkdir -p "$STUB_DIR" "$PETREL_STAGING"
    printf 'version=1.1\n' >"$PETREL_STAGING/apps%2Facme%2Fos%2F1.1%2Fos.raucb"
    printf 'version=1.1\n' >"$PETREL_STAGING/apps%2Facme%2Fos%2F1.1%2Fos.swu"
    plan acme.os update raucb
}

# plan APP ACTION EXT: the staged plan, as the agent writes it (pretty JSON, the step's
# fields beside "artifact").
plan() {
    cat >"$PETREL_STAGING/plan.json" <<EOF
{
  "schema_version": 1,
  "campaign": "os-1.1",
  "revision": 2,
  "manifest_sha256": "69d1c7a8ad94aacda1460a70f00e53d74ec5363d31b226d18c3d31fe2b5a1a5d",
  "group": "board-eu",
  "group_revision": 4,
  "staged_at": "2026-11-23T01:30:00Z",
  "steps": [
    {
      "app": "$1",
      "action": "$2",
      "from": "1.0",
      "to": "1.1",
      "target": "apps/acme/os/1.1/os.$3",
      "install_type": "slot",
      "post_install": "keep",
      "artifact": {
        "sha256": "9d99054557615b9eaaf95eeeeb0f94434de70d1da1910beb1be1261f33bb769e",
        "length": 12,
        "file": "apps%2Facme%2Fos%2F1.1%2Fos.$3"
      }
    }
  ]
}
EOF
}

# run ENV... SCRIPT: runs a recipe script under /bin/sh with the plan as its last argument.
run() {
    local status=0
    env "$@" "$PETREL_STAGING/plan.json" >"$tmp/out" 2>"$tmp/err" || status=$?
    echo "$status" >"$tmp/status"
}
run_noplan() {
    local status=0
    env "$@" >"$tmp/out" 2>"$tmp/err" || status=$?
    echo "$status" >"$tmp/status"
}
expect_status() {
    local got
    got=$(cat "$tmp/status")
    if [ "$got" = "$1" ]; then ok; else bad "exit status $got, expected $1"; fi
}
expect_err() { if grep -qF -- "$1" "$tmp/err"; then ok; else bad "stderr does not say \"$1\""; fi; }
expect_log() { # TOOL LINE: the stub TOOL was called with exactly LINE
    if grep -qxF -- "$2" "$STUB_DIR/$1.log" 2>/dev/null; then ok; else
        bad "$1 was not called as \"$2\" (its calls: $(paste -sd'|' "$STUB_DIR/$1.log" 2>/dev/null))"
    fi
}
expect_no_log() { if [ ! -s "$STUB_DIR/$1.log" ]; then ok; else bad "$1 was called: $(paste -sd'|' "$STUB_DIR/$1.log")"; fi; }
expect_json() { # the stdout is exactly this JSON value (checked at the end)
    json_checks=$((json_checks + 1))
    cp "$tmp/out" "$tmp/json/$json_checks.out"
    printf '%s' "$1" >"$tmp/json/$json_checks.want"
    printf '%s' "$current" >"$tmp/json/$json_checks.what"
}
expect_env() { # NAME VALUE in the stub U-Boot environment
    local got
    got=$(sed -n "s/^$1=//p" "$STUB_DIR/uboot.env" 2>/dev/null)
    if [ "$got" = "$2" ]; then ok; else bad "U-Boot variable $1 is \"$got\", expected \"$2\""; fi
}
rauc_state() { printf '%s' "$2" >"$STUB_DIR/rauc/$1"; }
reboot_rauc() { cp "$STUB_DIR/rauc/primary" "$STUB_DIR/rauc/booted"; }

sh=/bin/sh
bundle=$PETREL_STAGING/apps%2Facme%2Fos%2F1.1%2Fos.raucb
swu=$PETREL_STAGING/apps%2Facme%2Fos%2F1.1%2Fos.swu

# ---- RAUC ------------------------------------------------------------------------------
fresh "rauc-inventory: the booted slot's bundle version"
mkdir -p "$STUB_DIR/rauc"
rauc_state version.A 1.0
rauc_state version.B 0.9
run_noplan PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-inventory"
expect_status 0
expect_json '{"acme.os": {"version": "1.0"}}'
expect_log rauc "status --detailed --output-format=shell"

fresh "rauc-inventory: the slot numbers are mapped, B booted"
mkdir -p "$STUB_DIR/rauc"
rauc_state booted B
rauc_state version.A 1.0
rauc_state version.B 1.1
run_noplan PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-inventory"
expect_json '{"acme.os": {"version": "1.1"}}'

fresh "rauc-inventory: a factory slot reads the version file"
printf '  1.0-factory \n' >"$tmp/image-version"
run_noplan PETREL_RAUC_APP=acme.os PETREL_RAUC_VERSION_FILE="$tmp/image-version" $sh "$rauc_dir/rauc-inventory"
expect_status 0
expect_json '{"acme.os": {"version": "1.0-factory"}}'

fresh "rauc-inventory: a factory slot without a version file"
run_noplan PETREL_RAUC_VERSION_FILE="$tmp/none" $sh "$rauc_dir/rauc-inventory"
expect_status 1
expect_err "$tmp/none does not exist"

fresh "rauc-inventory: rauc status fails"
run_noplan STUB_RAUC_FAIL=1 $sh "$rauc_dir/rauc-inventory"
expect_status 1
expect_err "certificate is not valid"
expect_err "rauc status failed"

fresh "rauc-inventory: the default application id"
mkdir -p "$STUB_DIR/rauc"
rauc_state version.A 1.0
run_noplan $sh "$rauc_dir/rauc-inventory"
expect_json '{"os": {"version": "1.0"}}'

fresh "rauc-install: success"
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 3
expect_log rauc "install $bundle"
expect_err "runs after a reboot"

fresh "rauc-install: RAUC fails"
run PETREL_RAUC_APP=acme.os STUB_RAUC_FAIL=1 $sh "$rauc_dir/rauc-install"
expect_status 1
expect_err "signature verification failed"
expect_err "nothing was installed"

fresh "rauc-install: the plan changes another application"
plan acme.player update raucb
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 1
expect_err "the plan also changes acme.player"
expect_no_log rauc

fresh "rauc-install: the plan removes the system"
plan acme.os remove raucb
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 1
expect_err "cannot be removed"
expect_no_log rauc

fresh "rauc-install: the staged bundle is missing"
rm "$bundle"
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 1
expect_err "is missing"
expect_no_log rauc

fresh "rauc-install: not a plan"
echo '{"steps": [' >"$PETREL_STAGING/plan.json"
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 1
expect_err "cannot read $PETREL_STAGING/plan.json as a staged plan"

fresh "rauc-install: a compact plan with the step's fields under \"step\""
printf '%s' '{"campaign":"os-1.1","revision":2,"group":"board-eu","group_revision":4,"steps":[{"step":{"app":"acme.os","action":"update","from":"1.0","to":"1.1","target":"apps/acme/os/1.1/os.raucb","install_type":"slot","post_install":"keep"},"artifact":{"file":"apps%2Facme%2Fos%2F1.1%2Fos.raucb","sha256":"9d99","length":12}}]}' \
    >"$PETREL_STAGING/plan.json"
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 3
expect_log rauc "install $bundle"

fresh "rauc-install: without PETREL_STAGING"
run PETREL_STAGING= PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
expect_status 1
expect_err "PETREL_STAGING is not set"

fresh "rauc-install --steps"
run $sh "$rauc_dir/rauc-install" --steps
expect_status 0
if [ "$(cat "$tmp/out")" = "acme.os"$'\037'"update"$'\037'"1.1"$'\037'"apps%2Facme%2Fos%2F1.1%2Fos.raucb" ]; then ok; else bad "steps: $(cat -v "$tmp/out")"; fi

fresh "rauc-confirm"
run $sh "$rauc_dir/rauc-confirm"
expect_status 0
expect_log rauc "status mark-good booted"

fresh "rauc-confirm: RAUC fails"
run STUB_RAUC_FAIL=1 $sh "$rauc_dir/rauc-confirm"
expect_status 1
expect_err "rauc status mark-good booted failed"

fresh "rauc-rollback: the new system runs"
mkdir -p "$STUB_DIR/rauc"
rauc_state version.A 1.0
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
reboot_rauc
run PETREL_RAUC_APP=acme.os PETREL_ROLLBACK=1 $sh "$rauc_dir/rauc-rollback"
expect_status 3
expect_log rauc "status mark-bad booted"
reboot_rauc
run_noplan PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-inventory"
expect_json '{"acme.os": {"version": "1.0"}}'

fresh "rauc-rollback: the new system has not booted"
mkdir -p "$STUB_DIR/rauc"
rauc_state version.A 1.0
run PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-install"
run PETREL_RAUC_APP=acme.os PETREL_ROLLBACK=1 $sh "$rauc_dir/rauc-rollback"
expect_status 0
expect_log rauc "status mark-active booted"
if ! grep -q mark-bad "$STUB_DIR/rauc.log"; then ok; else bad "the running slot was marked bad"; fi

fresh "rauc-rollback: the running system is not the plan's"
mkdir -p "$STUB_DIR/rauc"
rauc_state version.A 1.0
run PETREL_RAUC_APP=acme.os PETREL_ROLLBACK=1 $sh "$rauc_dir/rauc-rollback"
expect_status 0
expect_err "nothing to roll back"
if ! grep -q mark- "$STUB_DIR/rauc.log"; then ok; else bad "a slot was marked: $(paste -sd'|' "$STUB_DIR/rauc.log")"; fi

fresh "rauc-rollback: RAUC fails"
mkdir -p "$STUB_DIR/rauc"
rauc_state version.A 1.1
run STUB_RAUC_FAIL=1 PETREL_RAUC_APP=acme.os $sh "$rauc_dir/rauc-rollback"
expect_status 1
expect_err "rauc status failed"

# ---- SWUpdate --------------------------------------------------------------------------
swu_env=(PETREL_SWUPDATE_APP=acme.os PETREL_SWUPDATE_SELECTOR=rootpart)

fresh "swupdate-inventory: the version file"
printf 'bootloader 2024.01\nacme.os 1.0\n' >"$tmp/sw-versions"
run_noplan PETREL_SWUPDATE_APP=acme.os PETREL_SWUPDATE_VERSIONS="$tmp/sw-versions" $sh "$swu_dir/swupdate-inventory"
expect_status 0
expect_json '{"acme.os": {"version": "1.0"}}'

fresh "swupdate-inventory: another component name"
printf 'rootfs 1.0\n' >"$tmp/sw-versions"
run_noplan PETREL_SWUPDATE_APP=acme.os PETREL_SWUPDATE_NAME=rootfs PETREL_SWUPDATE_VERSIONS="$tmp/sw-versions" $sh "$swu_dir/swupdate-inventory"
expect_json '{"acme.os": {"version": "1.0"}}'

fresh "swupdate-inventory: no line for the system"
run_noplan PETREL_SWUPDATE_APP=acme.os PETREL_SWUPDATE_VERSIONS="$tmp/sw-versions" $sh "$swu_dir/swupdate-inventory"
expect_status 1
expect_err "has no line for acme.os"

fresh "swupdate-inventory: no version file"
run_noplan PETREL_SWUPDATE_VERSIONS="$tmp/none" $sh "$swu_dir/swupdate-inventory"
expect_status 1
expect_err "cannot read $tmp/none"

fresh "swupdate-install: success"
plan acme.os update swu
printf 'rootpart=2\nupgrade_available=0\nbootcount=0\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" PETREL_SWUPDATE_ARGS="-k /etc/swupdate/public.pem" $sh "$swu_dir/swupdate-install"
expect_status 3
expect_log swupdate "-k /etc/swupdate/public.pem -i $swu"
expect_env petrel_prev_rootpart 2
expect_env rootpart 3
expect_env upgrade_available 1

fresh "swupdate-install: the software set follows the running system"
plan acme.os update swu
printf 'rootpart=3\nupgrade_available=0\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" PETREL_SWUPDATE_SELECTION="2:stable,copy2 3:stable,copy1" $sh "$swu_dir/swupdate-install"
expect_status 3
expect_log swupdate "-e stable,copy1 -i $swu"
expect_env petrel_prev_rootpart 3

fresh "swupdate-install: run again after an interruption"
plan acme.os update swu
printf 'rootpart=2\nupgrade_available=0\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" PETREL_SWUPDATE_SELECTION="2:stable,copy2 3:stable,copy1" $sh "$swu_dir/swupdate-install"
run "${swu_env[@]}" PETREL_SWUPDATE_SELECTION="2:stable,copy2 3:stable,copy1" $sh "$swu_dir/swupdate-install"
expect_status 3
expect_env petrel_prev_rootpart 2
if [ "$(grep -c -- '-e stable,copy2 -i' "$STUB_DIR/swupdate.log")" = 2 ]; then ok; else bad "swupdate calls: $(paste -sd'|' "$STUB_DIR/swupdate.log")"; fi

fresh "swupdate-install: SWUpdate fails"
plan acme.os update swu
printf 'rootpart=2\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" STUB_SWUPDATE_FAIL=1 $sh "$swu_dir/swupdate-install"
expect_status 1
expect_err "Image invalid or corrupted"
expect_err "nothing was installed"
expect_env rootpart 2

fresh "swupdate-install: no selector configured"
plan acme.os update swu
run PETREL_SWUPDATE_APP=acme.os $sh "$swu_dir/swupdate-install"
expect_status 1
expect_err "PETREL_SWUPDATE_SELECTOR is not set"
expect_no_log swupdate

fresh "swupdate-install: the selector is not in the environment"
plan acme.os update swu
run "${swu_env[@]}" $sh "$swu_dir/swupdate-install"
expect_status 1
expect_err "fw_printenv -n rootpart failed"
expect_no_log swupdate

fresh "swupdate-install: the environment cannot be written"
plan acme.os update swu
printf 'rootpart=2\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" STUB_FW_SETENV_FAIL=1 $sh "$swu_dir/swupdate-install"
expect_status 1
expect_err "Read-only file system"
expect_no_log swupdate

fresh "swupdate-confirm"
printf 'rootpart=3\nupgrade_available=1\nbootcount=2\n' >"$STUB_DIR/uboot.env"
run $sh "$swu_dir/swupdate-confirm"
expect_status 0
expect_log fw_setenv "upgrade_available 0"
expect_log fw_setenv "bootcount 0"
expect_env upgrade_available 0
expect_env bootcount 0
expect_env rootpart 3

fresh "swupdate-confirm: ustate"
printf 'ustate=1\n' >"$STUB_DIR/uboot.env"
run PETREL_SWUPDATE_CONFIRM=ustate=0 $sh "$swu_dir/swupdate-confirm"
expect_status 0
expect_env ustate 0

fresh "swupdate-confirm: fw_setenv fails"
run STUB_FW_SETENV_FAIL=1 $sh "$swu_dir/swupdate-confirm"
expect_status 1
expect_err "the new system is not confirmed"

fresh "swupdate-rollback: the new system runs"
plan acme.os update swu
printf 'rootpart=2\nupgrade_available=0\nbootcount=0\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" $sh "$swu_dir/swupdate-install"
printf 'acme.os 1.1\n' >"$tmp/sw-versions"
run "${swu_env[@]}" PETREL_SWUPDATE_VERSIONS="$tmp/sw-versions" PETREL_ROLLBACK=1 $sh "$swu_dir/swupdate-rollback"
expect_status 3
expect_log fw_setenv "rootpart 2"
expect_env rootpart 2
expect_env upgrade_available 0
expect_env bootcount 0

fresh "swupdate-rollback: the new system has not booted"
plan acme.os update swu
printf 'rootpart=2\nupgrade_available=0\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" $sh "$swu_dir/swupdate-install"
printf 'acme.os 1.0\n' >"$tmp/sw-versions"
run "${swu_env[@]}" PETREL_SWUPDATE_VERSIONS="$tmp/sw-versions" PETREL_ROLLBACK=1 $sh "$swu_dir/swupdate-rollback"
expect_status 0
expect_env rootpart 2

fresh "swupdate-rollback: no record of the previous system"
plan acme.os update swu
printf 'rootpart=3\n' >"$STUB_DIR/uboot.env"
run "${swu_env[@]}" PETREL_ROLLBACK=1 $sh "$swu_dir/swupdate-rollback"
expect_status 1
expect_err "petrel_prev_rootpart is not set"
expect_env rootpart 3

# ---- the scripts themselves ------------------------------------------------------------
current="the recipe scripts"
for f in "$rauc_dir"/rauc-* "$swu_dir"/swupdate-*; do
    if [ -x "$f" ] && head -1 "$f" | grep -qx '#!/bin/sh' && $sh -n "$f"; then ok; else bad "$f is not an executable POSIX sh script"; fi
done

# Every JSON check, and the device.toml examples, in one python3 run (each start of
# python3 costs time): one line per failure, then the number of checks that passed.
py_out=$(python3 - "$tmp/json" "$json_checks" "$rauc_dir/device.toml" "$swu_dir/device.toml" <<'EOF'
import json, sys, tomllib
d, n = sys.argv[1], int(sys.argv[2])
good = 0
for i in range(1, n + 1):
    out, want, what = (open(f"{d}/{i}.{x}").read() for x in ("out", "want", "what"))
    try:
        same = json.loads(out) == json.loads(want)
    except ValueError:
        same = False
    if same:
        good += 1
    else:
        print(f"FAIL: {what}: stdout {out.strip()!r} is not the JSON {want}")
for path in sys.argv[3:]:
    try:
        with open(path, "rb") as f:
            tomllib.load(f)
        good += 1
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"FAIL: {path} is not valid TOML: {e}")
print(good)
EOF
) || py_out=$'FAIL: python3 could not make the JSON checks\n0'
printf '%s\n' "$py_out" | grep '^FAIL' >&2 || true
passed=$((passed + $(printf '%s\n' "$py_out" | tail -n 1)))
failed=$((failed + $(printf '%s\n' "$py_out" | grep -c '^FAIL' || true)))

if [ "$failed" -ne 0 ]; then
    echo "recipes: $failed of $((passed + failed)) checks FAILED" >&2
    exit 1
fi
echo "recipes: $passed checks passed"

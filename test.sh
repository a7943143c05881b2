#!/usr/bin/env bash
# Runs the whole Petrel test suite (this is what CI runs). Installs what the tests need:
# Python virtual environments with python-tuf 7 and 6 for the interop tests, nginx
# for the client's end-to-end tests against a plain web server, SoftHSM2 for the
# PKCS#11 key tests, moto (a local S3-compatible server) for the uploads to object storage,
# and Chromium for the dashboard's headless-browser test; ends with
# a short bounded run of every fuzz target (libFuzzer).
set -euo pipefail
cd "$(dirname "$0")"
# One cold build, run once: incremental state would only double the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> python-tuf environments (7 in .venv, 6 in .venv-tuf6)"
PETREL_TUF_SERIES=7 PETREL_VENV="$PWD/.venv" scripts/ensure-venv.sh >/dev/null
PETREL_TUF_SERIES=6 PETREL_VENV="$PWD/.venv-tuf6" scripts/ensure-venv.sh >/dev/null
echo "==> nginx (client end-to-end tests against nginx)"
PETREL_NGINX="$(scripts/ensure-nginx.sh)"
export PETREL_NGINX
echo "==> SoftHSM2 (petrel-repo's PKCS#11 key tests)"
PETREL_SOFTHSM_MODULE="$(scripts/ensure-softhsm.sh)"
export PETREL_SOFTHSM_MODULE
echo "==> moto (petrel-repo's uploads to an S3-compatible object store)"
PETREL_MOTO="$(scripts/ensure-s3.sh)"
export PETREL_MOTO
echo "==> Chromium (petrel-server's dashboard test in a headless browser)"
PETREL_CHROMIUM="$(scripts/ensure-chromium.sh)"
export PETREL_CHROMIUM
echo "==> formatting"
cargo fmt --all -- --check
echo "==> installer recipes (RAUC, SWUpdate) against stand-ins of their tools"
bash tests/recipes/run.sh
echo "==> building the tests"
cargo test --workspace --all-targets --locked --no-run
# The fuzz targets build (coverage-instrumented, fuzz/target) at the lowest CPU priority
# while the tests run: the tests leave most of the CPU idle, waiting on what they start.
fuzz_log="$(mktemp "${TMPDIR:-/tmp}/petrel-fuzz-build.XXXXXX")"
FUZZ_PROFILE=smoke nice -n 19 scripts/fuzz.sh --build >"$fuzz_log" 2>&1 &
fuzz_build=$!
# The tests run in three groups at once: the end-to-end tests mostly wait on the agents,
# servers and faults they start, so one group at a time would leave both cores idle.
# Each group's output is printed whole when it ends.
echo "==> tests (three groups at once)"
tests_status=0
group_dir="$(mktemp -d "${TMPDIR:-/tmp}/petrel-tests.XXXXXX")"
run_group() {
    local name="$1"
    shift
    local start=$SECONDS rc=0
    cargo test --locked --no-fail-fast "$@" >"$group_dir/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$group_dir/$name.rc"
    echo "$((SECONDS - start))" >"$group_dir/$name.secs"
}
# Every group selects the whole workspace, so that features resolve as in the build above
# and nothing is compiled again; the groups split the integration test targets by name
# (`deltas` names one in petrel-repo and one in petrel-tests: both run in the second group).
agent_tests=(agent_crash agent_faults nginx_e2e scale)
interop_tests=(images interop_python_tuf interop_tough interop_client agent_service deltas scenarios)
mapfile -t all_tests < <(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "test" in t["kind"]:
            print(t["name"])' | sort -u)
unit_tests=()
for t in "${all_tests[@]}"; do
    if [[ " ${agent_tests[*]} ${interop_tests[*]} " != *" $t "* ]]; then
        unit_tests+=("$t")
    fi
done
for t in "${agent_tests[@]}" "${interop_tests[@]}"; do
    if [[ " ${all_tests[*]} " != *" $t "* ]]; then
        echo "test.sh: no test target named $t; update the test groups" >&2
        exit 1
    fi
done
test_args() { for t in "$@"; do printf -- '--test\n%s\n' "$t"; done; }
mapfile -t agent_args < <(test_args "${agent_tests[@]}")
mapfile -t interop_args < <(test_args "${interop_tests[@]}")
mapfile -t unit_args < <(test_args "${unit_tests[@]}")
run_group e2e-agent --workspace "${agent_args[@]}" &
group_agent=$!
run_group e2e-interop --workspace "${interop_args[@]}" &
group_interop=$!
run_group units --workspace --lib --bins --examples --benches "${unit_args[@]}"
wait "$group_agent" "$group_interop" || true
for g in units e2e-interop e2e-agent; do
    echo "==> test group $g ($(cat "$group_dir/$g.secs") s)"
    cat "$group_dir/$g.log"
    rc="$(cat "$group_dir/$g.rc")"
    if [[ "$rc" != 0 ]]; then
        echo "test.sh: test group $g failed (exit status $rc)" >&2
        tests_status="$rc"
    fi
done
rm -rf "$group_dir"
echo "==> fuzzing smoke run (every fuzz target for 8 s, from the committed seeds)"
if ! wait "$fuzz_build"; then
    cat "$fuzz_log" >&2
    echo "test.sh: building the fuzz targets failed" >&2
    exit 1
fi
cat "$fuzz_log"
rm -f "$fuzz_log"
scripts/fuzz.sh --smoke 8
if [[ $tests_status -ne 0 ]]; then
    echo "test.sh: cargo test failed (exit status $tests_status)" >&2
    exit "$tests_status"
fi
echo "test.sh: every test passed"

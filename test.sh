#!/usr/bin/env bash
# Runs the whole Petrel test suite (this is what CI runs). Installs what the tests need:
# Python virtual environments with python-tuf 7 and 6 for the interop tests, nginx
# for the client's end-to-end tests against a plain web server, SoftHSM2 for the
# PKCS#11 key tests, moto (a local S3-compatible server) for the uploads to object storage,
# and Chromium for the dashboard's headless-browser test; ends with
# a short bounded run of every fuzz target (libFuzzer).
set -euo pipefail
cd "$(dirname "$0")"
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
echo "==> tests"
tests_status=0
cargo test --workspace --all-targets --locked || tests_status=$?
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

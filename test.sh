#!/usr/bin/env bash
# Runs the whole Petrel test suite (this is what CI runs). Installs what the tests need:
# Python virtual environments with python-tuf 7 and 6 for the interop tests, and nginx
# for the client's end-to-end tests against a plain web server, and SoftHSM2 for the
# PKCS#11 key tests.
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
echo "==> formatting"
cargo fmt --all -- --check
echo "==> installer recipes (RAUC, SWUpdate) against stand-ins of their tools"
bash tests/recipes/run.sh
echo "==> tests"
cargo test --workspace --all-targets --locked

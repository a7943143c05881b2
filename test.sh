#!/usr/bin/env bash
# Runs the whole Petrel test suite (this is what CI runs). Installs what the tests need:
# a Python virtual environment with python-tuf for the interop tests, and nginx for the
# client's end-to-end tests against a plain web server.
set -euo pipefail
cd "$(dirname "$0")"
export PETREL_VENV="${PETREL_VENV:-$PWD/.venv}"
echo "==> python-tuf environment"
scripts/ensure-venv.sh >/dev/null
echo "==> nginx (client end-to-end tests against nginx)"
PETREL_NGINX="$(scripts/ensure-nginx.sh)"
export PETREL_NGINX
echo "==> formatting"
cargo fmt --all -- --check
echo "==> installer recipes (RAUC, SWUpdate) against stand-ins of their tools"
bash tests/recipes/run.sh
echo "==> tests"
cargo test --workspace --all-targets --locked

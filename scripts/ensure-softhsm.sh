#!/usr/bin/env bash
# ensure-softhsm.sh — make SoftHSM2 (a software PKCS#11 token) available for the tests of
# petrel-repo's PKCS#11 key source (repo-tool/tests/pkcs11.rs).
#
# Idempotent. Uses, in order: $PETREL_SOFTHSM_MODULE if it is set and is a file; the
# module of an installed `softhsm2` package. If none exists, installs Debian's
# `softhsm2` package with apt-get, through sudo when not running as root, running
# `apt-get update` first only if the first attempt fails.
#
# The tests never use the system token directory: each creates its own token in a
# temporary directory (SOFTHSM2_CONF pointing to a generated configuration).
#
# Output contract:
#   * stdout: exactly one line on success, the absolute path of the PKCS#11 module
#     (so `PETREL_SOFTHSM_MODULE=$(scripts/ensure-softhsm.sh)` works).
#   * stderr: nothing when SoftHSM2 was already there, one status line when it was
#     installed, a clear error (plus the tail of the apt log) on failure.
#   * exit status: 0 on success, non-zero on any failure.
#
# Never reads stdin.

set -euo pipefail

die() {
    echo "ensure-softhsm: ERROR: $*" >&2
    exit 1
}

# An explicit choice is used as is, never replaced by an installed one.
if [[ -n "${PETREL_SOFTHSM_MODULE:-}" ]]; then
    [[ -f "${PETREL_SOFTHSM_MODULE}" ]] \
        || die "PETREL_SOFTHSM_MODULE=${PETREL_SOFTHSM_MODULE} is not a file"
    echo "${PETREL_SOFTHSM_MODULE}"
    exit 0
fi

find_module() {
    local p
    for p in \
        /usr/lib/softhsm/libsofthsm2.so \
        /usr/lib/*/softhsm/libsofthsm2.so \
        /usr/local/lib/softhsm/libsofthsm2.so; do
        if [[ -f "${p}" ]] && command -v softhsm2-util >/dev/null 2>&1; then
            echo "${p}"
            return 0
        fi
    done
    return 1
}

if found="$(find_module)"; then
    echo "${found}"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "SoftHSM2 is not installed and apt-get is missing: install softhsm2 by hand or set PETREL_SOFTHSM_MODULE"

sudo=()
if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 \
        || die "SoftHSM2 is not installed; installing it needs root or sudo (or set PETREL_SOFTHSM_MODULE)"
    sudo=(sudo -n)
fi

log="$(mktemp -t petrel-ensure-softhsm.XXXXXX)"
trap 'rm -f "${log}"' EXIT

install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends softhsm2 >>"${log}" 2>&1
}

if ! install; then
    # A fresh machine may have no package lists yet.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"${log}" 2>&1 || {
        tail -n 20 "${log}" >&2
        die "apt-get update failed"
    }
    if ! install; then
        tail -n 20 "${log}" >&2
        die "apt-get install softhsm2 failed"
    fi
fi

found="$(find_module)" || {
    tail -n 20 "${log}" >&2
    die "installed softhsm2 but found no libsofthsm2.so (or no softhsm2-util on PATH)"
}
version="$(softhsm2-util --version 2>/dev/null | head -n1 || true)"
echo "ensure-softhsm: installed softhsm2 ${version} (${found})" >&2
echo "${found}"

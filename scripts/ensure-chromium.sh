#!/usr/bin/env bash
# ensure-chromium.sh — make a headless-capable Chromium available for the dashboard's
# browser test (server/tests/dashboard.rs).
#
# Idempotent. Uses, in order: $PETREL_CHROMIUM if it is set and is executable; a
# `chromium` or `chromium-browser` already on PATH. If none exists, installs Debian's
# `chromium` package with apt-get, through sudo when not running as root, running
# `apt-get update` first only if the first attempt fails.
#
# The test never uses a profile of its own user: each run of the browser gets a fresh
# temporary `--user-data-dir`.
#
# Output contract:
#   * stdout: exactly one line on success, the absolute path of the browser binary
#     (so `PETREL_CHROMIUM=$(scripts/ensure-chromium.sh)` works).
#   * stderr: nothing when Chromium was already there, one status line when it was
#     installed, a clear error (plus the tail of the apt log) on failure.
#   * exit status: 0 on success, non-zero on any failure.
#
# Never reads stdin.

set -euo pipefail

die() {
    echo "ensure-chromium: ERROR: $*" >&2
    exit 1
}

# An explicit choice is used as is, never replaced by an installed one.
if [[ -n "${PETREL_CHROMIUM:-}" ]]; then
    [[ -x "${PETREL_CHROMIUM}" ]] \
        || die "PETREL_CHROMIUM=${PETREL_CHROMIUM} is not an executable file"
    echo "${PETREL_CHROMIUM}"
    exit 0
fi

find_browser() {
    local name p
    for name in chromium chromium-browser; do
        if p="$(command -v "${name}" 2>/dev/null)" && [[ -x "${p}" ]]; then
            echo "${p}"
            return 0
        fi
    done
    return 1
}

if found="$(find_browser)"; then
    echo "${found}"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "Chromium is not installed and apt-get is missing: install chromium by hand or set PETREL_CHROMIUM"

sudo=()
if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 \
        || die "Chromium is not installed; installing it needs root or sudo (or set PETREL_CHROMIUM)"
    sudo=(sudo -n)
fi

log="$(mktemp -t petrel-ensure-chromium.XXXXXX)"
trap 'rm -f "${log}"' EXIT

install() {
    # Fonts come with the package's dependencies; recommends (extensions, drivers) are
    # not needed to render a page headless.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends chromium </dev/null >>"${log}" 2>&1
}

if ! install; then
    # A fresh machine may have no package lists yet.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >>"${log}" 2>&1 || {
        tail -n 20 "${log}" >&2
        die "apt-get update failed"
    }
    if ! install; then
        tail -n 20 "${log}" >&2
        die "apt-get install chromium failed"
    fi
fi

found="$(find_browser)" || {
    tail -n 20 "${log}" >&2
    die "installed chromium but found no chromium binary on PATH"
}
version="$("${found}" --version 2>/dev/null | head -n1 || true)"
echo "ensure-chromium: installed ${version:-chromium} (${found})" >&2
echo "${found}"

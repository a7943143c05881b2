#!/usr/bin/env bash
# ensure-nginx.sh — make an nginx binary available for the client's end-to-end tests
# against nginx (tests/tests/nginx_e2e.rs) and for the server benchmark.
#
# Idempotent. Uses, in order: $PETREL_NGINX if it is set and executable; `nginx` on
# PATH; /usr/sbin/nginx. If none exists, installs Debian's `nginx` package (falling
# back to `nginx-light`) with apt-get, through sudo when not running as root, running
# `apt-get update` first only if the first attempt fails.
#
# The tests never use the system configuration or service: they start their own
# unprivileged nginx with a generated configuration (see `petrel_tests::Nginx`).
#
# Output contract:
#   * stdout: exactly one line on success, the absolute path of the nginx binary
#     (so `PETREL_NGINX=$(scripts/ensure-nginx.sh)` works).
#   * stderr: nothing when nginx was already there, one status line when it was
#     installed, a clear error (plus the tail of the apt log) on failure.
#   * exit status: 0 on success, non-zero on any failure.
#
# Never reads stdin.

set -euo pipefail

die() {
    echo "ensure-nginx: ERROR: $*" >&2
    exit 1
}

# An explicit choice is used as is, never replaced by an installed one.
if [[ -n "${PETREL_NGINX:-}" ]]; then
    [[ -x "${PETREL_NGINX}" && ! -d "${PETREL_NGINX}" ]] \
        || die "PETREL_NGINX=${PETREL_NGINX} is not an executable file"
    echo "${PETREL_NGINX}"
    exit 0
fi

find_nginx() {
    local p
    if p="$(command -v nginx 2>/dev/null)" && [[ -x "${p}" ]]; then
        echo "${p}"
        return 0
    fi
    if [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
        return 0
    fi
    return 1
}

if found="$(find_nginx)"; then
    echo "${found}"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || die "nginx is not installed and apt-get is missing: install nginx by hand or set PETREL_NGINX"

sudo=()
if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 \
        || die "nginx is not installed; installing it needs root or sudo (or set PETREL_NGINX)"
    sudo=(sudo -n)
fi

log="$(mktemp -t petrel-ensure-nginx.XXXXXX)"
trap 'rm -f "${log}"' EXIT
export DEBIAN_FRONTEND=noninteractive

install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "$@" >>"${log}" 2>&1
}

if ! install nginx && ! install nginx-light; then
    # A fresh machine may have no package lists yet.
    "${sudo[@]}" apt-get update -q >>"${log}" 2>&1 || {
        tail -n 20 "${log}" >&2
        die "apt-get update failed"
    }
    if ! install nginx && ! install nginx-light; then
        tail -n 20 "${log}" >&2
        die "apt-get install nginx (or nginx-light) failed"
    fi
fi

found="$(find_nginx)" || {
    tail -n 20 "${log}" >&2
    die "installed nginx but no nginx binary was found (PATH or /usr/sbin/nginx)"
}
echo "ensure-nginx: installed nginx ($("${found}" -v 2>&1 | head -n1))" >&2
echo "${found}"

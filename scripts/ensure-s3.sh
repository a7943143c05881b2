#!/usr/bin/env bash
# ensure-s3.sh — make a local S3-compatible server (moto's server mode) available for the
# tests of `petrel-repo publish --to s3://…` (repo-tool/tests/s3_publish.rs).
#
# Idempotent. Creates ${PETREL_S3_VENV:-<repo>/.venv-s3} with `python3 -m venv` if it is
# missing and installs the pinned moto[server] into it, but only when `moto_server` is
# missing or the stamp file recording the pin is missing or different. The tests start
# their own server, bound to 127.0.0.1 on a free port; this script starts nothing.
#
# Output contract (callers rely on it):
#   * stdout: exactly one line on success, the absolute path of the venv's `moto_server`
#     (so `PETREL_MOTO=$(scripts/ensure-s3.sh)` works).
#   * stderr: nothing when the venv was already up to date, one status line when
#     something was installed, a clear error (plus the tail of the pip log) on failure.
#   * exit status: 0 on success, non-zero on any failure.
#
# Environment:
#   PETREL_S3_VENV      venv directory (default: <repo>/.venv-s3)
#   PETREL_BASE_PYTHON  interpreter used to create the venv (default: python3)
#   PIP_INDEX_URL etc.  honoured by pip as usual
#
# Never reads stdin. Concurrent invocations are serialised with flock(1).

set -euo pipefail

# Bump the pin here; the stamp file makes every venv pick up a change.
PINS=("moto[server]==5.2.5")

die() {
    echo "ensure-s3: ERROR: $*" >&2
    exit 1
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
venv="${PETREL_S3_VENV:-${repo_root}/.venv-s3}"
base_python="${PETREL_BASE_PYTHON:-python3}"

command -v "${base_python}" >/dev/null 2>&1 \
    || die "'${base_python}' not found on PATH (set PETREL_BASE_PYTHON or install python3)"

mkdir -p "${venv}" || die "cannot create venv directory ${venv}"
venv="$(cd "${venv}" && pwd)"
py="${venv}/bin/python"
server="${venv}/bin/moto_server"
stamp="${venv}/.petrel-pins"
lock="${venv}/.petrel-ensure.lock"
log="${venv}/.petrel-pip.log"

if command -v flock >/dev/null 2>&1; then
    exec 9>"${lock}" || die "cannot open lock file ${lock}"
    flock -w 900 9 || die "timed out waiting for lock ${lock}"
fi

base_version="$("${base_python}" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" \
    || die "'${base_python}' does not run"
want_stamp="python=${base_version} ${PINS[*]}"

# A venv whose interpreter no longer runs (base python removed or upgraded) is rebuilt,
# but only if it really is a venv (has pyvenv.cfg).
if [[ -e "${py}" ]] && ! "${py}" -c 'import sys' >/dev/null 2>&1; then
    if [[ -f "${venv}/pyvenv.cfg" ]]; then
        echo "ensure-s3: ${py} is broken, recreating venv" >&2
        "${base_python}" -m venv --clear "${venv}" >"${log}" 2>&1 \
            || { tail -n 20 "${log}" >&2; die "python3 -m venv --clear ${venv} failed"; }
    else
        die "${py} exists but does not run, and ${venv} is not a venv; remove it by hand"
    fi
fi

if [[ ! -x "${py}" ]]; then
    "${base_python}" -m venv "${venv}" >"${log}" 2>&1 || {
        tail -n 20 "${log}" >&2
        die "'${base_python} -m venv ${venv}' failed (on Debian: apt-get install python3-venv)"
    }
fi

check() {
    [[ -x "${server}" ]] && "${py}" -c 'import moto.server, flask, werkzeug' >/dev/null 2>&1
}

have_stamp=""
[[ -f "${stamp}" ]] && have_stamp="$(cat "${stamp}")"
if [[ "${have_stamp}" == "${want_stamp}" ]] && check; then
    echo "${server}"
    exit 0
fi

rm -f "${stamp}"
if ! PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "${py}" -m pip install --no-input --disable-pip-version-check --quiet \
    "${PINS[@]}" >"${log}" 2>&1; then
    tail -n 30 "${log}" >&2
    die "pip install ${PINS[*]} into ${venv} failed (full log: ${log})"
fi

check || {
    tail -n 20 "${log}" >&2
    die "installed ${PINS[*]} but ${server} is missing or 'import moto.server' fails (log: ${log})"
}

printf '%s\n' "${want_stamp}" >"${stamp}"
echo "ensure-s3: installed ${PINS[*]} into ${venv}" >&2
echo "${server}"

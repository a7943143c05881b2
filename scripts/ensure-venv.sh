#!/usr/bin/env bash
# ensure-venv.sh — create/refresh the Python venv used by the TUF interop tests.
#
# Idempotent. Creates ${PETREL_VENV:-<repo>/.venv} with `python3 -m venv` if it
# is missing and installs the pinned python-tuf stack into it, but only when
# `import tuf.ngclient` fails or the stamp file recording the pins is missing
# or different. Two python-tuf series are tested: 7 (current, the default, in
# <repo>/.venv) and 6 (PETREL_TUF_SERIES=6, in <repo>/.venv-tuf6).
#
# Output contract (callers rely on it):
#   * stdout: exactly one line on success, the absolute path of the venv's
#     python interpreter (so `PY=$(scripts/ensure-venv.sh | tail -n1)` works).
#   * stderr: nothing when the venv was already up to date, one status line
#     when something was installed, a clear error (plus the tail of the pip
#     log) on failure.
#   * exit status: 0 on success, non-zero on any failure.
#
# Environment:
#   PETREL_TUF_SERIES   python-tuf major version to install: 7 (default) or 6
#   PETREL_VENV         venv directory (default: <repo>/.venv for 7,
#                       <repo>/.venv-tuf6 for 6)
#   PETREL_BASE_PYTHON  interpreter used to create the venv (default: python3)
#   PIP_INDEX_URL etc.  honoured by pip as usual
#
# Never reads stdin. Concurrent invocations are serialised with flock(1).

set -euo pipefail

# Pins per python-tuf series. Bump together; the stamp file makes every venv pick
# up a change.
series="${PETREL_TUF_SERIES:-7}"
case "${series}" in
    7) tuf_pin="tuf==7.0.1" default_venv_name=".venv" ;;
    6) tuf_pin="tuf==6.0.0" default_venv_name=".venv-tuf6" ;;
    *) echo "ensure-venv: ERROR: PETREL_TUF_SERIES must be 6 or 7, not '${series}'" >&2; exit 1 ;;
esac
PINS=(
    "${tuf_pin}"
    "securesystemslib[crypto]==1.6.0"
    "cryptography==50.0.2"
    "urllib3==2.8.0"
)

die() {
    echo "ensure-venv: ERROR: $*" >&2
    exit 1
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
venv="${PETREL_VENV:-${repo_root}/${default_venv_name}}"
base_python="${PETREL_BASE_PYTHON:-python3}"

command -v "${base_python}" >/dev/null 2>&1 \
    || die "'${base_python}' not found on PATH (set PETREL_BASE_PYTHON or install python3)"

mkdir -p "${venv}" || die "cannot create venv directory ${venv}"
venv="$(cd "${venv}" && pwd)"
py="${venv}/bin/python"
stamp="${venv}/.petrel-pins"
lock="${venv}/.petrel-ensure.lock"
log="${venv}/.petrel-pip.log"

# Serialise concurrent callers (e.g. parallel cargo tests).
if command -v flock >/dev/null 2>&1; then
    exec 9>"${lock}" || die "cannot open lock file ${lock}"
    flock -w 900 9 || die "timed out waiting for lock ${lock}"
fi

base_version="$("${base_python}" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" \
    || die "'${base_python}' does not run"
want_stamp="python=${base_version} ${PINS[*]}"

# A venv whose interpreter no longer runs (base python removed/upgraded) is
# rebuilt, but only if it really is a venv (has pyvenv.cfg).
if [[ -e "${py}" ]] && ! "${py}" -c 'import sys' >/dev/null 2>&1; then
    if [[ -f "${venv}/pyvenv.cfg" ]]; then
        echo "ensure-venv: ${py} is broken, recreating venv" >&2
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

have_stamp=""
[[ -f "${stamp}" ]] && have_stamp="$(cat "${stamp}")"

if [[ "${have_stamp}" == "${want_stamp}" ]] \
    && "${py}" -c 'import tuf.ngclient, securesystemslib.signer, cryptography' >/dev/null 2>&1; then
    echo "${py}"
    exit 0
fi

rm -f "${stamp}"
if ! PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "${py}" -m pip install --no-input --disable-pip-version-check --quiet \
    "${PINS[@]}" >"${log}" 2>&1; then
    tail -n 30 "${log}" >&2
    die "pip install ${PINS[*]} into ${venv} failed (full log: ${log})"
fi

"${py}" -c 'import tuf.ngclient, securesystemslib.signer, cryptography' >>"${log}" 2>&1 || {
    tail -n 20 "${log}" >&2
    die "installed packages but 'import tuf.ngclient' still fails (log: ${log})"
}

printf '%s\n' "${want_stamp}" >"${stamp}"
echo "ensure-venv: installed ${PINS[*]} into ${venv}" >&2
echo "${py}"

#!/usr/bin/env bash
# bench/deltas/fetch_pairs.sh — real old/new pairs for the delta benchmark, fetched from the
# system's Debian package repositories. See bench/README.md, "Binary deltas".
#
#   bench/deltas/fetch_pairs.sh            # all pairs
#   PAIRS="libcrypto vmlinux" bench/deltas/fetch_pairs.sh
#
# For every package it takes the two newest distinct versions that `apt-cache madison`
# lists (or, for the kernel, the newest version of the two highest ABI packages
# linux-image-6.1.0-N-amd64), downloads them with `apt-get download PKG=VERSION` into
# bench/work/deltas/debs, extracts them with `dpkg-deb -x`, and lays out
# bench/work/deltas/pairs/<name>/{old,new} with a pair.json saying where they came from:
#
#   libcrypto     libcrypto.so.3 from libssl3 (shared library, ~5 MB)
#   libpython     libpython3.11.so.1.0 from libpython3.11 (shared library, ~7 MB)
#   postgres      the postgres executable from postgresql-15 (~9 MB)
#   vmlinux       the kernel of linux-image-6.1.0-N-amd64, decompressed from the vmlinuz
#                 (extract_vmlinux.py: finds the compressed payload, like the kernel's
#                 scripts/extract-vmlinux)
#   pg-tree       the whole postgresql-15 package tree as one tar (--sort=name --mtime=@0
#                 --owner=0 --group=0 --numeric-owner), ~54 MB
#   pg-tree-dir   the same trees as directories: pairs/pg-tree-dir/{old,new}/
#   pg-ext4       a 200 MiB ext4 image of each tree (mkfs.ext4 -d, fixed UUID and hash
#                 seed, E2FSPROGS_FAKE_TIME, inode atime/ctime set to the mtime), the
#                 same bytes on every run
#
# Each pair has a list of candidate packages; the first one with two versions is used, and
# a pair without any is skipped with a message. Idempotent: downloads, extractions and
# pairs that exist are kept (delete a pair's directory to rebuild it). Needs root for
# apt-get (it runs `apt-get update` once if a download fails). Disk: about 1.2 GB.
#
# Environment: PAIRS (all), BENCH_WORK (bench/work), EXT4_MIB (200).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
work="${BENCH_WORK:-${repo_root}/bench/work}/deltas"
debs="${work}/debs"
xdir="${work}/extracted"
pairs="${work}/pairs"
EXT4_MIB="${EXT4_MIB:-200}"
ALL_PAIRS="libcrypto libpython postgres vmlinux pg-tree pg-tree-dir pg-ext4"
PAIRS="${PAIRS:-${ALL_PAIRS}}"
# A fixed UUID for the file system and its directory hash seed: two builds, the same bytes.
FS_UUID="5e7a1d2c-0b3f-4e6d-9c8b-7a6f5e4d3c2b"
FAKE_TIME=1700000000
say() { printf '[fetch %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
mkdir -p "${debs}" "${xdir}" "${pairs}"

for t in apt-get apt-cache dpkg-deb dpkg tar python3; do
    command -v "$t" >/dev/null || die "$t is missing"
done

# Candidates per pair: PACKAGE:PATH-IN-PACKAGE, first with two versions wins.
candidates() {
    case "$1" in
        libcrypto) echo "libssl3:usr/lib/x86_64-linux-gnu/libcrypto.so.3 libgnutls30:usr/lib/x86_64-linux-gnu/libgnutls.so.30" ;;
        libpython) echo "libpython3.11:usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 libc6:usr/lib/x86_64-linux-gnu/libc.so.6" ;;
        postgres) echo "postgresql-15:usr/lib/postgresql/15/bin/postgres openssh-server:usr/sbin/sshd" ;;
        pg-tree | pg-tree-dir | pg-ext4) echo "postgresql-15:." ;;
        *) return 1 ;;
    esac
}

# The distinct versions madison lists for PKG, newest first (Debian version order).
versions() {
    local pkg="$1" v sorted=() i inserted
    while read -r v; do
        [[ -n "$v" ]] || continue
        inserted=0
        for ((i = 0; i < ${#sorted[@]}; i++)); do
            if dpkg --compare-versions "$v" gt "${sorted[i]}"; then
                sorted=("${sorted[@]:0:i}" "$v" "${sorted[@]:i}")
                inserted=1
                break
            fi
        done
        ((inserted)) || sorted+=("$v")
    done < <(apt-cache madison "${pkg}" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -u | head -n 50)
    ((${#sorted[@]})) && printf '%s\n' "${sorted[@]}"
    return 0
}

updated=0
# deb PKG VERSION: prints the path of the downloaded .deb (downloads it if missing).
deb() {
    local pkg="$1" ver="$2" f
    f="$(find "${debs}" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -print -quit)"
    if [[ -z "$f" ]]; then
        [[ "$(id -u)" == 0 ]] || die "downloading ${pkg}=${ver} needs root (apt-get download)"
        say "downloading ${pkg}=${ver}"
        if ! (cd "${debs}" && apt-get download -q "${pkg}=${ver}" >/dev/null 2>"${work}/apt.err"); then
            ((updated)) && { cat "${work}/apt.err" >&2; die "apt-get download ${pkg}=${ver} failed"; }
            say "apt-get download failed; running apt-get update once"
            apt-get update -q >/dev/null
            updated=1
            (cd "${debs}" && apt-get download -q "${pkg}=${ver}" >/dev/null) || die "apt-get download ${pkg}=${ver} failed"
        fi
        f="$(find "${debs}" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -print -quit)"
        [[ -n "$f" ]] || die "apt-get download ${pkg}=${ver} wrote no .deb"
    fi
    printf '%s\n' "$f"
}

# extracted PKG VERSION: prints the directory holding the package's extracted tree.
extracted() {
    local pkg="$1" ver="$2" d f
    d="${xdir}/${pkg}_${ver//:/%3a}"
    if [[ ! -e "${d}/.complete" ]]; then
        f="$(deb "${pkg}" "${ver}")"
        rm -rf "${d}"
        mkdir -p "${d}"
        dpkg-deb -x "$f" "${d}"
        : >"${d}/.complete"
    fi
    printf '%s\n' "${d}"
}

# pick PAIR: sets pkg, member, old_ver, new_ver from the first candidate with two versions.
pick() {
    local c vs
    pkg="" member="" old_ver="" new_ver=""
    for c in $(candidates "$1"); do
        mapfile -t vs < <(versions "${c%%:*}")
        if ((${#vs[@]} >= 2)); then
            pkg="${c%%:*}" member="${c#*:}" new_ver="${vs[0]}" old_ver="${vs[1]}"
            return 0
        fi
        say "$1: ${c%%:*} has ${#vs[@]} version(s) in the package repositories (${vs[*]:-none}); two are needed, trying the next candidate"
    done
    say "$1: skipped: no candidate package ($(candidates "$1" | sed 's/:[^ ]*//g')) has two versions"
    return 1
}

write_info() { # DIR KIND PACKAGE_OLD VERSION_OLD PACKAGE_NEW VERSION_NEW MEMBER
    python3 - "$@" <<'PY'
import json, os, sys
d, kind, po, vo, pn, vn, member = sys.argv[1:]
def size(p):
    if os.path.isdir(p):
        return sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(p) for f in fs)
    return os.stat(p).st_size
info = {"kind": kind, "old": {"package": po, "version": vo, "bytes": size(os.path.join(d, "old"))},
        "new": {"package": pn, "version": vn, "bytes": size(os.path.join(d, "new"))}, "member": member}
with open(os.path.join(d, "pair.json"), "w") as f:
    json.dump(info, f, indent=1)
    f.write("\n")
PY
}

# file_pair NAME: a single file taken from two versions of one package.
file_pair() {
    local name="$1" out="${pairs}/$1" o n
    [[ -f "${out}/pair.json" ]] && { say "${name}: exists"; return 0; }
    pick "${name}" || return 0
    o="$(extracted "${pkg}" "${old_ver}")/${member}"
    n="$(extracted "${pkg}" "${new_ver}")/${member}"
    [[ -f "$o" && -f "$n" ]] || die "${name}: ${member} is missing from ${pkg} ${old_ver} or ${new_ver}"
    rm -rf "${out}" && mkdir -p "${out}"
    cp -L "$o" "${out}/old" && cp -L "$n" "${out}/new"
    cmp -s "${out}/old" "${out}/new" && say "${name}: WARNING: old and new are identical"
    write_info "${out}" file "${pkg}" "${old_ver}" "${pkg}" "${new_ver}" "${member}"
    say "${name}: ${pkg} ${old_ver} -> ${new_ver}: $(stat -c %s "${out}/old") -> $(stat -c %s "${out}/new") bytes"
}

# The kernel: the newest version of the two highest-ABI linux-image-6.1.0-N-amd64 packages.
# Only ./boot/vmlinuz-* is extracted from each (the modules are not needed).
vmlinux_pair() {
    local out="${pairs}/vmlinux" pkgs=() p v side f z
    [[ -f "${out}/pair.json" ]] && { say "vmlinux: exists"; return 0; }
    mapfile -t pkgs < <(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
        | awk '{ print $1 }' | sort -t- -k4,4n | tail -n 2)
    if ((${#pkgs[@]} < 2)); then
        say "vmlinux: skipped: the package repositories list ${#pkgs[@]} linux-image-6.1.0-N-amd64 package(s); two are needed"
        return 0
    fi
    rm -rf "${out}" && mkdir -p "${out}"
    local info=()
    for side in old new; do
        if [[ "${side}" == old ]]; then p="${pkgs[0]}"; else p="${pkgs[1]}"; fi
        v="$(versions "$p" | head -n 1)"
        [[ -n "$v" ]] || die "vmlinux: apt-cache madison lists no version of $p"
        f="$(deb "$p" "$v")"
        z="${xdir}/${p}_${v//:/%3a}.vmlinuz"
        if [[ ! -s "$z" ]]; then
            dpkg-deb --fsys-tarfile "$f" | tar -xO --wildcards './boot/vmlinuz-*' >"$z.tmp"
            [[ -s "$z.tmp" ]] || die "vmlinux: no ./boot/vmlinuz-* in $f"
            mv "$z.tmp" "$z"
        fi
        python3 "${here}/extract_vmlinux.py" "$z" "${out}/${side}"
        info+=("$p" "$v")
    done
    write_info "${out}" file "${info[0]}" "${info[1]}" "${info[2]}" "${info[3]}" "boot/vmlinuz (decompressed)"
    say "vmlinux: ${info[0]} ${info[1]} -> ${info[2]} ${info[3]}: $(stat -c %s "${out}/old") -> $(stat -c %s "${out}/new") bytes"
}

# The package trees as directories: pairs/pg-tree-dir/{old,new}/ (what the tar and the
# ext4 pairs are made from).
tree_dir_pair() {
    local out="${pairs}/pg-tree-dir" side src
    [[ -f "${out}/pair.json" ]] && return 0
    pick pg-tree-dir || return 1
    rm -rf "${out}" && mkdir -p "${out}"
    for side in old new; do
        if [[ "${side}" == old ]]; then src="$(extracted "${pkg}" "${old_ver}")"; else src="$(extracted "${pkg}" "${new_ver}")"; fi
        cp -a "${src}" "${out}/${side}"
        rm -f "${out}/${side}/.complete"
        touch -d "@${FAKE_TIME}" "${out}/${side}" # the top directory is ours, not the package's
    done
    write_info "${out}" dir "${pkg}" "${old_ver}" "${pkg}" "${new_ver}" "the package tree"
    say "pg-tree-dir: ${pkg} ${old_ver} -> ${new_ver}: $(du -sb "${out}/old" | cut -f1) -> $(du -sb "${out}/new" | cut -f1) bytes"
}

tree_derived_pair() { # NAME tar|ext4
    local name="$1" kind="$2" out="${pairs}/$1" src="${pairs}/pg-tree-dir" side
    [[ -f "${out}/pair.json" ]] && { say "${name}: exists"; return 0; }
    tree_dir_pair || { say "${name}: skipped (no tree pair)"; return 0; }
    rm -rf "${out}" && mkdir -p "${out}"
    for side in old new; do
        if [[ "${kind}" == tar ]]; then
            tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${src}/${side}" -cf "${out}/${side}" .
        else
            make_ext4 "${src}/${side}" "${out}/${side}"
        fi
    done
    python3 - "${src}/pair.json" "${out}" "${kind}" "${EXT4_MIB}" <<'PY'
import json, os, sys
info = json.load(open(sys.argv[1]))
out, kind, mib = sys.argv[2], sys.argv[3], sys.argv[4]
info["kind"] = "file"
info["member"] = "the package tree as a tar" if kind == "tar" else "a %s MiB ext4 image of the package tree" % mib
for side in ("old", "new"):
    info[side]["bytes"] = os.stat(os.path.join(out, side)).st_size
json.dump(info, open(os.path.join(out, "pair.json"), "w"), indent=1)
PY
    say "${name}: $(stat -c %s "${out}/old") -> $(stat -c %s "${out}/new") bytes"
}

# make_ext4 TREE IMAGE: the same bytes for the same tree on every build. mke2fs copies
# each file's atime and ctime from the source (the extraction time); they are set to the
# mtime afterwards with debugfs, and the superblock times come from E2FSPROGS_FAKE_TIME.
make_ext4() {
    local tree="$1" img="$2" cmds="${work}/debugfs.cmds"
    if ! command -v mkfs.ext4 >/dev/null || ! command -v debugfs >/dev/null; then
        die "mkfs.ext4 and debugfs (e2fsprogs) are needed"
    fi
    rm -f "${img}"
    E2FSPROGS_FAKE_TIME="${FAKE_TIME}" mkfs.ext4 -q -F -d "${tree}" -U "${FS_UUID}" \
        -E "hash_seed=${FS_UUID},root_owner=0:0" "${img}" "${EXT4_MIB}M" >/dev/null
    (cd "${tree}" && find . -printf '%T@\t%P\n') | while IFS=$'\t' read -r t p; do
        [[ "$p" != *'"'* && "$p" != *$'\\'* ]] || die "make_ext4: cannot quote path '$p' for debugfs"
        printf 'sif "/%s" atime @%s\nsif "/%s" ctime @%s\n' "$p" "${t%.*}" "$p" "${t%.*}"
    done >"${cmds}"
    E2FSPROGS_FAKE_TIME="${FAKE_TIME}" debugfs -w -f "${cmds}" "${img}" >/dev/null 2>"${cmds}.err"
    if grep -v '^debugfs ' "${cmds}.err" >&2; then die "make_ext4: debugfs reported errors"; fi
    e2fsck -fn "${img}" >/dev/null 2>&1 || die "make_ext4: e2fsck finds ${img} inconsistent"
}

say "disk: $(df -h --output=avail "${work}" | tail -n 1 | tr -d ' ') available under ${work}"
for name in ${PAIRS}; do
    case "${name}" in
        libcrypto | libpython | postgres) file_pair "${name}" ;;
        vmlinux) vmlinux_pair ;;
        pg-tree) tree_derived_pair pg-tree tar ;;
        pg-ext4) tree_derived_pair pg-ext4 ext4 ;;
        pg-tree-dir) if tree_dir_pair; then say "pg-tree-dir: ready"; else say "pg-tree-dir: skipped"; fi ;;
        *) die "unknown pair '${name}' (known: ${ALL_PAIRS})" ;;
    esac
done
say "pairs under ${pairs}: $(cd "${pairs}" && find . -mindepth 2 -maxdepth 2 -name pair.json -printf '%h ' | sed 's|\./||g')"
say "disk used under ${work}: $(du -sh "${work}" | cut -f1)"

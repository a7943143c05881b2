#!/usr/bin/env python3
"""python-tuf side of the publishing benchmark (bench/publish/run.sh).

Written the way a python-tuf user would write a small repository publisher with the
low-level Metadata API (python-tuf has no repository tool of its own), doing the same
work Petrel does: hash every file, copy it into the tree under its consistent-snapshot
name, build and sign root/targets(/bins)/snapshot/timestamp, write the metadata.

    pytuf_publish.py fresh INPUT_DIR WORK_DIR [--prefix files] [--bins N]
    pytuf_publish.py add WORK_DIR FILE --name TARGET_NAME

WORK_DIR gets keys/ (PKCS#8 PEM private keys, ed25519) and tree/ (metadata/ and
targets/, consistent snapshots). `fresh` makes new keys and a new repository with every
file of INPUT_DIR (top level only) as `<prefix>/<file name>`; with --bins N, targets
delegates to N succinct hashed bins (TAP 15) that list the targets. `add` loads an
existing repository made by `fresh --bins`, adds one target to its bin and re-signs only
that bin, snapshot and timestamp.

Hashes are sha256 only (python-tuf's default for TargetFile.from_file/from_data). Each
file is read once, hashed, and written to the tree (no fsync, as shutil.copy would).
"""

import argparse
import math
import os
import sys
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

ROLES = ("root", "targets", "snapshot", "timestamp")
BIN_PREFIX = "bin"


def expiry(days):
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


def target_tree_path(tree, name, sha256):
    head, _, base = name.rpartition("/")
    d = os.path.join(tree, "targets", head) if head else os.path.join(tree, "targets")
    return d, os.path.join(d, f"{sha256}.{base}")


def place_target(tree, name, data, made_dirs):
    tf = TargetFile.from_data(name, data)  # sha256
    d, dst = target_tree_path(tree, name, tf.hashes["sha256"])
    if d not in made_dirs:
        os.makedirs(d, exist_ok=True)
        made_dirs.add(d)
    with open(dst, "wb") as f:
        f.write(data)
    return tf


def write_md(tree, md, role):
    version = md.signed.version
    if role == "timestamp":
        path = os.path.join(tree, "metadata", "timestamp.json")
    else:
        path = os.path.join(tree, "metadata", f"{version}.{role}.json")
    md.to_file(path)
    if role == "root":
        md.to_file(os.path.join(tree, "metadata", "root.json"))


def save_key(keys_dir, name, signer):
    path = os.path.join(keys_dir, f"{name}.pem")
    with open(path, "wb") as f:
        f.write(signer.private_bytes)
    os.chmod(path, 0o600)


def load_key(keys_dir, name):
    with open(os.path.join(keys_dir, f"{name}.pem"), "rb") as f:
        return CryptoSigner(load_pem_private_key(f.read(), password=None))


def fresh(input_dir, work, prefix, bins):
    tree = os.path.join(work, "tree")
    keys_dir = os.path.join(work, "keys")
    os.makedirs(os.path.join(tree, "metadata"), exist_ok=True)
    os.makedirs(keys_dir, exist_ok=True)

    signers = {r: CryptoSigner.generate_ed25519() for r in ROLES}
    if bins:
        signers[BIN_PREFIX] = CryptoSigner.generate_ed25519()
    for r, s in signers.items():
        save_key(keys_dir, r, s)

    root = Metadata(Root(expires=expiry(365), consistent_snapshot=True))
    for r in ROLES:
        root.signed.add_key(signers[r].public_key, r)

    targets = Metadata(Targets(expires=expiry(90)))
    succinct = None
    bin_md = {}
    if bins:
        bit_length = int(math.log2(bins))
        assert 1 << bit_length == bins, "--bins must be a power of two"
        key = signers[BIN_PREFIX].public_key
        succinct = SuccinctRoles([key.keyid], 1, bit_length, BIN_PREFIX)
        targets.signed.delegations = Delegations(
            keys={key.keyid: key}, roles=None, succinct_roles=succinct
        )
        for name in succinct.get_roles():
            bin_md[name] = Metadata(Targets(expires=expiry(90)))

    made_dirs = set()
    for entry in sorted(os.scandir(input_dir), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        name = f"{prefix}/{entry.name}" if prefix else entry.name
        with open(entry.path, "rb") as f:
            data = f.read()
        tf = place_target(tree, name, data, made_dirs)
        if succinct:
            bin_md[succinct.get_role_for_target(name)].signed.targets[name] = tf
        else:
            targets.signed.targets[name] = tf

    snapshot = Metadata(Snapshot(expires=expiry(7)))
    for name, md in bin_md.items():
        md.sign(signers[BIN_PREFIX])
        write_md(tree, md, name)
        snapshot.signed.meta[f"{name}.json"] = MetaFile(version=md.signed.version)
    targets.sign(signers["targets"])
    write_md(tree, targets, "targets")
    snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    snapshot.sign(signers["snapshot"])
    write_md(tree, snapshot, "snapshot")
    root.sign(signers["root"])
    write_md(tree, root, "root")
    timestamp = Metadata(Timestamp(expires=expiry(1)))
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    timestamp.sign(signers["timestamp"])
    write_md(tree, timestamp, "timestamp")


def add(work, file, name):
    tree = os.path.join(work, "tree")
    keys_dir = os.path.join(work, "keys")
    meta = os.path.join(tree, "metadata")

    timestamp = Metadata[Timestamp].from_file(os.path.join(meta, "timestamp.json"))
    sv = timestamp.signed.snapshot_meta.version
    snapshot = Metadata[Snapshot].from_file(os.path.join(meta, f"{sv}.snapshot.json"))
    tv = snapshot.signed.meta["targets.json"].version
    targets = Metadata[Targets].from_file(os.path.join(meta, f"{tv}.targets.json"))
    succinct = targets.signed.delegations.succinct_roles
    bin_name = succinct.get_role_for_target(name)
    bv = snapshot.signed.meta[f"{bin_name}.json"].version
    bin_md = Metadata[Targets].from_file(os.path.join(meta, f"{bv}.{bin_name}.json"))

    with open(file, "rb") as f:
        data = f.read()
    bin_md.signed.targets[name] = place_target(tree, name, data, set())
    bin_md.signed.version += 1
    bin_md.signed.expires = expiry(90)
    bin_md.signatures.clear()
    bin_md.sign(load_key(keys_dir, BIN_PREFIX))
    write_md(tree, bin_md, bin_name)

    snapshot.signed.meta[f"{bin_name}.json"] = MetaFile(version=bin_md.signed.version)
    snapshot.signed.version += 1
    snapshot.signed.expires = expiry(7)
    snapshot.signatures.clear()
    snapshot.sign(load_key(keys_dir, "snapshot"))
    write_md(tree, snapshot, "snapshot")

    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    timestamp.signed.version += 1
    timestamp.signed.expires = expiry(1)
    timestamp.signatures.clear()
    timestamp.sign(load_key(keys_dir, "timestamp"))
    write_md(tree, timestamp, "timestamp")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fresh")
    f.add_argument("input_dir")
    f.add_argument("work_dir")
    f.add_argument("--prefix", default="files")
    f.add_argument("--bins", type=int, default=0)
    a = sub.add_parser("add")
    a.add_argument("work_dir")
    a.add_argument("file")
    a.add_argument("--name", required=True)
    args = p.parse_args(argv)
    if args.cmd == "fresh":
        fresh(args.input_dir, args.work_dir, args.prefix.strip("/"), args.bins)
    else:
        add(args.work_dir, args.file, args.name)


if __name__ == "__main__":
    main(sys.argv[1:])

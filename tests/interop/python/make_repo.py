#!/usr/bin/env python3
"""Write a complete TUF repository with python-tuf's Metadata API.

Used by Petrel's interop tests to prove that Petrel reads trees written by
python-tuf (the reference implementation).

    make_repo.py OUT_DIR [--consistent-snapshot | --no-consistent-snapshot]
                 [--keys-dir DIR] [--force]

Layout written (consistent snapshot, the default):

    OUT_DIR/metadata/1.root.json, root.json (byte-identical copy)
    OUT_DIR/metadata/timestamp.json
    OUT_DIR/metadata/1.snapshot.json
    OUT_DIR/metadata/1.targets.json
    OUT_DIR/metadata/1.vendor.json, 1.bins.json, 1.bins-0.json .. 1.bins-7.json
    OUT_DIR/targets/<dir>/<HASH>.<basename>   one copy per hash algorithm listed
                                              (sha256 and sha512)

With --no-consistent-snapshot metadata other than root/timestamp is written as
<role>.json and targets under their plain path.

Roles and keys:
    root       2 x ed25519, threshold 2
    timestamp  ed25519
    snapshot   ed25519
    targets    ecdsa P-256 ("ecdsa-sha2-nistp256")
      -> vendor  (paths apps/vendor/*, apps/vendor/*/*/*; terminating=false)
                 RSA 2048 ("rsassa-pss-sha256")
      -> bins    (paths bins/*; terminating=true) ed25519
           -> succinct hash bins bins-0 .. bins-7 (bit_length 3), one shared
              ed25519 key, threshold 1

Everything but the key material (and the ECDSA / RSA-PSS signatures, which
are randomised by construction) is deterministic. --keys-dir makes the keys
reproducible: each key is loaded from DIR/<name>.pem (PKCS#8 PEM) if present,
otherwise generated and saved there.

Prints a one-line JSON summary on stdout:
    {"targets": [...], "root": "metadata/1.root.json", ...}
plus extra keys (consistent_snapshot, target_roles, target_hashes,
target_lengths, keys{name: keyid/keytype/scheme}, metadata_files,
target_files) that tests may use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
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
from tuf.api.serialization.json import JSONSerializer

EXPIRES = datetime(2100, 1, 1, 0, 0, 0, tzinfo=timezone.utc)
HASH_ALGORITHMS = ["sha256", "sha512"]
BIN_BIT_LENGTH = 3
BIN_PREFIX = "bins"
N_BIN_FILES = 16

TOP_TARGET = "top.txt"
VENDOR_TARGET = "apps/vendor/app/1.0/app.bin"
# NOTE: per the TUF spec (PATHPATTERN) and python-tuf, a wildcard never
# matches "/": patterns are matched segment by segment and must have the same
# number of segments as the target path. "apps/vendor/*" alone would NOT cover
# VENDOR_TARGET (5 segments), hence the second pattern.
VENDOR_PATHS = ["apps/vendor/*", "apps/vendor/*/*/*"]
BINS_PATHS = ["bins/*"]

# name -> (kind, scheme)
KEY_SPECS = {
    "root-1": ("ed25519", "ed25519"),
    "root-2": ("ed25519", "ed25519"),
    "timestamp": ("ed25519", "ed25519"),
    "snapshot": ("ed25519", "ed25519"),
    "targets": ("ecdsa-p256", "ecdsa-sha2-nistp256"),
    "vendor": ("rsa-2048", "rsassa-pss-sha256"),
    "bins": ("ed25519", "ed25519"),
    "bin-n": ("ed25519", "ed25519"),
}


def content_of(path: str) -> bytes:
    return f"content of {path}\n".encode()


def _check_private_key(name: str, kind: str, key) -> None:
    ok = {
        "ed25519": lambda k: isinstance(k, ed25519.Ed25519PrivateKey),
        "ecdsa-p256": lambda k: isinstance(k, ec.EllipticCurvePrivateKey)
        and isinstance(k.curve, ec.SECP256R1),
        "rsa-2048": lambda k: isinstance(k, rsa.RSAPrivateKey),
    }[kind](key)
    if not ok:
        raise SystemExit(f"make_repo: key file for '{name}' is not a {kind} key")


def _generate(kind: str):
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


def make_signers(keys_dir: Path | None) -> dict[str, CryptoSigner]:
    signers: dict[str, CryptoSigner] = {}
    if keys_dir is not None:
        keys_dir.mkdir(parents=True, exist_ok=True)
    for name, (kind, scheme) in KEY_SPECS.items():
        priv = None
        pem_path = keys_dir / f"{name}.pem" if keys_dir is not None else None
        if pem_path is not None and pem_path.exists():
            priv = load_pem_private_key(pem_path.read_bytes(), password=None)
            _check_private_key(name, kind, priv)
        if priv is None:
            priv = _generate(kind)
        # Default keyid: sha256 over canonical JSON of
        # {"keytype", "scheme", "keyval"} (securesystemslib computes it).
        pub = SSlibKey.from_crypto(priv.public_key(), scheme=scheme)
        signer = CryptoSigner(priv, pub)
        if pem_path is not None and not pem_path.exists():
            fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(signer.private_bytes)
        signers[name] = signer
    return signers


class Writer:
    """Serialises + writes metadata, remembering the exact bytes written."""

    def __init__(self, meta_dir: Path, consistent: bool):
        self.meta_dir = meta_dir
        self.consistent = consistent
        self.serializer = JSONSerializer(compact=False)  # python-tuf's default
        self.files: list[str] = []

    def write(self, md: Metadata, filename: str) -> bytes:
        data = md.to_bytes(self.serializer)
        (self.meta_dir / filename).write_bytes(data)
        self.files.append(f"metadata/{filename}")
        return data

    def role_filename(self, role: str, version: int) -> str:
        return f"{version}.{role}.json" if self.consistent else f"{role}.json"


def build(out_dir: Path, consistent: bool, keys_dir: Path | None) -> dict:
    meta_dir = out_dir / "metadata"
    targets_dir = out_dir / "targets"
    meta_dir.mkdir(parents=True, exist_ok=True)
    targets_dir.mkdir(parents=True, exist_ok=True)

    signers = make_signers(keys_dir)
    pub = {name: s.public_key for name, s in signers.items()}

    # ---------------------------------------------------------------- targets
    target_roles: dict[str, str] = {}  # target path -> role that lists it
    target_files: dict[str, TargetFile] = {}

    def add_target(role_md: Metadata[Targets], role: str, path: str) -> TargetFile:
        tf = TargetFile.from_data(path, content_of(path), HASH_ALGORITHMS)
        role_md.signed.targets[path] = tf
        target_roles[path] = role
        target_files[path] = tf
        return tf

    # succinct hash bins
    succinct = SuccinctRoles(
        keyids=[pub["bin-n"].keyid],
        threshold=1,
        bit_length=BIN_BIT_LENGTH,
        name_prefix=BIN_PREFIX,
    )
    bin_mds: dict[str, Metadata[Targets]] = {
        name: Metadata(Targets(expires=EXPIRES)) for name in succinct.get_roles()
    }
    for i in range(N_BIN_FILES):
        path = f"bins/file-{i:02d}.txt"
        bin_name = succinct.get_role_for_target(path)
        add_target(bin_mds[bin_name], bin_name, path)

    bins_md = Metadata(
        Targets(
            expires=EXPIRES,
            delegations=Delegations(
                keys={pub["bin-n"].keyid: pub["bin-n"]}, succinct_roles=succinct
            ),
        )
    )

    vendor_md = Metadata(Targets(expires=EXPIRES))
    add_target(vendor_md, "vendor", VENDOR_TARGET)

    targets_md = Metadata(
        Targets(
            expires=EXPIRES,
            delegations=Delegations(
                keys={
                    pub["vendor"].keyid: pub["vendor"],
                    pub["bins"].keyid: pub["bins"],
                },
                roles={
                    "vendor": DelegatedRole(
                        name="vendor",
                        keyids=[pub["vendor"].keyid],
                        threshold=1,
                        terminating=False,
                        paths=list(VENDOR_PATHS),
                    ),
                    "bins": DelegatedRole(
                        name="bins",
                        keyids=[pub["bins"].keyid],
                        threshold=1,
                        terminating=True,
                        paths=list(BINS_PATHS),
                    ),
                },
            ),
            # Not part of the TUF spec: python-tuf keeps it in
            # `unrecognized_fields` and it is covered by the signature, so a
            # reader must round-trip it to verify.
            unrecognized_fields={
                "x-petrel-extra": {
                    "note": "unrecognized field written by python-tuf",
                    "numbers": [1, 2, 3],
                    "nested": {"ok": True, "nothing": None},
                }
            },
        )
    )
    top = add_target(targets_md, "targets", TOP_TARGET)
    top.unrecognized_fields["custom"] = {
        "petrel-interop": {"channel": "stable", "build": 42, "tags": ["python-tuf", "ünïcode"]}
    }

    w = Writer(meta_dir, consistent)
    snapshot_meta: dict[str, MetaFile] = {}

    def sign_and_write(md: Metadata, role: str, signer_names: list[str]) -> bytes:
        for n in signer_names:
            md.sign(signers[n], append=True)
        data = w.write(md, w.role_filename(role, md.signed.version))
        snapshot_meta[f"{role}.json"] = MetaFile(version=md.signed.version)
        return data

    for name, md in bin_mds.items():
        sign_and_write(md, name, ["bin-n"])
    sign_and_write(bins_md, "bins", ["bins"])
    sign_and_write(vendor_md, "vendor", ["vendor"])
    sign_and_write(targets_md, "targets", ["targets"])

    # -------------------------------------------------------------- snapshot
    # python-tuf's default: version only (no length/hashes) for targets roles.
    snapshot_md = Metadata(Snapshot(expires=EXPIRES, meta=dict(sorted(snapshot_meta.items()))))
    snapshot_md.sign(signers["snapshot"])
    snap_bytes = w.write(snapshot_md, w.role_filename("snapshot", 1))

    # ------------------------------------------------------------- timestamp
    # Here length + hashes ARE given, computed over the exact bytes written.
    ts_md = Metadata(
        Timestamp(
            expires=EXPIRES,
            snapshot_meta=MetaFile.from_data(1, snap_bytes, ["sha256"]),
        )
    )
    ts_md.sign(signers["timestamp"])
    w.write(ts_md, "timestamp.json")

    # ------------------------------------------------------------------ root
    root = Root(expires=EXPIRES, consistent_snapshot=consistent)
    for role, names in {
        "root": ["root-1", "root-2"],
        "timestamp": ["timestamp"],
        "snapshot": ["snapshot"],
        "targets": ["targets"],
    }.items():
        for n in names:
            root.add_key(pub[n], role)
    root.roles["root"].threshold = 2
    root_md = Metadata(root)
    root_md.sign(signers["root-1"], append=True)
    root_md.sign(signers["root-2"], append=True)
    root_bytes = w.write(root_md, "1.root.json")
    (meta_dir / "root.json").write_bytes(root_bytes)
    w.files.append("metadata/root.json")

    # -------------------------------------------------------- target files
    target_file_paths: list[str] = []
    for path, tf in sorted(target_files.items()):
        data = content_of(path)
        if consistent:
            rel_paths = tf.get_prefixed_paths()  # "<dir>/<HASH>.<basename>"
        else:
            rel_paths = [path]
        for rel in rel_paths:
            dest = targets_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            target_file_paths.append(f"targets/{rel}")

    # Self-check: everything verifies with python-tuf's own API.
    _self_check(meta_dir, w, target_roles)

    return {
        "targets": sorted(target_files),
        "root": "metadata/1.root.json",
        "consistent_snapshot": consistent,
        "target_roles": dict(sorted(target_roles.items())),
        "target_hashes": {p: dict(tf.hashes) for p, tf in sorted(target_files.items())},
        "target_lengths": {p: tf.length for p, tf in sorted(target_files.items())},
        "keys": {
            name: {
                "keyid": s.public_key.keyid,
                "keytype": s.public_key.keytype,
                "scheme": s.public_key.scheme,
            }
            for name, s in signers.items()
        },
        "metadata_files": sorted(w.files),
        "target_files": sorted(target_file_paths),
    }


def _self_check(meta_dir: Path, w: Writer, target_roles: dict) -> None:
    def load(role: str) -> Metadata:
        return Metadata.from_file(str(meta_dir / w.role_filename(role, 1)))

    root = Metadata.from_file(str(meta_dir / "1.root.json"))
    root.verify_delegate("root", root)
    for role in ("snapshot", "targets"):
        root.verify_delegate(role, load(role))
    root.verify_delegate("timestamp", Metadata.from_file(str(meta_dir / "timestamp.json")))
    targets = load("targets")
    targets.verify_delegate("vendor", load("vendor"))
    bins = load("bins")
    targets.verify_delegate("bins", bins)
    for name in bins.signed.delegations.succinct_roles.get_roles():
        bins.verify_delegate(name, load(name))
    for path, role in target_roles.items():
        if path not in load(role).signed.targets:
            raise AssertionError(f"{path} missing from {role}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", metavar="OUT_DIR")
    cs = ap.add_mutually_exclusive_group()
    cs.add_argument("--consistent-snapshot", dest="consistent", action="store_true", default=True)
    cs.add_argument("--no-consistent-snapshot", dest="consistent", action="store_false")
    ap.add_argument("--keys-dir", type=Path, default=None,
                    help="load keys from DIR/<name>.pem, generating+saving missing ones")
    ap.add_argument("--force", action="store_true",
                    help="delete existing OUT_DIR/metadata and OUT_DIR/targets first")
    args = ap.parse_args(argv)

    out_dir = Path(args.out_dir)
    for sub in ("metadata", "targets"):
        d = out_dir / sub
        if d.exists() and any(d.iterdir()):
            if args.force:
                shutil.rmtree(d)
            else:
                print(f"make_repo: {d} exists and is not empty (use --force)", file=sys.stderr)
                return 2

    summary = build(out_dir, args.consistent, args.keys_dir)
    # One line of JSON, so callers can parse the last stdout line.
    sys.stdout.write(json.dumps(summary, sort_keys=True, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""python-tuf's ngclient as a client of a (Petrel-written) TUF repository.

    ngclient_fetch.py --metadata-url URL --targets-url URL
                      --trusted-root FILE --metadata-dir DIR --download-dir DIR
                      [--no-prefix-targets-with-hash] [--verbose]
                      TARGET_PATH [TARGET_PATH ...]

Steps:
  1. If METADATA_DIR has no root.json, copy --trusted-root there as root.json.
     (ngclient then turns root.json into a symlink to
     root_history/<N>.root.json and caches every metadata file it accepts.)
     python-tuf 7 requires the trust anchor as `bootstrap` bytes: the
     --trusted-root bytes are passed on every run, as an application passes
     the root it ships with; python-tuf 6 reads the cached root.json.
  2. Updater.refresh(): root rotation, timestamp, snapshot, top-level targets.
  3. get_targetinfo() for every TARGET_PATH (walks delegations, fetching
     delegated metadata on demand). A path no role lists -> exit 3.
  4. download_target() each one into DOWNLOAD_DIR/<TARGET_PATH> (target path
     sub-directories are preserved), which checks length and *all* hashes
     listed in the metadata; the file is then re-hashed here as well.
  5. Prints one JSON line per target on stdout, in argument order:
       {"path": ..., "length": ..., "sha256": ..., "hashes": {...}, "file": ...}
     "file" is the absolute path of the downloaded copy (the path mapping).

Exit status: 0 success; 1 any TUF / download / verification error (exception
type and text on stderr); 2 bad usage; 3 a target path is not in the repository.
Only stdout carries the JSON lines; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import Updater, UpdaterConfig

EXIT_TUF_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3


def _err(msg: str) -> None:
    print(f"ngclient_fetch: {msg}", file=sys.stderr)


def _local_path(download_dir: Path, target_path: str) -> Path:
    """DOWNLOAD_DIR/<target path>, refusing anything that could escape it."""
    parts = target_path.split("/")
    if (
        not target_path
        or target_path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in target_path
        or "\0" in target_path
    ):
        raise ValueError(f"refusing unsafe target path {target_path!r}")
    return download_dir.joinpath(*parts)


def _describe(e: BaseException) -> str:
    """Exception type + text, following the cause chain when the text is empty
    (e.g. ngclient raises a bare SlowRetrievalError on connection refused)."""
    text = f"{type(e).__name__}: {e}"
    cause = e.__cause__ or e.__context__
    if cause is not None and (not str(e) or isinstance(e, tuf_exceptions.DownloadError)):
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metadata-url", required=True)
    ap.add_argument("--targets-url", required=True)
    ap.add_argument("--trusted-root", required=True, type=Path)
    ap.add_argument("--metadata-dir", required=True, type=Path)
    ap.add_argument("--download-dir", required=True, type=Path)
    ap.add_argument(
        "--no-prefix-targets-with-hash",
        action="store_true",
        help="request targets by plain path even with consistent_snapshot "
        "(UpdaterConfig.prefix_targets_with_hash=False)",
    )
    ap.add_argument("--verbose", action="store_true", help="ngclient debug logging to stderr")
    ap.add_argument("target_paths", nargs="+", metavar="TARGET_PATH")
    args = ap.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="ngclient_fetch: %(name)s: %(levelname)s: %(message)s",
    )

    metadata_dir: Path = args.metadata_dir.resolve()
    download_dir: Path = args.download_dir.resolve()
    try:
        local_paths = [_local_path(download_dir, p) for p in args.target_paths]
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE

    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        download_dir.mkdir(parents=True, exist_ok=True)
        root_json = metadata_dir / "root.json"
        if not os.path.lexists(root_json):
            shutil.copyfile(args.trusted_root, root_json)
    except OSError as e:
        _err(f"cannot prepare directories / trusted root: {e}")
        return EXIT_TUF_ERROR

    anchor = {}
    if "bootstrap" in inspect.signature(Updater.__init__).parameters:
        anchor["bootstrap"] = args.trusted_root.read_bytes()

    try:
        updater = Updater(
            **anchor,
            metadata_dir=str(metadata_dir),
            metadata_base_url=args.metadata_url,
            target_dir=str(download_dir),
            target_base_url=args.targets_url,
            config=UpdaterConfig(
                prefix_targets_with_hash=not args.no_prefix_targets_with_hash
            ),
        )
        updater.refresh()

        infos = []
        for path in args.target_paths:
            info = updater.get_targetinfo(path)
            if info is None:
                _err(f"target not found in repository: {path!r}")
                return EXIT_NOT_FOUND
            infos.append(info)

        for info, local in zip(infos, local_paths):
            written = Path(updater.download_target(info, filepath=str(local)))
            # ngclient already verified length + every listed hash; check the
            # bytes on disk again independently.
            with open(written, "rb") as f:
                info.verify_length_and_hashes(f)
            sha256 = _sha256_file(written)
            if "sha256" in info.hashes and info.hashes["sha256"] != sha256:
                raise tuf_exceptions.LengthOrHashMismatchError(
                    f"{info.path}: sha256 on disk {sha256} != metadata {info.hashes['sha256']}"
                )
            print(
                json.dumps(
                    {
                        "path": info.path,
                        "length": info.length,
                        "sha256": sha256,
                        "hashes": dict(info.hashes),
                        "file": str(written),
                    },
                    sort_keys=True,
                ),
                flush=True,
            )
    except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError) as e:
        _err(f"TUF error: {_describe(e)}")
        return EXIT_TUF_ERROR
    except Exception as e:  # noqa: BLE001 - any other failure is still a failure
        _err(f"error: {_describe(e)}")
        return EXIT_TUF_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

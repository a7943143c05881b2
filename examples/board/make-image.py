#!/usr/bin/env python3
"""Makes a simulated root file system image for the demo board (docs/images.md, "A simulator").

Usage: make-image.py VERSION KIND SIZE_KIB OUT

The first line is the header the board reads at boot and in its health check,
`PETREL-SIM-IMAGE version=VERSION kind=KIND` (KIND: good, unhealthy), then SIZE_KIB KiB in
all. The rest is deterministic, derived from VERSION only, so the same arguments give the
same bytes on every machine: 4 KiB blocks of pseudo-random data with every other block
zero, like a file system with free space (it compresses to about half).
"""
import hashlib
import sys


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    version, kind, size_kib, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if kind not in ("good", "unhealthy"):
        print(f"make-image.py: unknown kind {kind!r} (good, unhealthy)", file=sys.stderr)
        return 2
    size = size_kib * 1024
    header = f"PETREL-SIM-IMAGE version={version} kind={kind}\n".encode()
    block = 4096
    # One stream of pseudo-random bytes for the used blocks, seeded by the version.
    data = hashlib.shake_256(b"petrel-sim-image " + version.encode()).digest(size // 2 + block)
    zero = bytes(block)
    parts = [header]
    n, used = len(header), 0
    i = 0
    while n < size:
        if i % 2 == 0:
            chunk = data[used:used + block]
            used += block
        else:
            chunk = zero
        chunk = chunk[: size - n]
        parts.append(chunk)
        n += len(chunk)
        i += 1
    with open(out, "wb") as f:
        f.write(b"".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Makes a deterministic firmware-like pair for the delta benchmark.

    gen_pair.py OUT_DIR [SIZE_MIB]

OUT_DIR/old.bin: SIZE_MIB (default 8) MiB of code-like data (records of random words and
little-endian integers, some runs of zeros, as in a firmware image). OUT_DIR/new.bin: the
same with the changes a minor release makes: 2 000 scattered 4-byte edits (addresses
moved), a 64 KiB block of new records inserted at 40 %, a 32 KiB block deleted at 70 %,
and 256 KiB of new records appended.
"""
import os
import random
import struct
import sys

out = sys.argv[1]
size = int(sys.argv[2]) * 1024 * 1024 if len(sys.argv) > 2 else 8 * 1024 * 1024
rng = random.Random(20261122)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 12))) for _ in range(4000)]


def code_like(n):
    """n bytes of firmware-like records (strings, little-endian words, zero runs)."""
    buf = bytearray()
    while len(buf) < n:
        kind = rng.random()
        if kind < 0.5:
            buf += b" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) + b"\0"
        elif kind < 0.95:
            buf += b"".join(struct.pack("<I", rng.randint(0, 1 << 20) * 4) for _ in range(rng.randint(1, 16)))
        else:
            buf += bytes(rng.randint(16, 512))
    return bytes(buf[:n])


old = code_like(size)
new = bytearray(old)
for _ in range(2000):
    i = rng.randrange(0, len(new) - 4) & ~3
    new[i:i + 4] = struct.pack("<I", rng.randint(0, 1 << 20) * 4)
at = int(len(new) * 0.4)
new[at:at] = code_like(64 * 1024)
at = int(len(new) * 0.7)
del new[at:at + 32 * 1024]
new += code_like(256 * 1024)
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "old.bin"), "wb") as f:
    f.write(old)
with open(os.path.join(out, "new.bin"), "wb") as f:
    f.write(bytes(new))

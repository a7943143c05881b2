#!/usr/bin/env python3
"""Decompresses the kernel inside a bzImage (vmlinuz) to the raw ELF vmlinux.

    extract_vmlinux.py VMLINUZ OUT

Like the kernel's scripts/extract-vmlinux: looks for the magic of each compressed format
the kernel supports (xz, zstd, gzip, bzip2, lzma, lz4), tries to decompress from every
place it occurs, and keeps the first result that is an ELF file. Writes OUT atomically and
prints the format and the offset on stderr.
"""
import bz2
import lzma
import os
import shutil
import subprocess
import sys
import zlib

src, out = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()


def xz(buf):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(buf)


def lzma_alone(buf):
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(buf)


def gzip(buf):
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(buf)


def bzip2(buf):
    return bz2.BZ2Decompressor().decompress(buf)


def external(tool, *args):
    def run(buf):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
        # The payload is followed by other data: the tool reports an error after writing
        # the decompressed stream, which is all that is needed.
        p = subprocess.run([tool, *args], input=buf, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return p.stdout
    return run


formats = [
    ("xz", b"\xfd7zXZ\x00", xz),
    ("zstd", b"\x28\xb5\x2f\xfd", external("zstd", "-d", "-c", "-q")),
    ("gzip", b"\x1f\x8b\x08", gzip),
    ("bzip2", b"BZh", bzip2),
    ("lzma", b"\x5d\x00\x00\x00", lzma_alone),
    ("lz4", b"\x02\x21\x4c\x18", external("lz4", "-d", "-c", "-q")),
]

for name, magic, decompress in formats:
    at = data.find(magic)
    tries = 0
    while at >= 0 and tries < 64:
        tries += 1
        try:
            raw = decompress(data[at:])
        except Exception:  # not a stream here: try the next occurrence
            raw = b""
        if raw[:4] == b"\x7fELF":
            tmp = out + ".tmp"
            with open(tmp, "wb") as f:
                f.write(raw)
            os.replace(tmp, out)
            print(f"{src}: {name} payload at offset {at}, {len(raw)} bytes of ELF", file=sys.stderr)
            sys.exit(0)
        at = data.find(magic, at + 1)
sys.exit(f"{src}: no compressed ELF kernel found")

#!/usr/bin/env python3
"""Deterministic benchmark input: N small files with distinct content.

    gen_input.py N DIR

Writes DIR/000000.dat ... as files of 100-300 bytes; file i holds its index and
bytes derived from SHA-256(i), so every file differs and every run makes the same bytes.
Writes into DIR.tmp and renames, so an interrupted run leaves no half-made DIR.
"""
import hashlib
import os
import shutil
import sys


def content(i):
    size = 100 + (i * 7919) % 201
    head = f"petrel bench target {i}\n".encode()
    block = hashlib.sha256(str(i).encode()).hexdigest().encode()
    body = (block * (size // len(block) + 1))[: size - len(head)]
    return head + body


def main():
    n, out = int(sys.argv[1]), sys.argv[2]
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    width = max(6, len(str(n)))
    for i in range(n):
        with open(os.path.join(tmp, f"{i:0{width}d}.dat"), "wb") as f:
            f.write(content(i))
    os.rename(tmp, out)


if __name__ == "__main__":
    main()

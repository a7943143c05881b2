#!/usr/bin/env python3
"""Writes version VERSION of the demo kiosk's web application, a directory tree, to DIR.

1.1 changes the renderer library (renamed libweb.so.1.0 -> libweb.so.1.1; the link
follows), edits the stylesheet, adds a page and drops one; the fonts are the same.
Deterministic: the same version gives the same bytes.
usage: make-web.py VERSION DIR
"""
import os
import random
import sys

version, out = sys.argv[1], sys.argv[2]
rng = random.Random(7)
lib = bytearray(rng.randbytes(600_000))
fonts = rng.randbytes(400_000)
style = ("body { font-family: Sans; }\n" * 2000).encode()
if version == "1.1":
    lib[100_000:100_200] = random.Random(11).randbytes(200)
    lib[400_000:400_000] = random.Random(12).randbytes(1_000)
    style = style.replace(b"Sans", b"Serif", 10)

def put(rel, data, mode=0o644):
    p = os.path.join(out, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)

so = f"libweb.so.{version}"
put(f"lib/{so}", bytes(lib), 0o755)
os.symlink(so, os.path.join(out, "lib/libweb.so.1"))
put("share/fonts/kiosk.ttf", fonts)
put("www/style.css", style)
put("www/index.html", f"<h1>Kiosk {version}</h1>\n".encode())
put("bin/kiosk-web", b"#!/bin/sh\nexec echo kiosk web\n", 0o755)
if version == "1.0":
    put("www/old.html", b"<p>retired page</p>\n")
else:
    put("www/news.html", b"<p>what is new in 1.1</p>\n")

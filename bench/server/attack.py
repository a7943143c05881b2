#!/usr/bin/env python3
"""bench/server/attack.py — hostile connections against an HTTP server, and a normal
client measuring its answers meanwhile. Used by bench/server/run.sh ("attack").

Two modes, run as separate processes so the normal client's timings do not depend on
the attacker's event loop:

  attack.py attack URL BIG_PATH --seconds S [--slowloris N] [--slow-readers N]
                                [--reconnecters N] [--sources K]
      opens the hostile connections from 127.0.0.2 .. 127.0.0.(K+1) for S seconds:
      * slowloris: sends a request head one header line every 300 ms, reconnects when
        closed;
      * slow readers: ask for BIG_PATH with a 4 KiB receive buffer and read 256 bytes
        every 100 ms, reconnect when closed;
      * reconnecters: connect, send half a request line, hang up after 30 ms, again.
      Prints one JSON line at the end: connections opened per kind, and the most open
      at once.

  attack.py probe URL PATH --seconds S [--interval-ms MS]
      one GET of PATH per fresh connection from 127.0.0.1 every MS ms (default 20) for S
      seconds, each with a 2 s limit; prints one JSON line: count, failures, p50, p99,
      max (milliseconds; a failure counts as 2000 ms in the percentiles).

Every loop is bounded by the deadline of its mode. Standard library only.
"""

import argparse
import asyncio
import json
import socket
import sys
import time
import urllib.parse

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the source port at connect (fewer clashes)


def parse_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port or 80


async def connect_from(src, host, port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    except OSError:
        pass
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    # Close with a reset: the attacker leaves no TIME_WAIT behind.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.setblocking(False)
    try:
        s.bind((src, 0))
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (host, port)), 2)
    except (OSError, asyncio.TimeoutError):
        s.close()
        return None
    return s


class Stats:
    def __init__(self):
        self.opened = {"slowloris": 0, "slow_reader": 0, "reconnecter": 0}
        self.open_now = 0
        self.open_max = 0

    def up(self, kind):
        self.opened[kind] += 1
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)

    def down(self):
        self.open_now -= 1


async def slowloris(src, host, port, until, st):
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        s = await connect_from(src, host, port)
        if s is None:
            await asyncio.sleep(0.05)
            continue
        st.up("slowloris")
        try:
            await loop.sock_sendall(s, b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() < until:
                await asyncio.sleep(0.3)
                await loop.sock_sendall(s, b"X-Slow: 1\r\n")
        except OSError:
            pass
        finally:
            s.close()
            st.down()
        await asyncio.sleep(0.02)


async def slow_reader(src, host, port, path, until, st):
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        s = await connect_from(src, host, port, rcvbuf=4096)
        if s is None:
            await asyncio.sleep(0.05)
            continue
        st.up("slow_reader")
        try:
            await loop.sock_sendall(s, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while time.monotonic() < until:
                left = max(0.01, until - time.monotonic())
                data = await asyncio.wait_for(loop.sock_recv(s, 256), left)
                if not data:
                    break
                await asyncio.sleep(0.1)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            s.close()
            st.down()
        await asyncio.sleep(0.02)


async def reconnecter(src, host, port, until, st):
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        s = await connect_from(src, host, port)
        if s is not None:
            st.up("reconnecter")
            try:
                await loop.sock_sendall(s, b"GET /meta")
                await asyncio.sleep(0.03)
            except OSError:
                pass
            finally:
                s.close()
                st.down()
        await asyncio.sleep(0.1)


async def attack(args):
    host, port = parse_url(args.url)
    until = time.monotonic() + args.seconds
    st = Stats()
    srcs = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    tasks = []
    n = 0
    for kind, count in (("slowloris", args.slowloris), ("slow_reader", args.slow_readers),
                        ("reconnecter", args.reconnecters)):
        for _ in range(count):
            src = srcs[n % len(srcs)]
            n += 1
            if kind == "slowloris":
                tasks.append(slowloris(src, host, port, until, st))
            elif kind == "slow_reader":
                tasks.append(slow_reader(src, host, port, args.big_path, until, st))
            else:
                tasks.append(reconnecter(src, host, port, until, st))
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), args.seconds + 15)
    except asyncio.TimeoutError:
        pass
    print(json.dumps({"opened": st.opened, "open_max": st.open_max}), flush=True)


def probe(args):
    host, port = parse_url(args.url)
    req = (f"GET {args.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
           "Connection: close\r\n\r\n").encode()
    until = time.monotonic() + args.seconds
    lat, failures, errors = [], 0, {}
    while time.monotonic() < until:
        t0 = time.monotonic()
        why = None
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                connected = time.monotonic() - t0
                s.settimeout(max(0.01, 2 - connected))
                s.sendall(req)
                buf = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if time.monotonic() - t0 > 2 or len(buf) > 1 << 20:
                        break
                if not buf:
                    why = "closed without an answer"
                elif not buf.startswith(b"HTTP/1.1 200"):
                    why = "not 200: " + buf.split(b"\r\n", 1)[0].decode(errors="replace")
        except socket.timeout:
            why = "timed out (connected)" if "connected" in locals() else "connect timed out"
        except OSError as e:
            why = type(e).__name__
        dt = time.monotonic() - t0
        if why is None and dt > 2:
            why = "slower than 2 s"
        if why is None:
            lat.append(dt * 1000)
        else:
            failures += 1
            errors[why] = errors.get(why, 0) + 1
            lat.append(2000.0)
        time.sleep(args.interval_ms / 1000)
    lat.sort()

    def pct(p):
        return lat[max(0, int(-(-len(lat) * p // 1)) - 1)] if lat else None

    print(json.dumps({"count": len(lat), "failures": failures, "p50_ms": pct(0.50),
                      "p99_ms": pct(0.99), "max_ms": lat[-1] if lat else None,
                      "errors": errors}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("attack")
    a.add_argument("url")
    a.add_argument("big_path")
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--slowloris", type=int, default=800)
    a.add_argument("--slow-readers", type=int, default=800)
    a.add_argument("--reconnecters", type=int, default=400)
    a.add_argument("--sources", type=int, default=8)
    p = sub.add_parser("probe")
    p.add_argument("url")
    p.add_argument("path")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--interval-ms", type=float, default=20)
    args = ap.parse_args()
    if args.mode == "attack":
        asyncio.run(attack(args))
    else:
        probe(args)


if __name__ == "__main__":
    sys.exit(main())

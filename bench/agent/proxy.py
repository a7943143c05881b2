#!/usr/bin/env python3
"""A tiny logging TCP proxy for the agent benchmark (bench/agent/run.sh).

    proxy.py --upstream 127.0.0.1:PORT --log FILE [--listen-port 0] [--port-file FILE]

Listens on 127.0.0.1 only, forwards every connection to the upstream unchanged and writes
one line per event to the log (times are time.time(), seconds):

    T open  CONN
    T c2s   CONN BYTES          bytes the client sent (request line, headers, body)
    T s2c   CONN BYTES          bytes the server sent back (status line, headers, body)
    T req   CONN METHOD PATH    one parsed HTTP/1.x request
    T resp  CONN STATUS BYTES   one parsed HTTP/1.x response and its size on the wire
    T close CONN

The byte counts are the application bytes of the TCP stream in each direction, counted
the same way for every tool (TCP/IP headers, handshakes and ACKs are not included). The
HTTP parsing is only used to count requests and to name them; it never changes a byte.
"""
import argparse
import asyncio
import os
import re
import sys
import time

REQ_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")
RESP_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")


class Http1Stream:
    """Incremental HTTP/1.x message framer for one direction of one connection."""

    def __init__(self, is_request, on_message, pending_methods=None):
        self.buf = b""
        self.is_request = is_request
        self.on_message = on_message
        self.pending = pending_methods  # methods of requests not yet answered (responses)
        self.state = "head"
        self.remaining = 0
        self.msg_bytes = 0
        self.meta = None
        self.broken = False

    def feed(self, data):
        if self.broken:
            return
        self.buf += data
        try:
            while self._step():
                pass
        except Exception:  # never let parsing break forwarding
            self.broken = True

    def eof(self):
        if self.state == "until_close" and self.meta is not None:
            self.msg_bytes += len(self.buf)
            self.on_message(self.meta, self.msg_bytes)

    def _finish(self):
        self.on_message(self.meta, self.msg_bytes)
        self.state, self.meta, self.msg_bytes = "head", None, 0

    def _step(self):
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self.buf = self.buf[: end + 4], self.buf[end + 4:]
            self.msg_bytes = len(head)
            lines = head[:-4].split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
            chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
            length = headers.get(b"content-length")
            if self.is_request:
                m = REQ_LINE.match(lines[0])
                if not m:
                    self.broken = True
                    return False
                method = m.group(1).decode()
                self.meta = (method, m.group(2).decode("latin-1"))
                if self.pending is not None:
                    self.pending.append(method)
                no_body_default = True
            else:
                m = RESP_LINE.match(lines[0])
                if not m:
                    self.broken = True
                    return False
                status = int(m.group(1))
                if 100 <= status < 200:  # interim response: not the answer
                    self.meta = (status,)
                    self.on_interim(self.msg_bytes)
                    self.state, self.meta, self.msg_bytes = "head", None, 0
                    return True
                method = self.pending.pop(0) if self.pending else "GET"
                self.meta = (status,)
                if method == "HEAD" or status in (204, 304):
                    self._finish()
                    return True
                no_body_default = False
            if chunked:
                self.state = "chunk_size"
            elif length is not None:
                self.remaining = int(length)
                self.state = "body"
            elif no_body_default:
                self._finish()
                return True
            else:
                self.state = "until_close"
            return True
        if self.state == "body":
            take = min(self.remaining, len(self.buf))
            self.buf = self.buf[take:]
            self.remaining -= take
            self.msg_bytes += take
            if self.remaining == 0:
                self._finish()
                return True
            return False
        if self.state == "chunk_size":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            line, self.buf = self.buf[:end], self.buf[end + 2:]
            self.msg_bytes += end + 2
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self.state = "trailers"
            else:
                self.remaining = size + 2  # data and its CRLF
                self.state = "chunk_data"
            return True
        if self.state == "chunk_data":
            take = min(self.remaining, len(self.buf))
            self.buf = self.buf[take:]
            self.remaining -= take
            self.msg_bytes += take
            if self.remaining == 0:
                self.state = "chunk_size"
                return True
            return False
        if self.state == "trailers":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            self.buf = self.buf[end + 2:]
            self.msg_bytes += end + 2
            if end == 0:
                self._finish()
            return True
        if self.state == "until_close":
            self.msg_bytes += len(self.buf)
            self.buf = b""
            return False
        return False

    def on_interim(self, nbytes):
        pass


class Proxy:
    def __init__(self, upstream, log):
        host, _, port = upstream.rpartition(":")
        self.up_host, self.up_port = host, int(port)
        self.log = log
        self.next_id = 0

    def write(self, *fields):
        self.log.write("%.6f %s\n" % (time.time(), " ".join(str(f) for f in fields)))
        self.log.flush()

    async def handle(self, creader, cwriter):
        self.next_id += 1
        cid = self.next_id
        self.write("open", cid)
        try:
            ureader, uwriter = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError as e:
            self.write("upstream_error", cid, type(e).__name__)
            cwriter.close()
            self.write("close", cid)
            return
        pending = []
        reqs = Http1Stream(True, lambda m, n: self.write("req", cid, m[0], m[1], n), pending)
        resps = Http1Stream(False, lambda m, n: self.write("resp", cid, m[0], n), pending)

        async def pump(reader, writer, tag, parser):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    self.write(tag, cid, len(data))
                    parser.feed(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                parser.eof()
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (OSError, RuntimeError):
                    pass

        await asyncio.gather(
            pump(creader, uwriter, "c2s", reqs), pump(ureader, cwriter, "s2c", resps)
        )
        for w in (uwriter, cwriter):
            try:
                w.close()
            except OSError:
                pass
        self.write("close", cid)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--max-seconds", type=float, default=7200.0,
                    help="stop by itself after this long (a bound, not a timing)")
    a = ap.parse_args()
    log = open(a.log, "a", buffering=1)
    proxy = Proxy(a.upstream, log)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", a.listen_port)
    port = server.sockets[0].getsockname()[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, a.port_file)
    print("listening on 127.0.0.1:%d" % port, flush=True)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), a.max_seconds)
        except asyncio.TimeoutError:
            print("proxy: --max-seconds reached, stopping", file=sys.stderr)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

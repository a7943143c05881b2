#!/usr/bin/env python3
"""Stub update servers for the agent benchmark (bench/agent/run.sh): nothing to update.

    stub_server.py --api mender|hawkbit --log FILE [--port-file FILE] [--poll-sleep SECONDS]

Listens on 127.0.0.1 only (a free port, written to --port-file), HTTP/1.1 with keep-alive,
and answers the least a device needs to keep polling with nothing to install:

mender (the device API of a Mender server, as mender-client 3.x uses it)
  POST  /api/devices/v1/authentication/auth_requests       200, a token (the device is accepted)
  POST  /api/devices/v2/deployments/device/deployments/next 204 No Content (no deployment)
  GET   /api/devices/v1/deployments/device/deployments/next 204 No Content
  PATCH|PUT /api/devices/v1/inventory/device/attributes    200
hawkbit (the Direct Device Integration API of an Eclipse hawkBit server)
  GET   /{tenant}/controller/v1/{id}   200 {"config":{"polling":{"sleep":"HH:MM:SS"}},"_links":{}}
  (no deploymentBase, configData or cancelAction link: nothing to do)

Anything else: 404. Responses carry only Content-Length (and Content-Type with a body), so
their headers are the smallest a real server would send.
"""
import argparse
import base64
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# A well-formed (unsigned) JWT: the client only stores it and sends it back.
TOKEN = ".".join([
    b64url(b'{"alg":"RS256","typ":"JWT"}'),
    b64url(json.dumps({"sub": "00000000-0000-0000-0000-000000000001",
                       "exp": 4102444800, "mender.device": True}).encode()),
    b64url(b"stub-signature"),
])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stub"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    def send_response(self, code, message=None):
        # Only the status line: no Server or Date header.
        self.log_request(code)
        self.send_response_only(code, message)

    def reply(self, code, body=b"", ctype=None):
        self.send_response(code)
        if body and ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.server.record(self.command, self.path, code)

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def route(self):
        body = self.read_body()
        if self.server.dump:
            self.server.record_body(self.command, self.path, self.headers, body)
        path = self.path.split("?", 1)[0]
        api = self.server.api
        if api == "mender":
            if self.command == "POST" and path == "/api/devices/v1/authentication/auth_requests":
                return self.reply(200, TOKEN.encode(), "application/jwt")
            if path.endswith("/deployments/device/deployments/next") and self.command in ("GET", "POST"):
                return self.reply(204)
            if path == "/api/devices/v1/inventory/device/attributes" and self.command in ("PATCH", "PUT"):
                return self.reply(200)
        elif api == "hawkbit":
            if self.command == "GET" and re.fullmatch(r"/[^/]+/controller/v1/[^/]+", path):
                doc = {"config": {"polling": {"sleep": self.server.sleep}}, "_links": {}}
                return self.reply(200, json.dumps(doc, separators=(",", ":")).encode(),
                                  "application/hal+json")
        del body
        return self.reply(404)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = route


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, api, log, sleep):
        super().__init__(addr, Handler)
        self.api, self.log, self.sleep = api, log, sleep
        self.dump = None
        self.lock = threading.Lock()

    def record_body(self, method, path, headers, body):
        with self.lock:
            self.dump.write("%s %s\n%s%s\n\n" % (method, path, headers, body.decode("utf-8", "replace")))
            self.dump.flush()

    def record(self, method, path, code):
        with self.lock:
            self.log.write("%.6f %s %s %d\n" % (time.time(), method, path, code))
            self.log.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", choices=["mender", "hawkbit"], required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port-file")
    ap.add_argument("--poll-sleep", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=7200.0)
    ap.add_argument("--dump", help="append every request's headers and body to this file")
    a = ap.parse_args()
    s = a.poll_sleep
    sleep = "%02d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60)
    srv = Server(("127.0.0.1", 0), a.api, open(a.log, "a", buffering=1), sleep)
    if a.dump:
        srv.dump = open(a.dump, "a")
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.replace(a.port_file + ".tmp", a.port_file)
    print("listening on http://127.0.0.1:%d" % port, flush=True)
    threading.Timer(a.max_seconds, srv.shutdown).start()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

"""A fault-injecting HTTP proxy in front of the test S3 server.

The client under test talks to the proxy (`AWS_ENDPOINT_URL=proxy.endpoint`); the proxy forwards
each request to SeaweedFS unless a rule says otherwise:
- `fail_every = n`: every n-th request gets `503 SlowDown` (the SDK retries it);
- `fail_paths`: a request whose path contains one of these strings always gets 503 (retries run
  out, so the caller sees an error);
- `stall_paths`: the request is held `stall_s` seconds and its connection dropped (a timeout;
  `stall_once`: only the first such request).
Rules change while it runs; `counts` records what happened. Test code only: the product talks
to S3 through pyarrow's AWS SDK client.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections import Counter

_SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


def _read_head(f) -> bytes | None:
    lines = []
    while True:
        line = f.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.encode():
            return v.strip().decode()
    return None


def _read_body(f, head: bytes, no_body: bool = False) -> bytes:
    if no_body:
        return b""
    if (_header(head, "transfer-encoding") or "").lower() == "chunked":
        out = []
        while True:
            size_line = f.readline()
            out.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the blank line
                    t = f.readline()
                    out.append(t)
                    if t in (b"\r\n", b"\n", b""):
                        return b"".join(out)
            out.append(f.read(size + 2))
    n = int(_header(head, "content-length") or 0)
    return f.read(n) if n else b""


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.fail_every = 0
        self.fail_paths: tuple[str, ...] = ()
        self.stall_paths: tuple[str, ...] = ()
        self.stall_s = 3.0
        self.stall_once = False  # stall only the first matching request (its retry goes through)
        self.counts: Counter[str] = Counter()
        self._n = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                proxy._serve(self.connection, self.rfile)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def heal(self) -> None:
        self.fail_every, self.fail_paths, self.stall_paths = 0, (), ()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            self._n += 1
            hit = [p for p in self.stall_paths if p in path]
            if hit:
                if self.stall_once:
                    self.stall_paths = tuple(p for p in self.stall_paths if p not in hit)
                return "stall"
            if any(p in path for p in self.fail_paths):
                return "fail"
            if self.fail_every and self._n % self.fail_every == 0:
                return "fail"
            return "pass"

    def _serve(self, client: socket.socket, rfile) -> None:
        up = socket.create_connection(self.upstream)
        upf = up.makefile("rb")
        try:
            while True:
                head = _read_head(rfile)
                if head is None:
                    return
                method, path = head.split(b" ", 2)[:2]
                method, path = method.decode(), path.decode()
                if (_header(head, "expect") or "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"\r\n".join(h for h in head.split(b"\r\n")
                                        if not h.lower().startswith(b"expect:"))
                body = _read_body(rfile, head)
                action = self._decide(method, path)
                self.counts[action] += 1
                if action == "stall":
                    time.sleep(self.stall_s)
                    return
                if action == "fail":
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(_SLOWDOWN) + _SLOWDOWN)
                    continue
                up.sendall(head + body)
                resp = _read_head(upf)
                if resp is None:
                    return
                status = int(resp.split(b" ", 2)[1])
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                client.sendall(resp + _read_body(upf, resp, no_body))
        except (OSError, ValueError):
            return
        finally:
            upf.close()
            up.close()

#!/usr/bin/env python3
"""Echo server for protocol-upgrade and raw-TCP tests, and its client.

serve: on every --port, every connection is either an HTTP/1.1 request with `Upgrade:` (answered
`101 Switching Protocols`, then every byte is echoed back, as a WebSocket server would after
its handshake) or raw bytes (echoed from the first byte: a non-HTTP protocol).

    python3 upgrade_echo.py serve --port 7070 --port 7071
    python3 upgrade_echo.py upgrade --target 10.96.0.40:7070 --data ping   # prints the echo
    python3 upgrade_echo.py raw --target 10.96.0.40:7071 --data ping
"""

import argparse
import socket
import socketserver
import sys
import threading


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        first = s.recv(65536)
        if first.startswith(b"GET ") and b"\r\n\r\n" in first:
            head, _, rest = first.partition(b"\r\n\r\n")
            proto = b"echo"
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"upgrade":
                    proto = v.strip()
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto + b"\r\n\r\n")
            if rest:
                s.sendall(rest)
        else:
            s.sendall(first)
        while True:
            data = s.recv(65536)
            if not data:
                return
            s.sendall(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def recv_exactly(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "upgrade", "raw"])
    ap.add_argument("--port", type=int, action="append")
    ap.add_argument("--target", default="")
    ap.add_argument("--data", default="ping")
    a = ap.parse_args()
    if a.mode == "serve":
        servers = [Server(("0.0.0.0", p), Handler) for p in (a.port or [7070])]
        for srv in servers[1:]:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[0].serve_forever()
        return 0
    host, port = a.target.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    if a.mode == "upgrade":
        s.sendall(f"GET /chat HTTP/1.1\r\nHost: {a.target}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            print(f"no upgrade: {status}")
            return 1
    s.sendall(a.data.encode())
    print(recv_exactly(s, len(a.data)).decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

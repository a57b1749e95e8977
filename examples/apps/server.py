#!/usr/bin/env python3
"""Demo app: a tiny HTTP server (stdlib only) that answers every GET with who answered (its pod
name and address) and who called (the source address of the connection it accepted).

Behind ztunnel the caller's address is the *client pod's* IP: ztunnel on the server's node
connects to the app from the source IP of the HBONE peer, as Istio's ztunnel does.

    python3 examples/apps/server.py --pod server --bind 127.0.1.2 --port 8080
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(pod):
    class Handler(BaseHTTPRequestHandler):
        server_version = "ambient-rs-demo/1"

        def do_GET(self):
            src_ip, src_port = self.client_address[:2]
            me_ip, me_port = self.server.server_address[:2]
            if self.path.startswith("/json"):
                body = json.dumps({"pod": pod, "pod_addr": f"{me_ip}:{me_port}", "caller": f"{src_ip}:{src_port}"}) + "\n"
                ctype = "application/json"
            else:
                body = f"hello from pod {pod} ({me_ip}:{me_port}); you called from {src_ip}:{src_port}\n"
                ctype = "text/plain; charset=utf-8"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            sys.stderr.write(f"[{pod}] {self.client_address[0]}:{self.client_address[1]} {fmt % args}\n")

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pod", default="server", help="pod name to report")
    p.add_argument("--bind", default="127.0.1.2", help="the pod IP to listen on")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args()
    httpd = ThreadingHTTPServer((args.bind, args.port), make_handler(args.pod))
    sys.stderr.write(f"[{args.pod}] listening on {args.bind}:{args.port}\n")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

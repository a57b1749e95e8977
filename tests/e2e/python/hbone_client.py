#!/usr/bin/env python3
"""An HBONE client built on an independent HTTP/2 implementation (python-hyper `h2` over the
stdlib `ssl`), to check that ztunnel's 15008 listener speaks HBONE as Istio defines it:

  TLS 1.3, ALPN h2, client certificate (SPIFFE), HTTP/2 CONNECT with :authority = <pod IP>:<port>
  and no :scheme/:path; 200 then a byte pipe; END_STREAM is a half-close.

Checks (each on its own stream of one connection, so they also exercise multiplexing):
  1. CONNECT to --authority answers 200; --payload bytes are echoed back by the app, and after
     our END_STREAM the server ends its side too.
  2. a non-CONNECT request (GET) answers 400.
  3. a CONNECT with a bogus :authority answers 400.
Prints one line per check and exits 0 only if all pass.
"""

import argparse
import os
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def tls_connect(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(certfile=args.chain, keyfile=args.key)
    ctx.load_verify_locations(cafile=args.root)
    # SPIFFE certificates carry a URI SAN, not a host name; we check the URI ourselves below.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((args.host, args.port), timeout=15, source_address=(args.source, 0))
    tls = ctx.wrap_socket(raw)
    if tls.selected_alpn_protocol() != "h2":
        raise SystemExit(f"server did not select ALPN h2 (got {tls.selected_alpn_protocol()!r})")
    if tls.version() != "TLSv1.3":
        raise SystemExit(f"negotiated {tls.version()}, expected TLSv1.3")
    if args.expect_identity:
        sans = [v for (k, v) in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
        if args.expect_identity not in sans:
            raise SystemExit(f"server identity {sans} does not include {args.expect_identity}")
    return tls


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.streams = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def state(self, sid):
        return self.streams.setdefault(sid, {"status": None, "data": bytearray(), "ended": False, "reset": None})

    def pump(self):
        """Reads once from the socket and records the events per stream."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        for ev in self.conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.ResponseReceived):
                self.state(sid)["status"] = dict(ev.headers).get(":status")
            elif isinstance(ev, h2.events.DataReceived):
                self.state(sid)["data"] += ev.data
                # Give the flow-control credit back, or a large echo would stall.
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                self.state(sid)["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self.state(sid)["reset"] = ev.error_code
                self.state(sid)["ended"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise ConnectionError(f"GOAWAY: {ev.error_code}")
        self.flush()

    def wait(self, sid, cond):
        while not cond(self.state(sid)):
            self.pump()
        return self.state(sid)

    def request(self, headers, end_stream=False):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.flush()
        return sid

    def send(self, sid, data):
        """Sends respecting the peer's flow-control window."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(sid, bytes(chunk))
            self.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True, help="destination pod IP (HBONE listener)")
    p.add_argument("--port", type=int, default=15008)
    p.add_argument("--source", required=True, help="our pod IP (source address to bind)")
    p.add_argument("--authority", required=True, help="CONNECT target, <pod IP>:<app port>")
    p.add_argument("--key", required=True)
    p.add_argument("--chain", required=True, help="leaf + intermediates PEM")
    p.add_argument("--root", required=True, help="trust anchor PEM")
    p.add_argument("--expect-identity", help="SPIFFE URI the server must present")
    p.add_argument("--payload", type=int, default=256 * 1024, help="bytes to send through the tunnel")
    args = p.parse_args()

    client = Client(tls_connect(args))
    failures = 0

    # 1. CONNECT, relay, half-close.
    sid = client.request([(":method", "CONNECT"), (":authority", args.authority)])
    st = client.wait(sid, lambda s: s["status"] is not None or s["ended"])
    if st["status"] != "200":
        print(f"FAIL connect: status {st['status']} reset {st['reset']}")
        failures += 1
    else:
        payload = os.urandom(args.payload)
        client.send(sid, payload)
        client.conn.end_stream(sid)
        client.flush()
        st = client.wait(sid, lambda s: s["ended"])
        if bytes(st["data"]) == payload:
            print(f"ok connect: 200, {len(payload)} bytes echoed, server ended its side after ours")
        else:
            print(f"FAIL connect: sent {len(payload)} bytes, got {len(st['data'])} back (reset {st['reset']})")
            failures += 1

    # 2. Not CONNECT.
    sid = client.request(
        [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", args.authority)], end_stream=True
    )
    st = client.wait(sid, lambda s: s["status"] is not None or s["ended"])
    if st["status"] == "400":
        print("ok get: 400")
    else:
        print(f"FAIL get: status {st['status']} reset {st['reset']}, expected 400")
        failures += 1

    # 3. Bogus authority.
    sid = client.request([(":method", "CONNECT"), (":authority", "not-an-address:80")])
    st = client.wait(sid, lambda s: s["status"] is not None or s["ended"])
    if st["status"] == "400":
        print("ok bogus authority: 400")
    else:
        print(f"FAIL bogus authority: status {st['status']} reset {st['reset']}, expected 400")
        failures += 1

    client.conn.close_connection()
    client.flush()
    client.sock.close()
    print(f"hbone checks: {3 - failures} ok, {failures} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

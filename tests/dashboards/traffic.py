"""Clients the dashboard test drives the mesh with (stdlib only):

- SOCKS5 from a pod IP through a ztunnel (the explicit-mode path of the local mesh),
- raw bytes for the malformed-input cases (bad SOCKS5, plaintext on HBONE 15008),
- a minimal gRPC client over cleartext HTTP/2 for istiod-lite's plaintext port: a CA call that
  must be refused, and a delta-xDS client that NACKs the first push (as an agent running a
  version that cannot read the config would), so the refusal and reject panels have data.

The HTTP/2 client writes HPACK literals without indexing and never decodes the server's
headers: the test checks outcomes through the metrics, which is what the dashboards show.
"""

import socket
import struct

# -- SOCKS5 --------------------------------------------------------------------------------------


def socks5_open(proxy, src_ip, host, port, timeout=10):
    """Opens a SOCKS5 CONNECT from `src_ip`; returns (socket, reply code). 0 = connected."""
    ph, pp = proxy.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((src_ip, 0))
    s.connect((ph, int(pp)))
    s.sendall(b"\x05\x01\x00")
    if _recv_exact(s, 2) != b"\x05\x00":
        raise OSError("SOCKS5 proxy refused the no-auth method")
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
    rep = _recv_exact(s, 10)
    return s, rep[1]


def socks5_request(proxy, src_ip, host, port, payload=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True):
    """One request/response through SOCKS5; returns the bytes received. Raises on failure.
    half_close=False keeps the write side open until the peer closes (an HTTP/1.1 request with
    `Connection: close` to a waypoint, which answers before closing)."""
    s, code = socks5_open(proxy, src_ip, host, port)
    with s:
        if code != 0:
            raise OSError(f"SOCKS5 CONNECT to {host}:{port} failed with reply {code}")
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def socks5_closed(proxy, src_ip, host, port):
    """A CONNECT that succeeds (a waypoint relaying TCP) to an upstream that then fails: sends a
    byte and reads until the proxy closes; returns what was received (b"" expected)."""
    s, code = socks5_open(proxy, src_ip, host, port)
    with s:
        if code != 0:
            raise OSError(f"SOCKS5 CONNECT to {host}:{port} failed with reply {code}")
        out = b""
        try:
            s.sendall(b"x")
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except OSError:  # reset by the proxy once the upstream failed
            pass
        return out


def socks5_refused(proxy, src_ip, host, port):
    """A CONNECT that the mesh must refuse; returns the non-zero reply code."""
    s, code = socks5_open(proxy, src_ip, host, port)
    s.close()
    if code == 0:
        raise OSError(f"SOCKS5 CONNECT to {host}:{port} unexpectedly succeeded")
    return code


def send_garbage(addr, data, src_ip=None):
    """Sends `data`, half-closes and waits for the peer to close (or 5 s)."""
    h, p = addr.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(5)
        if src_ip:
            s.bind((src_ip, 0))
        s.connect((h, int(p)))
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError:
            pass


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by the peer")
        buf += chunk
    return buf


# -- protobuf (just what the two requests need) -----------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def pb_int(field, n):
    return _varint(field << 3) + _varint(n)


def pb_struct(fields):
    """google.protobuf.Struct of string values."""
    entries = b""
    for k, v in fields.items():
        value = pb_bytes(3, v)  # Value.string_value
        entries += pb_bytes(1, pb_bytes(1, k) + pb_bytes(2, value))
    return entries


def pb_decode(data):
    """Top-level fields of a message: {field: [values]} (bytes for length-delimited)."""
    out, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(data, i)
        elif wt == 2:
            n, i = _read_varint(data, i)
            v, i = data[i : i + n], i + n
        elif wt == 1:
            v, i = data[i : i + 8], i + 8
        elif wt == 5:
            v, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.setdefault(field, []).append(v)
    return out


def _read_varint(data, i):
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


# -- HTTP/2 + gRPC ---------------------------------------------------------------------------

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def _hpack_int(n, prefix_bits=7):
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([n])
    out, n = bytearray([limit]), n - limit
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def _hpack(headers):
    out = b""
    for k, v in headers:
        k, v = k.encode(), v.encode()
        out += b"\x00" + _hpack_int(len(k)) + k + _hpack_int(len(v)) + v
    return out


class GrpcStream:
    """One gRPC call (stream 1) on a fresh cleartext HTTP/2 connection."""

    def __init__(self, addr, path, token=None, timeout=10):
        h, p = addr.rsplit(":", 1)
        self.s = socket.create_connection((h, int(p)), timeout=timeout)
        self.buf = b""
        self.closed = False
        self.s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self._frame(SETTINGS, 0, 0, b""))
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", addr),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        self.s.sendall(self._frame(HEADERS, END_HEADERS, 1, _hpack(headers)))

    @staticmethod
    def _frame(ftype, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload

    def send(self, message, end=False):
        body = b"\x00" + struct.pack(">I", len(message)) + message
        self.s.sendall(self._frame(DATA, END_STREAM if end else 0, 1, body))

    def recv_message(self):
        """The next gRPC message on stream 1, or None when the call ended."""
        while not self.closed:
            if len(self.buf) >= 5:
                n = struct.unpack(">I", self.buf[1:5])[0]
                if len(self.buf) >= 5 + n:
                    msg, self.buf = self.buf[5 : 5 + n], self.buf[5 + n :]
                    return msg
            self._read_frame()
        return None

    def wait_end(self):
        while not self.closed:
            self._read_frame()

    def _read_frame(self):
        head = _recv_exact(self.s, 9)
        length = struct.unpack(">I", b"\x00" + head[:3])[0]
        ftype, flags, stream = head[3], head[4], struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
        payload = _recv_exact(self.s, length) if length else b""
        if ftype == SETTINGS and not flags & ACK:
            self.s.sendall(self._frame(SETTINGS, ACK, 0, b""))
        elif ftype == PING and not flags & ACK:
            self.s.sendall(self._frame(PING, ACK, 0, payload))
        elif ftype == DATA and stream == 1:
            self.buf += payload
            if length:  # give the window back so long responses keep flowing
                inc = struct.pack(">I", length)
                self.s.sendall(self._frame(0x8, 0, 0, inc) + self._frame(0x8, 0, 1, inc))
            if flags & END_STREAM:
                self.closed = True
        elif ftype == HEADERS and stream == 1 and flags & END_STREAM:
            self.closed = True
        elif ftype in (RST_STREAM, GOAWAY):
            self.closed = True

    def close(self):
        self.s.close()


CA_PATH = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"


def ca_request(addr, token, csr):
    """One CreateCertificate call; returns when the server has answered (outcome not decoded)."""
    g = GrpcStream(addr, CA_PATH, token=token)
    try:
        g.send(pb_bytes(1, csr) + pb_int(3, 3600), end=True)
        g.wait_end()
    finally:
        g.close()


def xds_nack_once(addr, token, node):
    """Connects as an xDS client of `node`, subscribes to addresses and NACKs the first
    response. Returns the rejected response's nonce. Leaves the stream open: call close()."""
    g = GrpcStream(addr, ADS_PATH, token=token)
    node_msg = (
        pb_bytes(1, f"ztunnel~0.0.0.0~dashboard-test-{node}.istio-system~istio-system.svc.cluster.local")
        + pb_bytes(2, "Kubernetes")
        + pb_bytes(3, pb_struct({"NODE_NAME": node, "ISTIO_VERSION": "dashboard-test"}))
        + pb_bytes(5, "dashboard-test")
    )
    g.send(pb_bytes(1, node_msg) + pb_bytes(2, ADDRESS_TYPE_URL))
    msg = g.recv_message()
    if msg is None:
        g.close()
        raise OSError("istiod-lite closed the xDS stream before sending config")
    nonce = pb_decode(msg).get(5, [b""])[0].decode()
    status = pb_int(1, 3) + pb_bytes(2, "dashboard test: simulated rejection of the pushed config")
    g.send(pb_bytes(2, ADDRESS_TYPE_URL) + pb_bytes(6, nonce) + pb_bytes(7, status))
    return g, nonce

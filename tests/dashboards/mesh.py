"""The local mesh the dashboard test runs: istiod-lite, two ztunnels, the waypoint of namespace
demo-b, a server app, a listener outside the mesh and a real Prometheus, all on loopback, all stopped on exit.

Pod and service addresses follow the end-to-end tests (pods 127.0.1.x, VIPs 127.0.2.x, outside
the mesh 127.0.3.x); the components' own ports are free ports on 127.0.0.1x. Pod addresses are
fixed (each pod's HBONE listener is podIP:15008), so the test holds the same machine-wide lock as
tests/e2e (an abstract unix socket) while the mesh runs.
"""

import os
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.request

ISTIOD_IP = "127.0.0.10"
NODE_IPS = {"node1": "127.0.0.11", "node2": "127.0.0.12"}
CLIENT_IP = "127.0.1.1"  # pod demo-a/client on node1
SERVER_IP = "127.0.1.2"  # pod demo-b/server on node2
SERVER_VIP = "127.0.2.1"  # service demo-b/server, port 80 -> 8080
SERVER_PORT = 8080
WAYPOINT_IP = "127.0.1.30"  # pod demo-b/waypoint-0: the waypoint of namespace demo-b (no ztunnel node)
WAYPOINT_NS, WAYPOINT_NAME = "demo-b", "waypoint"
OUTSIDE_IP = "127.0.3.1"  # a TCP service outside the mesh (passthrough, plaintext)
HBONE_PORT = 15008

# Scrape path by Prometheus job (default /metrics): the waypoint's is Istio's /stats/prometheus.
METRICS_PATH = {"waypoint": "/stats/prometheus"}

LOCK_NAME = b"\0ambient-rs/mesh-e2e/loopback"

# The cluster, modelled on examples/local: namespaces demo-a and demo-b in ambient mode, pod
# demo-a/client on node1, pod demo-b/server on node2 behind service demo-b/server.
CONFIG = {
    "namespaces.yaml": """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo-a
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo-b
  labels:
    istio.io/dataplane-mode: ambient
""",
    "client.yaml": """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: client
  namespace: demo-a
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo-a
  labels:
    app: client
    version: v1
spec:
  nodeName: node1
  serviceAccountName: client
  containers:
  - name: client
    image: local/client
status:
  podIP: 127.0.1.1
  conditions:
  - type: Ready
    status: "True"
""",
    "server.yaml": """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: server
  namespace: demo-b
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: demo-b
  labels:
    app: server
    version: v1
spec:
  nodeName: node2
  serviceAccountName: server
  containers:
  - name: server
    image: local/server
    ports:
    - name: tcp
      containerPort: 8080
status:
  podIP: 127.0.1.2
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: demo-b
  labels:
    # HTTP on port 80 goes through the namespace's waypoint (L7 metrics, reporter="waypoint").
    istio.io/use-waypoint: waypoint
spec:
  selector:
    app: server
  clusterIP: 127.0.2.1
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
  # Misconfigured on purpose: nothing listens on 8081, so connections to port 81 (relayed as TCP
  # by the waypoint) fail at the endpoint (response flag CONNECT, reported by node2's ztunnel),
  # which gives the inbound failure panels data.
  - name: admin
    port: 81
    targetPort: 8081
    appProtocol: tcp
""",
    "waypoint.yaml": """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: demo-b
  labels:
    istio.io/waypoint-for: service
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: waypoint
  namespace: demo-b
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: demo-b
  labels:
    gateway.networking.k8s.io/gateway-name: waypoint
spec:
  # A node without a ztunnel: the waypoint terminates HBONE itself.
  nodeName: wpnode
  serviceAccountName: waypoint
  containers:
  - name: istio-proxy
    image: local/waypoint
status:
  podIP: 127.0.1.30
  conditions:
  - type: Ready
    status: "True"
---
# Every request to server:80 goes to the server, and a 503 is retried once (waypoint_retries_total,
# response flag URX when the retry gets a 503 too).
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: server
  namespace: demo-b
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: server
    port: 80
  rules:
  - backendRefs:
    - name: server
      port: 80
    retry:
      attempts: 2
      codes: [503]
      backoff: 1ms
""",
}


def extra_client(n):
    """Pod demo-a/client<n> on node1 at 127.0.1.<n+1> with its own service account: written while
    the mesh runs, it is a config change (push triggers, pushes) and a new identity on node1 (a
    certificate issued by istiod-lite and fetched by ztunnel). Returns (file name, YAML, pod IP)."""
    ip = f"127.0.1.{n + 1}"
    return f"client{n}.yaml", f"""\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: client{n}
  namespace: demo-a
---
apiVersion: v1
kind: Pod
metadata:
  name: client{n}
  namespace: demo-a
  labels:
    app: client{n}
spec:
  nodeName: node1
  serviceAccountName: client{n}
  containers:
  - name: client{n}
    image: local/client
status:
  podIP: {ip}
  conditions:
  - type: Ready
    status: "True"
""", ip


def invalid_object(n):
    """A Service istiod-lite must skip (clusterIP is not an IP): one istiod_config_errors_total."""
    return f"invalid-{n}.yaml", f"""\
apiVersion: v1
kind: Service
metadata:
  name: broken-{n}
  namespace: demo-b
spec:
  selector:
    app: server
  clusterIP: not-an-ip-{n}
  ports:
  - port: 80
    targetPort: 8080
"""


class TestError(Exception):
    """A failure with a message for the operator."""


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    """Returns (status, body) or raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def eventually(what, check, timeout=60.0, interval=0.1):
    """Polls `check()` until it returns a truthy value (returned) or raises TestError."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = check()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last = e
        if time.monotonic() > deadline:
            raise TestError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


class LoopbackLock:
    """The machine-wide lock tests/e2e holds while it uses the fixed pod addresses."""

    def __init__(self, timeout=1800):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        start, told = time.monotonic(), False
        while True:
            try:
                self.sock.bind(LOCK_NAME)
                self.sock.listen(1)
                return
            except OSError:
                if not told:
                    print("another mesh test holds the loopback pod addresses; waiting for it", flush=True)
                    told = True
                if time.monotonic() - start > timeout:
                    raise TestError("waited 30 minutes for the mesh-e2e loopback lock")
                time.sleep(0.2)

    def release(self):
        self.sock.close()


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, name, argv, env, log_path):
        self.name, self.log_path = name, log_path
        self.log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env)
        self.p = subprocess.Popen(argv, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()

    def tail(self, n=25):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


STATUS_TEXT = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error", 503: b"Service Unavailable"}


class _Handler(socketserver.BaseRequestHandler):
    """Reads one request (up to a blank line or EOF) and answers with a fixed-size body, status
    200, or the status a `/status/<code>` path names (404, 500, 503: the non-2xx responses the
    success-rate panels need). A client that never finishes its request, or a request for
    `/hold` (the app never answers it), holds the connection open (the open-connection panels)."""

    def handle(self):
        data = b""
        self.request.settimeout(600)
        try:
            while b"\r\n\r\n" not in data:
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            if path == b"/hold":
                while self.request.recv(65536):
                    pass
                return
            code = 200
            if path.startswith(b"/status/"):
                try:
                    code = int(path[len(b"/status/"):])
                except ValueError:
                    code = 400
            body = b"x" * 4096
            self.request.sendall(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (code, STATUS_TEXT.get(code, b"Status"), len(body), body))
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_app(ip, port):
    """A tiny HTTP-ish app on ip:port in a thread of this process."""
    srv = _Server((ip, port), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class Mesh:
    """Starts and stops everything; every address the test needs is an attribute."""

    def __init__(self, bin_dir, workdir, prometheus_bin):
        self.bin_dir, self.dir, self.prometheus_bin = bin_dir, workdir, prometheus_bin
        self.config_dir = os.path.join(workdir, "config")
        self.state_dir = os.path.join(workdir, "state")
        self.logs = os.path.join(workdir, "logs")
        for d in (self.config_dir, self.logs):
            os.makedirs(d, exist_ok=True)
        self.procs = {}
        self.servers = []
        self.istiod = {k: f"{ISTIOD_IP}:{free_port(ISTIOD_IP)}" for k in ("xds_plaintext", "xds_tls", "monitoring")}
        self.ztunnels = {}
        for node, ip in NODE_IPS.items():
            self.ztunnels[node] = {k: f"{ip}:{free_port(ip)}" for k in ("admin", "stats", "readiness", "socks5")}
        self.waypoint = {k: f"{WAYPOINT_IP}:{free_port(WAYPOINT_IP)}" for k in ("admin", "stats", "readiness")}
        self.outside_port = free_port(OUTSIDE_IP)
        self.prometheus_addr = f"{ISTIOD_IP}:{free_port(ISTIOD_IP)}"

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, name, argv, env):
        log = os.path.join(self.logs, f"{name}.log")
        self.procs[name] = Proc(name, argv, env, log)
        return self.procs[name]

    def _wait_ready(self, name, url):
        proc = self.procs[name]

        def ready():
            if not proc.alive():
                raise TestError(f"{name} exited while starting (log: {proc.log_path})")
            try:
                return http_get(url, timeout=1)[0] == 200
            except OSError:
                return False

        eventually(f"{name} to be ready ({url})", ready, timeout=60)

    def start_istiod(self):
        self._spawn(
            "istiod-lite",
            [os.path.join(self.bin_dir, "istiod-lite")],
            {
                "CONFIG_DIR": self.config_dir,
                "STATE_DIR": self.state_dir,
                "XDS_PLAINTEXT_ADDR": self.istiod["xds_plaintext"],
                "XDS_TLS_ADDR": self.istiod["xds_tls"],
                "MONITORING_ADDR": self.istiod["monitoring"],
                "PUSH_DEBOUNCE_MS": "50",
                "RUST_LOG": "info",
            },
        )
        self._wait_ready("istiod-lite", f"http://{self.istiod['monitoring']}/ready")

    def stop_istiod(self):
        self.procs.pop("istiod-lite").stop()

    def token_path(self, node):
        return os.path.join(self.dir, f"{node}.token")

    def start_ztunnel(self, node):
        token = subprocess.run(
            [os.path.join(self.bin_dir, "istiod-lite"), "node-token", "--state-dir", self.state_dir, "--node", node],
            check=True, capture_output=True, text=True,
        ).stdout
        with open(self.token_path(node), "w") as f:
            f.write(token)
        z = self.ztunnels[node]
        self._spawn(
            f"ztunnel-{node}",
            [os.path.join(self.bin_dir, "ztunnel")],
            {
                "NODE_NAME": node,
                # TLS to istiod-lite, trusting the root it wrote into its state dir (as in make demo).
                "XDS_ADDRESS": f"https://{self.istiod['xds_tls']}",
                "XDS_ROOT_CA": os.path.join(self.state_dir, "root-cert.pem"),
                "AUTH_TOKEN": self.token_path(node),
                "ADMIN_ADDR": z["admin"],
                "STATS_ADDR": z["stats"],
                "READINESS_ADDR": z["readiness"],
                "SOCKS5_ADDR": z["socks5"],
                "OUTBOUND_ADDR": "",
                "INBOUND_PLAINTEXT_ADDR": "",
                "RUST_LOG": "info",
            },
        )

    def wait_ztunnel(self, node):
        self._wait_ready(f"ztunnel-{node}", f"http://{self.ztunnels[node]['readiness']}/healthz/ready")

    def start_waypoint(self):
        """The waypoint of namespace demo-b (Gateway demo-b/waypoint) on its pod IP, as
        docs/waypoint.md runs one in local mode: plaintext xDS, a waypoint token."""
        token = subprocess.run(
            [os.path.join(self.bin_dir, "istiod-lite"), "waypoint-token", "--state-dir", self.state_dir,
             "--namespace", WAYPOINT_NS, "--gateway", WAYPOINT_NAME],
            check=True, capture_output=True, text=True,
        ).stdout
        path = os.path.join(self.dir, "waypoint.token")
        with open(path, "w") as f:
            f.write(token)
        w = self.waypoint
        self._spawn(
            "waypoint",
            [os.path.join(self.bin_dir, "waypoint")],
            {
                "XDS_ADDRESS": f"http://{self.istiod['xds_plaintext']}",
                "AUTH_TOKEN": path,
                "POD_NAMESPACE": WAYPOINT_NS,
                "GATEWAY_NAME": WAYPOINT_NAME,
                "POD_NAME": f"{WAYPOINT_NAME}-0",
                "INSTANCE_IP": WAYPOINT_IP,
                "LISTEN_ADDR": f"{WAYPOINT_IP}:{HBONE_PORT}",
                "STATS_ADDR": w["stats"],
                "READINESS_ADDR": w["readiness"],
                "ADMIN_ADDR": w["admin"],
                "RUST_LOG": "info",
            },
        )

    def stop_waypoint(self):
        self.procs.pop("waypoint").stop()

    def wait_waypoint(self):
        self._wait_ready("waypoint", f"http://{self.waypoint['readiness']}/healthz/ready")

    def start(self):
        for name, text in CONFIG.items():
            self.write_config(name, text)
        self.start_istiod()
        for node in self.ztunnels:
            self.start_ztunnel(node)
        self.start_waypoint()
        for node in self.ztunnels:
            self.wait_ztunnel(node)
        self.wait_waypoint()
        self.servers.append(start_app(SERVER_IP, SERVER_PORT))
        self.servers.append(start_app(OUTSIDE_IP, self.outside_port))

    def write_config(self, name, text):
        tmp = os.path.join(self.config_dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.config_dir, name))

    # -- Prometheus ----------------------------------------------------------------------------

    def scrape_targets(self):
        """(job, address) of every component's /metrics."""
        out = [("istiod-lite", self.istiod["monitoring"])]
        out += [("ztunnel", z["stats"]) for z in self.ztunnels.values()]
        # The waypoint serves the same page on /stats/prometheus (Istio's path) and /metrics.
        out.append(("waypoint", self.waypoint["stats"]))
        return out

    def start_prometheus(self):
        pdir = os.path.join(self.dir, "prometheus")
        os.makedirs(pdir, exist_ok=True)
        jobs = {}
        for job, addr in self.scrape_targets():
            jobs.setdefault(job, []).append(addr)
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 1s",
            "  evaluation_interval: 1s",
            "scrape_configs:",
        ]
        for job, addrs in jobs.items():
            lines += [
                f"- job_name: {job}",
                f"  metrics_path: {METRICS_PATH.get(job, '/metrics')}",
                "  static_configs:",
                "  - targets: [" + ", ".join(f"'{a}'" for a in addrs) + "]",
            ]
        cfg = os.path.join(pdir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._spawn(
            "prometheus",
            [
                self.prometheus_bin,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={os.path.join(pdir, 'data')}",
                f"--web.listen-address={self.prometheus_addr}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            {},
        )
        self._wait_ready("prometheus", f"http://{self.prometheus_addr}/-/ready")

    # -- teardown ------------------------------------------------------------------------------

    def stop(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for p in reversed(list(self.procs.values())):
            p.stop()
        self.procs.clear()

    def print_logs(self):
        for name, p in self.procs.items():
            print(f"----- last lines of {name} ({p.log_path}) -----")
            print(p.tail())

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)

#!/usr/bin/env python3
"""Proves the Grafana dashboards in deploy/grafana/ against a real Prometheus.

Starts istiod-lite, two ztunnels and the waypoint of namespace demo-b on loopback, a real
Prometheus scraping every component each second, drives traffic (HTTP through the waypoint
included) and failures through the mesh, then runs every panel query of every
dashboard (template variables resolved through their own queries, as Grafana would) against
Prometheus's HTTP API. A query fails the test if Prometheus rejects it, returns no series, or
names a metric that no component exports. Panels that need a component that does not exist yet
are skipped by the metrics they name (PENDING below, empty today) and reported.

    python3 tests/dashboards/run.py            # needs target/debug/{istiod-lite,ztunnel,waypoint}
    python3 tests/dashboards/run.py --keep     # keep the temp dir (logs, Prometheus data)
    python3 tests/dashboards/run.py --hold     # after the checks, keep everything running
    PROMETHEUS=/path/to/prometheus python3 tests/dashboards/run.py   # another binary

Exit status: 0 = passed (or skipped: Prometheus missing and CI is not "true"), 1 = failed.
"""

import argparse
import calendar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import mesh as M  # noqa: E402
import promql as P  # noqa: E402
import traffic as T  # noqa: E402

GRAFANA_DIR = os.path.join(ROOT, "deploy", "grafana")
DOCS = os.path.join(ROOT, "docs", "metrics.md")
DASHBOARDS = ["mesh.json", "service.json", "workload.json", "ztunnel.json", "waypoint.json", "control-plane.json"]

# Metrics of components that do not exist yet. A panel naming one of them is skipped (its query
# must still parse) until some component exports the metric; then it is checked like any other.
# Empty since the waypoint exports the L7 metrics (istio_requests_total, ...); e.g.
#   PENDING = {"component (issue N)": {"metric_name", ...}}
PENDING = {}
PENDING_MARKER = "[pending]"

# Variable values the scenario below gives data for, chosen when a variable's query offers them
# (as a user would pick them from the drop-down). Other variables take their first value, or All.
PREFERRED = {
    "namespace": "demo-b",
    "workload": "server",
    "service": "server.demo-b.svc.cluster.local",
}

SERVICE_HOST = "server.demo-b.svc.cluster.local"
# source of client->waypoint (node1), destination of waypoint->server (node2), source of
# server->outside (node2): the waypoint has no ztunnel, so client->server counts once per hop.
HELD_CONNECTIONS = 3
HTTP_CLOSE = "GET {} HTTP/1.1\r\nHost: server.demo-b.svc.cluster.local\r\nConnection: close\r\n\r\n"


def log(msg):
    print(msg, flush=True)


# -- static checks ---------------------------------------------------------------------------------


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def is_datasource_var(ref):
    return isinstance(ref, dict) and ref.get("uid") in ("${datasource}", "$datasource")


def static_checks(name, d):
    """Structure every dashboard must have; returns a list of problems."""
    bad = []
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        bad.append(f"schemaVersion {d.get('schemaVersion')!r} (want >= 36, e.g. 39)")
    for key in ("uid", "title"):
        if not d.get(key):
            bad.append(f"missing {key}")
    variables = d.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("name") == "datasource"]
    if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
        bad.append("no `datasource` template variable of type datasource / query prometheus")
    names = {v.get("name") for v in variables}
    for v in variables:
        if v.get("type") == "query" and not is_datasource_var(v.get("datasource")):
            bad.append(f"variable {v.get('name')}: datasource is not ${{datasource}}")
    ids = set()
    for p in walk(d.get("panels", [])):
        title = p.get("title", "?")
        if p.get("id") in ids:
            bad.append(f"panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        gp = p.get("gridPos", {})
        if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp["x"] + gp["w"] > 24:
            bad.append(f"panel {title!r}: bad gridPos {gp}")
        if p.get("type") == "row":
            continue
        if not is_datasource_var(p.get("datasource")):
            bad.append(f"panel {title!r}: datasource is not ${{datasource}}")
        if not p.get("targets"):
            bad.append(f"panel {title!r}: no targets")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            if not expr or not t.get("refId"):
                bad.append(f"panel {title!r}: target without expr/refId")
            if not is_datasource_var(t.get("datasource")):
                bad.append(f"panel {title!r} {t.get('refId')}: datasource is not ${{datasource}}")
            unknown = P.variables_in(expr) - names - set(P.BUILTINS)
            if unknown:
                bad.append(f"panel {title!r}: undefined variables {sorted(unknown)}")
            for r in P.range_durations(expr):
                if r != "$__rate_interval":
                    bad.append(f"panel {title!r}: range [{r}] (use [$__rate_interval])")
            pending = P.metric_names(expr) & set().union(set(), *PENDING.values())
            if pending and PENDING_MARKER not in title:
                bad.append(f"panel {title!r} uses {sorted(pending)} but its title lacks {PENDING_MARKER!r}")
    return bad


def undocumented(exported):
    """Exported metrics docs/metrics.md does not name (histograms by their base name)."""
    try:
        with open(DOCS, encoding="utf-8") as f:
            documented = set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", f.read()))
    except OSError:
        return sorted(exported)
    out = set()
    for n in exported:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n not in documented and base not in documented:
            out.add(base)
    return sorted(out)


def generator_in_sync():
    gen = os.path.join(GRAFANA_DIR, "generate.py")
    if not os.path.exists(gen):
        return None
    r = subprocess.run([sys.executable, gen, "--check"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip())


# -- the scenario ------------------------------------------------------------------------------------


class Scenario:
    """Drives the mesh so every panel has data, and waits (by polling) until Prometheus has it."""

    def __init__(self, mesh, prom):
        self.m, self.prom = mesh, prom
        self.z1, self.z2 = mesh.ztunnels["node1"], mesh.ztunnels["node2"]
        self.held = []

    def scrape(self, addr, path="/metrics"):
        return P.parse_exposition(M.http_get(f"http://{addr}{path}")[1])[0]

    def waypoint_requests(self, **labels):
        return P.total(self.scrape(self.m.waypoint["stats"], "/stats/prometheus"), "istio_requests_total", **labels)

    def http(self, src_ip, host, path):
        """One HTTP/1.1 request from pod `src_ip` through node1's ztunnel (SOCKS5) and the
        waypoint; returns the status code."""
        out = T.socks5_request(self.z1["socks5"], src_ip, host, 80, HTTP_CLOSE.format(path).encode(), half_close=False)
        head = out.split(b"\r\n", 1)[0].split(b" ")
        if len(head) < 2 or not head[0].startswith(b"HTTP/"):
            raise M.TestError(f"no HTTP response from {host}:80{path} through the waypoint: {out[:200]!r}")
        return int(head[1])

    def istiod_metric(self, name, **labels):
        return P.total(self.scrape(self.m.istiod["monitoring"]), name, **labels)

    def wait_scraped_after(self, what, job=None):
        """Waits until Prometheus has scraped every target (of `job`) after now, all up."""
        t0 = time.time()
        want = [a for j, a in self.m.scrape_targets() if job in (None, j)]

        def done():
            targets = [t for t in self.prom.targets() if job in (None, t["labels"].get("job"))]
            if len(targets) != len(want):
                return False
            for t in targets:
                if t["health"] != "up":
                    return False
                # lastScrape is RFC 3339 in UTC with nanoseconds; whole seconds are enough here.
                ts = calendar.timegm(time.strptime(t["lastScrape"][:19], "%Y-%m-%dT%H:%M:%S"))
                if ts < t0 + 1:
                    return False
            return True

        M.eventually(f"Prometheus to scrape every component after {what}", done, timeout=30, interval=0.2)

    def wait_prometheus_up(self):
        def up():
            targets = self.prom.targets()
            return len(targets) == len(self.m.scrape_targets()) and all(t["health"] == "up" for t in targets)

        M.eventually("all Prometheus targets to be up", up, timeout=30, interval=0.2)
        M.eventually("Prometheus to return istio_build", lambda: self.prom.query('istio_build{component="ztunnel"}'), timeout=30, interval=0.2)

    def control_plane_outage(self):
        """istiod-lite stops and comes back: each ztunnel counts the broken xDS stream and its
        failed reconnects (istio_xds_connection_terminations_total)."""
        log("control-plane outage: stopping istiod-lite")
        self.m.stop_istiod()

        def both_recorded():
            r = self.prom.query('sum by (instance) (istio_xds_connection_terminations_total{job="ztunnel"})')
            return r if len(r) == len(self.m.ztunnels) else None

        seen = M.eventually("Prometheus to record both ztunnels' xDS terminations", both_recorded, timeout=30, interval=0.2)
        base = {r["metric"]["instance"]: float(r["value"][1]) for r in seen}

        # rate() needs an increase after the first sample: wait for a later reconnect attempt.
        def counted_again():
            return all(P.total(self.scrape(z["stats"]), "istio_xds_connection_terminations_total") > base[z["stats"]] for z in self.m.ztunnels.values())

        M.eventually("another failed xDS reconnect on both ztunnels", counted_again, timeout=30, interval=0.2)
        self.wait_scraped_after("the reconnect attempts", job="ztunnel")
        log("control-plane outage: starting istiod-lite again (same state, same ports)")
        self.m.start_istiod()
        M.eventually("both ztunnels and the waypoint to reconnect to istiod-lite", lambda: self.istiod_metric("pilot_xds") >= 3, timeout=60, interval=0.2)
        for node in self.m.ztunnels:
            self.m.wait_ztunnel(node)
        self.m.wait_waypoint()

    def waypoint_outage(self):
        """The waypoint stops: connections to the service it serves fail at the client's ztunnel
        (reporter=source, CONNECT), twice with a scrape between so the rate is positive; then it
        comes back (same ports) and the scenario waits for its readiness."""
        log("waypoint outage: stopping the waypoint, connecting to the service it serves")
        self.m.stop_waypoint()

        def failed():
            return P.total(self.scrape(self.z1["stats"]), "istio_tcp_connections_failed_total", destination_service=SERVICE_HOST)

        for i in range(2):
            before = failed()
            T.socks5_refused(self.z1["socks5"], M.CLIENT_IP, SERVICE_HOST, 80)
            M.eventually("node1's ztunnel to count the failed connection", lambda: failed() > before, timeout=15)
            self.wait_scraped_after(f"failed connection {i + 1} to the waypoint", job="ztunnel")
        log("waypoint outage: starting the waypoint again")
        self.m.start_waypoint()
        self.m.wait_waypoint()

    def round(self, n):
        """One round of traffic and failures. Run twice: the first creates the series, the second
        increments them, so every rate() over the window is positive."""
        log(f"round {n}: config change (new pod demo-a/client{n + 1}, an invalid object)")
        errors_before = self.istiod_metric("istiod_config_errors_total")
        rejects_before = self.istiod_metric("pilot_total_xds_rejects")
        refused_before = self.istiod_metric("istiod_certificates_refused_total")
        fname, yaml, new_ip = M.extra_client(n + 1)
        self.m.write_config(fname, yaml)
        self.m.write_config(*M.invalid_object(n))
        M.eventually("istiod-lite to count the invalid object", lambda: self.istiod_metric("istiod_config_errors_total") > errors_before, timeout=30)

        # The new pod is usable once node1's ztunnel has it from xDS (until then SOCKS5 refuses
        # the unknown source, which counts no connection).
        def new_pod_works():
            try:
                return self.http(new_ip, SERVICE_HOST, "/") == 200
            except (OSError, ValueError, M.TestError):
                return None

        M.eventually(f"pod {new_ip} (client{n + 1}) to reach the server through the mesh", new_pod_works, timeout=30)

        log(f"round {n}: connections (HTTP through the waypoint by name and VIP, 404s and 500s; plaintext to outside the mesh)")
        requests_before = self.waypoint_requests()
        want = []
        for _ in range(5):
            want.append((self.http(M.CLIENT_IP, SERVICE_HOST, "/"), 200))
        for _ in range(2):
            want.append((self.http(M.CLIENT_IP, M.SERVER_VIP, "/"), 200))
        want.append((self.http(new_ip, SERVICE_HOST, "/"), 200))
        want.append((self.http(M.CLIENT_IP, SERVICE_HOST, "/status/404"), 404))
        for _ in range(2):
            want.append((self.http(M.CLIENT_IP, SERVICE_HOST, "/status/500"), 500))
        # 503 is retried by the waypoint (Istio's default retry policy): waypoint_retries_total.
        want.append((self.http(M.CLIENT_IP, SERVICE_HOST, "/status/503"), 503))
        wrong = [(got, exp) for got, exp in want if got != exp]
        if wrong:
            raise M.TestError(f"unexpected HTTP status through the waypoint (got, expected): {wrong}")
        M.eventually("the waypoint to count every request", lambda: self.waypoint_requests() >= requests_before + len(want), timeout=15)
        for _ in range(2):
            T.socks5_request(self.z1["socks5"], M.CLIENT_IP, M.OUTSIDE_IP, self.m.outside_port)
            # server -> an API outside the mesh: the server workload's outbound, in plaintext
            T.socks5_request(self.z2["socks5"], M.SERVER_IP, M.OUTSIDE_IP, self.m.outside_port)
        if n == 1:
            self.hold_connections()

        log(f"round {n}: failures (refused port, refused outside, bad SOCKS5, plaintext on 15008 of node2 and the waypoint, CA refusals, NACK)")
        # Port 81 (TCP, relayed by the waypoint): the endpoint refuses, the waypoint closes.
        out = T.socks5_closed(self.z1["socks5"], M.CLIENT_IP, SERVICE_HOST, 81)
        if out:
            raise M.TestError(f"port 81 (nothing listening) answered through the waypoint: {out[:100]!r}")
        closed = M.free_port(M.OUTSIDE_IP)
        T.socks5_refused(self.z2["socks5"], M.SERVER_IP, M.OUTSIDE_IP, closed)  # outside refuses
        T.send_garbage(self.z1["socks5"], b"\x04\x01garbage\r\n", M.CLIENT_IP)
        T.send_garbage(f"{M.SERVER_IP}:{M.HBONE_PORT}", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        T.send_garbage(f"{M.WAYPOINT_IP}:{M.HBONE_PORT}", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # waypoint_rejected_streams_total{reason="tls"}
        token = open(self.m.token_path("node1")).read().strip()
        T.ca_request(self.m.istiod["xds_plaintext"], None, "no token, no certificate")
        T.ca_request(self.m.istiod["xds_plaintext"], token, "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n")
        M.eventually("istiod-lite to refuse both certificate requests", lambda: self.istiod_metric("istiod_certificates_refused_total") >= refused_before + 2, timeout=15)
        g, _nonce = T.xds_nack_once(self.m.istiod["xds_plaintext"], token, "node1")
        try:
            M.eventually("istiod-lite to count the NACK", lambda: self.istiod_metric("pilot_total_xds_rejects") > rejects_before, timeout=15)
        finally:
            g.close()

        # Every connection but the held ones has been closed and counted on both sides.
        def settled():
            open_now = 0
            for z in self.m.ztunnels.values():
                s = self.scrape(z["stats"])
                open_now += P.total(s, "istio_tcp_connections_opened_total") - P.total(s, "istio_tcp_connections_closed_total")
            return open_now == HELD_CONNECTIONS

        M.eventually("the ztunnels to count every closed connection", settled, timeout=30)
        self.wait_scraped_after(f"round {n}")

    def hold_connections(self):
        """Connections that stay open during the checks (open-connection panels)."""
        s, code = T.socks5_open(self.z1["socks5"], M.CLIENT_IP, SERVICE_HOST, 80)
        # A complete request the app never answers: open client->waypoint and waypoint->server.
        s.sendall(HTTP_CLOSE.format("/hold").encode())
        self.held.append(s)
        s, code2 = T.socks5_open(self.z2["socks5"], M.SERVER_IP, M.OUTSIDE_IP, self.m.outside_port)
        s.sendall(b"HOLD")
        self.held.append(s)
        if code or code2:
            raise M.TestError(f"could not open the held connections (SOCKS5 replies {code}, {code2})")

    def close(self):
        for s in self.held:
            s.close()


# -- panel checks ------------------------------------------------------------------------------------


def resolve_variables(prom, d, exported):
    """{name: value} for every variable of `d`, evaluating its query against Prometheus.
    Returns (values, problems, notes)."""
    values, bad, notes, unresolved = {}, [], [], set()
    for v in d.get("templating", {}).get("list", []):
        name, vtype = v.get("name"), v.get("type")
        if vtype == "datasource":
            values[name] = "prometheus"
            continue
        if vtype != "query":
            cur = v.get("current", {}).get("value") or (v.get("options") or [{}])[0].get("value", "")
            values[name] = cur if isinstance(cur, str) else cur[0]
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        unresolved.add(name)  # until a value is chosen below
        try:
            q_sub = P.substitute(q, values)
        except KeyError as e:
            bad.append(f"variable {name}: references undefined or unresolved variable {e}")
            continue
        unknown = P.variable_query_metrics(q_sub) - exported
        if unknown:
            bad.append(f"variable {name}: query names metrics no component exports: {sorted(unknown)}")
        try:
            opts = P.apply_regex(prom.variable_values(q_sub), v.get("regex", ""))
        except P.PromError as e:
            bad.append(f"variable {name}: query failed: {e}")
            continue
        if not opts:
            bad.append(f"variable {name}: query returns no values: {q_sub}")
            continue
        cur = v.get("current", {}).get("value")
        if v.get("includeAll") and (cur == "$__all" or cur == ["$__all"]):
            values[name] = v.get("allValue") or "(" + "|".join(opts) + ")"
            notes.append(f"{name}=All ({len(opts)} values)")
        else:
            values[name] = PREFERRED[name] if PREFERRED.get(name) in opts else opts[0]
            notes.append(f"{name}={values[name]}")
        unresolved.discard(name)
    return values, bad, notes, unresolved


def check_dashboard(prom, name, d, exported):
    """Runs every target; returns a summary dict."""
    res = {"panels": 0, "queries": 0, "ok": 0, "skipped": [], "failed": [], "zero": [], "notes": []}
    values, bad, notes, unresolved = resolve_variables(prom, d, exported)
    res["failed"] += bad
    res["notes"] = notes
    pending_all = set().union(set(), *PENDING.values())
    blocked = 0
    for p in walk(d.get("panels", [])):
        if p.get("type") == "row":
            continue
        res["panels"] += 1
        title = p.get("title", "?")
        for t in p.get("targets", []):
            res["queries"] += 1
            where = f"{title} [{t.get('refId')}]"
            if P.variables_in(t.get("expr", "")) & unresolved:
                blocked += 1
                continue
            try:
                expr = P.substitute(t.get("expr", ""), values)
            except KeyError as e:
                res["failed"].append(f"{where}: undefined variable {e}")
                continue
            names = P.metric_names(expr)
            pending = {m for m in names & pending_all if m not in exported}
            if pending:
                component = next(c for c, ms in PENDING.items() if pending & ms)
                try:
                    prom.query(expr)  # must parse, even without data
                    res["skipped"].append(f"{where}: needs {component} ({', '.join(sorted(pending))})")
                except P.PromError as e:
                    res["failed"].append(f"{where}: Prometheus rejected the query: {e}")
                continue
            unknown = names - exported
            if unknown:
                res["failed"].append(f"{where}: names metrics no component exports: {', '.join(sorted(unknown))}")
                continue
            try:
                result = prom.query(expr)
            except P.PromError as e:
                res["failed"].append(f"{where}: Prometheus rejected the query: {e}\n      {expr}")
                continue
            if not result:
                res["failed"].append(f"{where}: no series\n      {expr}")
                continue
            res["ok"] += 1
            vals = [float(r["value"][1]) for r in result]
            if all(v != v or v == 0 for v in vals):  # NaN or 0 everywhere
                res["zero"].append(f"{where}: {len(result)} series, all 0/NaN")
    if blocked:
        res["failed"].append(f"{blocked} queries not run: they use variables that did not resolve ({', '.join(sorted(unresolved))})")
    return res


# -- main --------------------------------------------------------------------------------------------


def find_prometheus():
    if os.environ.get("PROMETHEUS"):  # an explicit choice: that binary or none
        p = os.environ["PROMETHEUS"]
        return p if os.access(p, os.X_OK) else None
    for c in ("/usr/bin/prometheus", shutil.which("prometheus")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def find_bins():
    dirs = [os.environ.get("MESH_BIN_DIR"), os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug")]
    for d in dirs:
        if d and all(os.access(os.path.join(d, b), os.X_OK) for b in ("istiod-lite", "ztunnel", "waypoint")):
            return d
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, Prometheus config and data)")
    ap.add_argument("--hold", action="store_true", help="after the checks, keep the mesh and Prometheus running until Ctrl-C")
    ap.add_argument("--dir", default=GRAFANA_DIR, help="dashboard directory (default deploy/grafana; the generator drift check runs only there)")
    ap.add_argument("--self-test", action="store_true", help="only run the PromQL helper self-test")
    args = ap.parse_args()
    P.self_test()
    if args.self_test:
        log("self-test ok")
        return 0

    ci = os.environ.get("CI", "").lower() == "true"
    prometheus = find_prometheus()
    if not prometheus:
        if ci:
            log("FAIL: prometheus not installed (CI=true): apt-get install -y --no-install-recommends prometheus")
            return 1
        log("skipping: prometheus not installed (as root: apt-get install -y --no-install-recommends prometheus)")
        return 0
    bins = find_bins()
    if not bins:
        log("FAIL: istiod-lite/ztunnel/waypoint binaries not found in $MESH_BIN_DIR or target/debug: run `cargo build --bins` first")
        return 1

    dashboards, static_bad = {}, {}
    for name in DASHBOARDS:
        path = os.path.join(args.dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                dashboards[name] = json.load(f)
        except (OSError, ValueError) as e:
            static_bad[name] = [f"cannot load {path}: {e}"]
            continue
        static_bad[name] = static_checks(name, dashboards[name])
    uids = [d.get("uid") for d in dashboards.values()]
    drift = generator_in_sync() if os.path.samefile(args.dir, GRAFANA_DIR) else None

    lock = M.LoopbackLock()
    workdir = tempfile.mkdtemp(prefix="ambient-rs-dashboards.")
    mesh = M.Mesh(bins, workdir, prometheus)
    scenario = None
    ok = False
    started = time.monotonic()
    try:
        log(f"starting istiod-lite, two ztunnels and a waypoint ({bins}), logs in {mesh.logs}")
        mesh.start()
        log(f"starting Prometheus {prometheus} on {mesh.prometheus_addr} (scrape interval 1s)")
        mesh.start_prometheus()
        prom = P.Prometheus(mesh.prometheus_addr)
        scenario = Scenario(mesh, prom)
        scenario.wait_prometheus_up()
        scenario.control_plane_outage()
        scenario.waypoint_outage()
        scenario.round(1)
        scenario.round(2)

        exported = set()
        per_component = {}
        for job, addr in mesh.scrape_targets():
            _, names = P.parse_exposition(M.http_get(f"http://{addr}{M.METRICS_PATH.get(job, '/metrics')}")[1])
            per_component.setdefault(job, set()).update(names)
            exported |= names
        log(f"metrics exported: {len(exported)} names ({', '.join(f'{j}: {len(n)}' for j, n in per_component.items())})")

        failed = 0
        log("")
        for name in DASHBOARDS:
            if name not in dashboards:
                log(f"FAIL {name}: " + "; ".join(static_bad[name]))
                failed += 1
                continue
            r = check_dashboard(prom, name, dashboards[name], exported)
            r["failed"] = static_bad[name] + r["failed"]
            status = "FAIL" if r["failed"] else "ok  "
            log(f"{status} {name:<19} {r['panels']:>3} panels, {r['queries']:>3} queries: {r['ok']} with data, {len(r['skipped'])} skipped, {len(r['failed'])} failed   [{', '.join(r['notes']) or 'no variables but datasource'}]")
            for s in r["skipped"]:
                log(f"       skipped: {s}")
            for z in r["zero"]:
                log(f"       note (series present, all values 0/NaN): {z}")
            for f_ in r["failed"]:
                log(f"       FAILED: {f_}")
            failed += bool(r["failed"])
        if len(set(uids)) != len(uids):
            log(f"FAIL: dashboard uids are not unique: {uids}")
            failed += 1
        if drift:
            log(f"FAIL: {drift}")
            failed += 1
        missing = undocumented(exported)
        if missing:
            log(f"FAIL: docs/metrics.md does not document: {', '.join(missing)}")
            failed += 1
        else:
            log(f"ok   docs/metrics.md documents all {len(exported)} exported metric names")
        log("")
        if failed:
            log(f"dashboards FAILED ({failed} of {len(DASHBOARDS)} with problems) in {time.monotonic() - started:.0f}s")
        else:
            log(f"dashboards OK: every panel query returned data from a real Prometheus ({time.monotonic() - started:.0f}s)")
        ok = not failed
        if args.hold:
            log(f"holding: Prometheus http://{mesh.prometheus_addr}  (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    except (M.TestError, OSError, P.PromError, subprocess.CalledProcessError) as e:
        log(f"\ndashboards FAILED: {e}")
        mesh.print_logs()
    finally:
        if scenario:
            scenario.close()
        mesh.stop()
        lock.release()
        if ok and not args.keep:
            mesh.remove()
        else:
            log(f"kept {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

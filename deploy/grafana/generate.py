#!/usr/bin/env python3
"""Generates the Grafana dashboards in this directory (mesh, service, workload, ztunnel,
waypoint, control-plane .json). The JSON files are what ships; this script is their source, so the six
dashboards share one layout, one datasource variable and one set of conventions:

- Istio's metric names and labels only, so Istio users' queries and alerts keep working;
- every rate over `$__rate_interval`; a `datasource` variable (type prometheus) on every panel;
- mTLS vs plaintext split by `connection_security_policy` (`mutual_tls` vs anything else:
  ztunnel reports `unknown` for plaintext, sidecars `none`);
- HTTP/gRPC (L7) panels use the waypoint's metrics (`reporter="waypoint"`): they show traffic to
  services that use a waypoint (`istio.io/use-waypoint`) and stay empty for plain L4 traffic.

    python3 deploy/grafana/generate.py          # rewrite the JSON files
    python3 deploy/grafana/generate.py --check  # exit 1 if a JSON file differs from this script
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
R = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}
L7_NOTE = (
    "Reported by waypoints (reporter=waypoint): only requests to services that use a waypoint "
    "(istio.io/use-waypoint) are counted. "
)
TAGS = ["ambient-rs", "istio"]
# Label matchers appended to a selector (constants: f-string expressions cannot hold backslashes).
MTLS = ',connection_security_policy="mutual_tls"'
PLAIN = ',connection_security_policy!="mutual_tls"'
KNOWN_SVC = ',destination_service!="unknown"'
NOT_5XX = ',response_code!~"5.."'
IS_4XX = ',response_code=~"4.."'
IS_5XX = ',response_code=~"5.."'


# -- panel builders ----------------------------------------------------------------------------


def target(expr, legend="", ref="A", instant=False, fmt=None):
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update({"instant": True, "range": False, "format": fmt or "table"})
    else:
        t.update({"instant": False, "range": True})
    return t


def _targets(exprs):
    """exprs: a string, or a list of (expr, legend) pairs."""
    if isinstance(exprs, str):
        return [target(exprs, "")]
    return [target(e, leg, chr(ord("A") + i)) for i, (e, leg) in enumerate(exprs)]


def stat(title, exprs, unit="short", desc="", decimals=None, text_mode="auto", w=3, h=4):
    p = {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": _targets(exprs),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "mappings": [],
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        },
        "_size": (w, h),
    }
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    return p


def ts(title, exprs, unit="short", desc="", w=12, h=8, stack=False):
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": _targets(exprs),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "mappings": [],
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (w, h),
    }


def table(title, columns, by, desc="", w=24, h=8):
    """One instant query per column (name, expr, unit), merged on the `by` labels."""
    targets = [target(e, name, chr(ord("A") + i), instant=True) for i, (name, e, _) in enumerate(columns)]
    rename = {f"Value #{chr(ord('A') + i)}": name for i, (name, _, _) in enumerate(columns)}
    overrides = [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for name, _, unit in columns
    ]
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "indexByName": {}, "renameByName": rename}},
        ],
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}, "mappings": []}, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        "_size": (w, h),
        "_by": by,
    }


def row(title, panels, collapsed=False):
    return {"type": "row", "title": title, "collapsed": collapsed, "_panels": panels}


# -- variables ---------------------------------------------------------------------------------


def ds_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_var(name, label, query, regex="", all_value=None, desc=""):
    v = {
        "name": name,
        "label": label,
        "description": desc,
        "type": "query",
        "datasource": DS,
        "definition": query,
        # A plain string: the classic form every Grafana version (9 to 11) and grafonnet accept.
        "query": query,
        "regex": regex,
        "refresh": 2,  # on time range change
        "sort": 1,
        "hide": 0,
        "includeAll": all_value is not None,
        "multi": False,
        "options": [],
        "current": {},
        "skipUrlSync": False,
    }
    if all_value is not None:
        v["allValue"] = all_value
        v["current"] = {"selected": True, "text": "All", "value": "$__all"}
    return v


# -- layout ------------------------------------------------------------------------------------


def layout(rows):
    """Flattens rows into Grafana panels with ids and gridPos (left to right, wrapping)."""
    out, next_id, y = [], [1], 0

    def place(panels, y):
        x, row_h = 0, 0
        placed = []
        for p in panels:
            w, h = p.pop("_size")
            p.pop("_by", None)
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            p["id"] = next_id[0]
            next_id[0] += 1
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            row_h = max(row_h, h)
            placed.append(p)
        return placed, y + row_h

    for r in rows:
        panels = r.pop("_panels")
        r["id"] = next_id[0]
        next_id[0] += 1
        r["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
        y += 1
        if r["collapsed"]:
            r["panels"], _ = place(panels, y)
            out.append(r)
        else:
            r["panels"] = []
            out.append(r)
            placed, y = place(panels, y)
            out.extend(placed)
    return out


def dashboard(uid, title, desc, variables, rows):
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "ambient-rs dashboards",
                "type": "dashboards",
                "tags": ["ambient-rs"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": [ds_var()] + variables},
        "panels": layout(rows),
    }


# -- shared expressions ------------------------------------------------------------------------


def rate(metric, sel):
    return f"rate({metric}{{{sel}}}[{R}])"


def mtls_share(sel, by=""):
    """Share of new connections with mutual TLS. The `or ... * 0` keeps plaintext-only traffic
    in the numerator as 0, so a workload without mTLS shows 0% instead of no data."""
    grp = f"sum by ({by}) " if by else "sum"
    opened = "istio_tcp_connections_opened_total"
    return (
        f"{grp}({rate(opened, sel + MTLS)} or {rate(opened, sel)} * 0)"
        f" / {grp}({rate(opened, sel)})"
    )


def open_conns(sel, by=""):
    grp = f"sum by ({by}) " if by else "sum"
    return f"{grp}(istio_tcp_connections_opened_total{{{sel}}}) - {grp}(istio_tcp_connections_closed_total{{{sel}}})"


SEC_DESC = (
    "Split by connection_security_policy: mutual_tls = HBONE with mTLS between ztunnels; "
    "anything else (ztunnel reports `unknown`) = plaintext, e.g. to destinations outside the mesh."
)
FLAG_DESC = (
    "Connections that could not be set up, by Istio response flag: CONNECT (upstream refused or "
    "unreachable), DENY (authorization policy or not allowed), UH (no healthy endpoint), "
    "TLS_FAILURE (mTLS handshake), IDENTITY_ERROR (no certificate for the source)."
)
OPEN_DESC = "Opened minus closed connections (Istio has no gauge for open TCP connections)."


def l7_row(sel, by_label, who):
    """The L7 row (waypoint metrics). `sel` selects the traffic, `by_label` splits it."""
    d = lambda s: L7_NOTE + s  # noqa: E731
    q = lambda p: f"histogram_quantile({p}, sum by (le) ({rate('istio_request_duration_milliseconds_bucket', sel)}))"  # noqa: E731
    return row(
        "HTTP/gRPC requests (through waypoints)",
        [
            ts(f"Requests by {who}", [(f"round(sum by ({by_label}, response_code) ({rate('istio_requests_total', sel)}), 0.001)", f"{{{{{by_label}}}}} {{{{response_code}}}}")], "reqps", d("Requests per second, by response code.")),
            ts(
                f"Success rate (non-5xx) by {who}",
                [(f"sum by ({by_label}) ({rate('istio_requests_total', sel + NOT_5XX)}) / sum by ({by_label}) ({rate('istio_requests_total', sel)})", f"{{{{{by_label}}}}}")],
                "percentunit",
                d("Share of requests not answered with a 5xx."),
            ),
            ts("Request duration", [(q(0.5), "P50"), (q(0.9), "P90"), (q(0.99), "P99")], "ms", d("istio_request_duration_milliseconds quantiles.")),
            ts(
                "Request and response sizes (P90)",
                [
                    (f"histogram_quantile(0.9, sum by (le) ({rate('istio_request_bytes_bucket', sel)}))", "request P90"),
                    (f"histogram_quantile(0.9, sum by (le) ({rate('istio_response_bytes_bucket', sel)}))", "response P90"),
                ],
                "bytes",
                d("istio_request_bytes / istio_response_bytes quantiles."),
            ),
        ],
    )


# -- dashboards --------------------------------------------------------------------------------


def mesh():
    src = 'reporter="source"'
    dst = 'reporter="destination"'
    by_wl = "destination_workload_namespace, destination_workload"
    l7 = 'reporter="waypoint"'
    return dashboard(
        "ambient-rs-mesh",
        "ambient-rs / Mesh",
        "Mesh-wide L4 traffic, encryption and health (Istio metric names). "
        "Connections are counted once, by the ztunnel on the sending side (reporter=source), unless a panel says otherwise.",
        [],
        [
            row(
                "Mesh overview",
                [
                    stat("Connections opened/s", f"sum({rate('istio_tcp_connections_opened_total', src)})", "cps", "New TCP connections per second from meshed workloads, including to destinations outside the mesh.", 2),
                    stat("mTLS share", mtls_share(src), "percentunit", "Share of new connections carried over HBONE with mutual TLS. " + SEC_DESC, 1),
                    stat("Failed connections/s", f"sum({rate('istio_tcp_connections_failed_total', src)})", "cps", FLAG_DESC, 2),
                    stat("Throughput", f"sum({rate('istio_tcp_sent_bytes_total', src)}) + sum({rate('istio_tcp_received_bytes_total', src)})", "Bps", "Bytes per second, both directions."),
                    stat("Workloads", "max(istiod_workloads)", "short", "Workloads in the control plane's model."),
                    stat("Services", "max(pilot_services)", "short", "Services in the control plane's model."),
                    stat("ztunnels", 'count(istio_build{component="ztunnel"})', "short", "Node agents Prometheus scrapes."),
                    stat("Connected proxies", "sum(pilot_xds)", "short", "xDS clients (ztunnels, waypoints) connected to the control plane."),
                ],
            ),
            row(
                "Encryption (mTLS vs plaintext)",
                [
                    ts("Connections opened by security policy", [(f"sum by (connection_security_policy) ({rate('istio_tcp_connections_opened_total', src)})", "{{connection_security_policy}}")], "cps", SEC_DESC),
                    ts(
                        "Bytes by security policy",
                        [
                            (f"sum by (connection_security_policy) ({rate('istio_tcp_sent_bytes_total', src)})", "{{connection_security_policy}} sent"),
                            (f"sum by (connection_security_policy) ({rate('istio_tcp_received_bytes_total', src)})", "{{connection_security_policy}} received"),
                        ],
                        "Bps",
                        SEC_DESC,
                    ),
                    ts(
                        "Plaintext connections (who talks in the clear)",
                        [(f"sum by (source_workload_namespace, source_workload, destination_service, destination_workload) ({rate('istio_tcp_connections_opened_total', src + PLAIN)})", "{{source_workload}}.{{source_workload_namespace}} → {{destination_service}} ({{destination_workload}})")],
                        "cps",
                        "New connections not protected by mTLS, by source workload and destination (unknown = outside the mesh).",
                        w=24,
                    ),
                ],
            ),
            row(
                "TCP workloads and services",
                [
                    table(
                        "TCP workloads (inbound, reported by the destination ztunnel)",
                        [
                            ("Connections/s", f"sum by ({by_wl}) ({rate('istio_tcp_connections_opened_total', dst)})", "cps"),
                            ("mTLS share", mtls_share(dst, by_wl), "percentunit"),
                            ("Bytes received/s", f"sum by ({by_wl}) ({rate('istio_tcp_received_bytes_total', dst)})", "Bps"),
                            ("Bytes sent/s", f"sum by ({by_wl}) ({rate('istio_tcp_sent_bytes_total', dst)})", "Bps"),
                        ],
                        by_wl,
                        "One line per workload receiving TCP connections through the mesh.",
                    ),
                    ts("Connections opened by destination service", [(f"sum by (destination_service) ({rate('istio_tcp_connections_opened_total', src + KNOWN_SVC)})", "{{destination_service}}")], "cps", "Connections to mesh services (by service hostname)."),
                    ts("Failed connections by response flag", [(f"sum by (response_flags) ({rate('istio_tcp_connections_failed_total', src)})", "{{response_flags}}")], "cps", FLAG_DESC),
                ],
            ),
            row(
                "HTTP/gRPC (through waypoints)",
                [
                    stat("Request volume", f"round(sum({rate('istio_requests_total', l7)}), 0.001)", "reqps", L7_NOTE, w=6),
                    stat("Success rate (non-5xx)", f"sum({rate('istio_requests_total', l7 + NOT_5XX)}) / sum({rate('istio_requests_total', l7)})", "percentunit", L7_NOTE, w=6),
                    stat("4xx/s", f"sum({rate('istio_requests_total', l7 + IS_4XX)})", "reqps", L7_NOTE, w=6),
                    stat("5xx/s", f"sum({rate('istio_requests_total', l7 + IS_5XX)})", "reqps", L7_NOTE, w=6),
                    table(
                        "HTTP/gRPC workloads",
                        [
                            ("Requests/s", f"sum by ({by_wl}) ({rate('istio_requests_total', l7)})", "reqps"),
                            ("P50 latency", f"histogram_quantile(0.5, sum by (le, {by_wl}) ({rate('istio_request_duration_milliseconds_bucket', l7)}))", "ms"),
                            ("P90 latency", f"histogram_quantile(0.9, sum by (le, {by_wl}) ({rate('istio_request_duration_milliseconds_bucket', l7)}))", "ms"),
                            ("P99 latency", f"histogram_quantile(0.99, sum by (le, {by_wl}) ({rate('istio_request_duration_milliseconds_bucket', l7)}))", "ms"),
                            ("Success rate", f"sum by ({by_wl}) ({rate('istio_requests_total', l7 + NOT_5XX)}) / sum by ({by_wl}) ({rate('istio_requests_total', l7)})", "percentunit"),
                        ],
                        by_wl,
                        L7_NOTE,
                    ),
                ],
            ),
        ],
    )


def service():
    # The clients' ztunnels (reporter=source) know the service a client dialled even when a waypoint
    # sits in between; the destination ztunnel then only sees the waypoint's connection to a pod.
    sel = 'reporter="source",destination_service="$service",source_workload_namespace=~"$srcns",source_workload=~"$srcwl"'
    any_rep = 'destination_service="$service",source_workload_namespace=~"$srcns",source_workload=~"$srcwl"'
    src_rep = 'reporter="source",' + any_rep
    client = "source_workload, source_workload_namespace"
    client_leg = "{{source_workload}}.{{source_workload_namespace}}"
    return dashboard(
        "ambient-rs-service",
        "ambient-rs / Service",
        "One service's clients and endpoints (L4), as reported by the clients' ztunnels (reporter=source) unless a panel says otherwise: "
        "they know the service a client dialled even when the service uses a waypoint (then the endpoint is the waypoint, and its HTTP/gRPC requests are in the waypoint row).",
        [
            query_var("service", "Service", 'label_values(istio_tcp_connections_opened_total{reporter="source",destination_service!="unknown"}, destination_service)'),
            query_var("srcns", "Client namespace", 'label_values(istio_tcp_connections_opened_total{reporter="source",destination_service="$service"}, source_workload_namespace)', all_value=".*"),
            query_var("srcwl", "Client workload", 'label_values(istio_tcp_connections_opened_total{reporter="source",destination_service="$service",source_workload_namespace=~"$srcns"}, source_workload)', all_value=".*"),
        ],
        [
            row(
                "Service overview",
                [
                    stat("Connections opened/s", f"sum({rate('istio_tcp_connections_opened_total', sel)})", "cps", w=4, decimals=2),
                    stat("mTLS share", mtls_share(sel), "percentunit", SEC_DESC, w=4, decimals=1),
                    stat("Bytes received/s", f"sum({rate('istio_tcp_received_bytes_total', sel)})", "Bps", "From clients.", w=4),
                    stat("Bytes sent/s", f"sum({rate('istio_tcp_sent_bytes_total', sel)})", "Bps", "To clients.", w=4),
                    stat("Open connections", open_conns(sel), "short", OPEN_DESC, w=4),
                    stat("Failed connections/s", f"sum({rate('istio_tcp_connections_failed_total', src_rep)})", "cps", "As seen by the clients' ztunnels (reporter=source); a stopped waypoint shows here as CONNECT. " + FLAG_DESC, w=4, decimals=2),
                ],
            ),
            row(
                "Clients (inbound)",
                [
                    ts("Connections opened by client", [(f"sum by ({client}) ({rate('istio_tcp_connections_opened_total', sel)})", client_leg)], "cps"),
                    ts("Connections by security policy", [(f"sum by (connection_security_policy) ({rate('istio_tcp_connections_opened_total', sel)})", "{{connection_security_policy}}")], "cps", SEC_DESC),
                    ts("Bytes received from clients", [(f"sum by ({client}) ({rate('istio_tcp_received_bytes_total', sel)})", client_leg)], "Bps"),
                    ts("Bytes sent to clients", [(f"sum by ({client}) ({rate('istio_tcp_sent_bytes_total', sel)})", client_leg)], "Bps"),
                    ts("Open connections by client", [(open_conns(sel, client), client_leg)], "short", OPEN_DESC),
                    ts(
                        "Failed connections by response flag",
                        [(f"sum by (reporter, response_flags, source_workload) ({rate('istio_tcp_connections_failed_total', any_rep)})", "{{response_flags}} from {{source_workload}} (seen by {{reporter}})")],
                        "cps",
                        FLAG_DESC + " Both sides report: the client's ztunnel (source) and the endpoint's (destination).",
                    ),
                ],
            ),
            row(
                "Endpoints (destination workloads)",
                [
                    ts("Connections by destination workload", [(f"sum by (destination_workload, destination_workload_namespace, destination_version) ({rate('istio_tcp_connections_opened_total', sel)})", "{{destination_workload}}.{{destination_workload_namespace}} {{destination_version}}")], "cps", "How the service's connections spread over its endpoints (for a service with a waypoint: the waypoint pods)."),
                    ts(
                        "Bytes by destination workload",
                        [
                            (f"sum by (destination_workload, destination_workload_namespace) ({rate('istio_tcp_sent_bytes_total', sel)})", "{{destination_workload}}.{{destination_workload_namespace}} sent"),
                            (f"sum by (destination_workload, destination_workload_namespace) ({rate('istio_tcp_received_bytes_total', sel)})", "{{destination_workload}}.{{destination_workload_namespace}} received"),
                        ],
                        "Bps",
                    ),
                ],
            ),
            l7_row('reporter="waypoint",destination_service="$service",source_workload_namespace=~"$srcns",source_workload=~"$srcwl"', "source_workload", "client"),
        ],
    )


def workload():
    inb = 'reporter="destination",destination_workload_namespace="$namespace",destination_workload="$workload"'
    out = 'reporter="source",source_workload_namespace="$namespace",source_workload="$workload"'
    client = "source_workload, source_workload_namespace"
    client_leg = "{{source_workload}}.{{source_workload_namespace}}"
    dest = "destination_service, destination_workload, destination_workload_namespace"
    dest_leg = "{{destination_service}} ({{destination_workload}}.{{destination_workload_namespace}})"
    return dashboard(
        "ambient-rs-workload",
        "ambient-rs / Workload",
        "One workload's inbound connections (reported by its ztunnel as destination) and outbound connections (reported as source).",
        [
            query_var(
                "namespace",
                "Namespace",
                'query_result(sum by (destination_workload_namespace) (istio_tcp_connections_opened_total{reporter="destination"}) or sum by (source_workload_namespace) (istio_tcp_connections_opened_total{reporter="source"}))',
                regex='/.*_namespace="([^"]*)".*/',
                desc="Namespaces with workloads that sent or received connections.",
            ),
            query_var(
                "workload",
                "Workload",
                'query_result(sum by (destination_workload) (istio_tcp_connections_opened_total{reporter="destination",destination_workload_namespace="$namespace"}) or sum by (source_workload) (istio_tcp_connections_opened_total{reporter="source",source_workload_namespace="$namespace"}))',
                regex='/.*_workload="([^"]*)".*/',
            ),
        ],
        [
            row(
                "Workload overview",
                [
                    stat("Inbound connections/s", f"sum({rate('istio_tcp_connections_opened_total', inb)})", "cps", w=4, decimals=2),
                    stat("Inbound mTLS share", mtls_share(inb), "percentunit", SEC_DESC, w=4, decimals=1),
                    stat("Inbound failures/s", f"sum({rate('istio_tcp_connections_failed_total', inb)})", "cps", FLAG_DESC, w=4, decimals=2),
                    stat("Outbound connections/s", f"sum({rate('istio_tcp_connections_opened_total', out)})", "cps", w=4, decimals=2),
                    stat("Outbound mTLS share", mtls_share(out), "percentunit", SEC_DESC, w=4, decimals=1),
                    stat("Outbound failures/s", f"sum({rate('istio_tcp_connections_failed_total', out)})", "cps", FLAG_DESC, w=4, decimals=2),
                ],
            ),
            row(
                "Inbound (clients of this workload)",
                [
                    ts("Inbound connections by client", [(f"sum by ({client}) ({rate('istio_tcp_connections_opened_total', inb)})", client_leg)], "cps"),
                    ts("Inbound connections by security policy", [(f"sum by (connection_security_policy) ({rate('istio_tcp_connections_opened_total', inb)})", "{{connection_security_policy}}")], "cps", SEC_DESC),
                    ts(
                        "Inbound bytes by client",
                        [
                            (f"sum by ({client}) ({rate('istio_tcp_received_bytes_total', inb)})", client_leg + " received"),
                            (f"sum by ({client}) ({rate('istio_tcp_sent_bytes_total', inb)})", client_leg + " sent"),
                        ],
                        "Bps",
                    ),
                    ts("Open inbound connections by client", [(open_conns(inb, client), client_leg)], "short", OPEN_DESC),
                    ts("Inbound failures by response flag", [(f"sum by (response_flags, {client}) ({rate('istio_tcp_connections_failed_total', inb)})", "{{response_flags}} from " + client_leg)], "cps", FLAG_DESC, w=24),
                ],
            ),
            row(
                "Outbound (what this workload calls)",
                [
                    ts("Outbound connections by destination", [(f"sum by ({dest}) ({rate('istio_tcp_connections_opened_total', out)})", dest_leg)], "cps", "unknown = a destination outside the mesh."),
                    ts("Outbound connections by security policy", [(f"sum by (connection_security_policy) ({rate('istio_tcp_connections_opened_total', out)})", "{{connection_security_policy}}")], "cps", SEC_DESC),
                    ts(
                        "Outbound bytes by destination",
                        [
                            (f"sum by ({dest}) ({rate('istio_tcp_received_bytes_total', out)})", dest_leg + " received"),
                            (f"sum by ({dest}) ({rate('istio_tcp_sent_bytes_total', out)})", dest_leg + " sent"),
                        ],
                        "Bps",
                        "received = from this workload, sent = to it (Istio's direction: bytes the proxy received from / sent to the workload).",
                    ),
                    ts("Open outbound connections by destination", [(open_conns(out, dest), dest_leg)], "short", OPEN_DESC),
                    ts("Outbound failures by response flag", [(f"sum by (response_flags, {dest}) ({rate('istio_tcp_connections_failed_total', out)})", "{{response_flags}} to " + dest_leg)], "cps", FLAG_DESC, w=24),
                ],
            ),
            l7_row('reporter="waypoint",destination_workload_namespace="$namespace",destination_workload="$workload"', "source_workload", "client"),
        ],
    )


CAPTURED_DESC = ("Workloads each ztunnel proxies for (Istio's workload_manager_active_proxy_count): pods enrolled in "
                 "in-pod mode, per-workload HBONE listeners in shared mode.")


def ztunnel():
    z = 'instance=~"$ztunnel"'
    zb = 'component="ztunnel",' + z
    return dashboard(
        "ambient-rs-ztunnel",
        "ambient-rs / Ztunnel",
        "The node agents: connections they carry (both directions), bytes, xDS from the control plane, certificates and errors. "
        "reporter=source is a ztunnel's outbound side, reporter=destination its inbound side.",
        [
            query_var("ztunnel", "ztunnel", f'label_values(istio_build{{component="ztunnel"}}, instance)', all_value=".*", desc="Scrape address (instance) of each ztunnel."),
        ],
        [
            row(
                "Ztunnel overview",
                [
                    stat("ztunnels", f"count(istio_build{{{zb}}})", "short", w=3),
                    stat("Versions", [(f"count by (tag) (istio_build{{{zb}}})", "{{tag}}")], "short", "ztunnels per version (tag).", text_mode="value_and_name", w=3),
                    stat("Connections opened/s", f"sum({rate('istio_tcp_connections_opened_total', z)})", "cps", "Both directions: each connection is counted by the source and the destination ztunnel.", 2, w=3),
                    stat("Open connections", open_conns(z), "short", OPEN_DESC, w=3),
                    stat("Failed connections/s", f"sum({rate('istio_tcp_connections_failed_total', z)})", "cps", FLAG_DESC, 2, w=3),
                    stat("Throughput", f"sum({rate('istio_tcp_sent_bytes_total', z)}) + sum({rate('istio_tcp_received_bytes_total', z)})", "Bps", w=3),
                    stat("mTLS share", mtls_share(z), "percentunit", SEC_DESC, 1, w=3),
                    stat("Certificates fetched/s", f"sum({rate('ztunnel_certificates_issued_total', z)})", "short", "Workload certificates obtained from the CA (first fetch and rotation).", 3, w=3),
                ],
            ),
            row(
                "Workloads captured",
                [
                    stat("Workloads captured", f"sum(workload_manager_active_proxy_count{{{z}}})", "short", CAPTURED_DESC, w=6),
                    ts("Workloads captured by ztunnel", [(f"workload_manager_active_proxy_count{{{z}}}", "{{instance}}")], "short", CAPTURED_DESC, w=9),
                    ts("Workload proxies started", [(f"sum by (instance) (increase(workload_manager_proxies_started_total{{{z}}}[{R}]))", "{{instance}}")], "short", "Listener sets opened for workloads: pods enrolled by the CNI plugin or joining the mesh through a label change (in-pod mode), HBONE listeners opened (shared mode).", w=9),
                ],
            ),
            row(
                "Connections",
                [
                    ts("Connections opened by ztunnel and direction", [(f"sum by (instance, reporter) ({rate('istio_tcp_connections_opened_total', z)})", "{{instance}} {{reporter}}")], "cps", "source = outbound (from a local workload), destination = inbound (to a local workload)."),
                    ts("Open connections by ztunnel", [(open_conns(z, "instance"), "{{instance}}")], "short", OPEN_DESC),
                    ts("Connections by security policy", [(f"sum by (instance, connection_security_policy) ({rate('istio_tcp_connections_opened_total', z)})", "{{instance}} {{connection_security_policy}}")], "cps", SEC_DESC),
                    ts("Failed connections by response flag", [(f"sum by (instance, reporter, response_flags) ({rate('istio_tcp_connections_failed_total', z)})", "{{instance}} {{reporter}} {{response_flags}}")], "cps", FLAG_DESC),
                ],
            ),
            row(
                "Bytes",
                [
                    ts("Bytes sent by ztunnel", [(f"sum by (instance, reporter) ({rate('istio_tcp_sent_bytes_total', z)})", "{{instance}} {{reporter}}")], "Bps", "To the workload that opened the connection (downstream)."),
                    ts("Bytes received by ztunnel", [(f"sum by (instance, reporter) ({rate('istio_tcp_received_bytes_total', z)})", "{{instance}} {{reporter}}")], "Bps", "From the workload that opened the connection (downstream)."),
                ],
            ),
            row(
                "xDS (config from the control plane)",
                [
                    ts("xDS messages received by type", [(f"sum by (instance, url) ({rate('istio_xds_message_total', z)})", "{{instance}} {{url}}")], "short", w=8),
                    ts("xDS bytes received by type", [(f"sum by (instance, url) ({rate('istio_xds_message_bytes_total', z)})", "{{instance}} {{url}}")], "Bps", w=8),
                    ts("xDS connection terminations by reason", [(f"sum by (instance, reason) (increase(istio_xds_connection_terminations_total{{{z}}}[{R}]))", "{{instance}} {{reason}}")], "short", "Streams to the control plane that ended (Error, ConnectionError while reconnecting, Complete). ztunnel keeps serving from its last good config meanwhile.", w=8),
                ],
            ),
            row(
                "Certificates and errors",
                [
                    ts("Certificates fetched", [(f"sum by (instance) ({rate('ztunnel_certificates_issued_total', z)})", "{{instance}}")], "short", w=8),
                    ts("SOCKS5 errors by reason", [(f"sum by (instance, reason) ({rate('ztunnel_socks5_errors_total', z)})", "{{instance}} {{reason}}")], "short", "Malformed or timed-out SOCKS5 requests (explicit-mode clients).", w=8),
                    ts("HBONE handshake failures by reason", [(f"sum by (instance, reason) ({rate('ztunnel_hbone_handshake_failures_total', z)})", "{{instance}} {{reason}}")], "short", "Inbound connections to port 15008 that failed the mTLS handshake (tls) or timed out.", w=8),
                ],
            ),
            row(
                "Process",
                [
                    ts("Memory (RSS) by ztunnel", [(f"process_resident_memory_bytes{{{z}}} * on (instance) group_left istio_build{{{zb}}}", "{{instance}}")], "bytes", "Resident memory of each ztunnel process (target: <= 15 MB idle).", w=8),
                    ts("CPU by ztunnel", [(f"rate(process_cpu_seconds_total{{{z}}}[$__rate_interval]) * on (instance) group_left istio_build{{{zb}}}", "{{instance}}")], "percentunit", "CPU seconds per second (1 = one core).", w=8),
                    ts("Open file descriptors by ztunnel", [(f"process_open_fds{{{z}}} * on (instance) group_left istio_build{{{zb}}}", "{{instance}}")], "short", "Sockets and files held; compare with process_max_fds.", w=8),
                ],
            ),
        ],
    )


def control_plane():
    i = 'instance=~"$istiod"'
    q = lambda p: f"histogram_quantile({p}, sum by (le) ({rate('pilot_xds_push_time_bucket', i)}))"  # noqa: E731
    return dashboard(
        "ambient-rs-control-plane",
        "ambient-rs / Control Plane",
        "istiod-lite: connected xDS clients, pushes, push latency, config size, rejects (NACKs), config errors and the CA.",
        [
            query_var("istiod", "istiod", "label_values(pilot_services, instance)", all_value=".*", desc="Scrape address (instance) of each istiod-lite."),
        ],
        [
            row(
                "Control plane overview",
                [
                    stat("Connected xDS clients", f"sum(pilot_xds{{{i}}})", "short", "ztunnels and waypoints connected over delta ADS."),
                    stat("Workloads", f"max(istiod_workloads{{{i}}})", "short"),
                    stat("Services", f"max(pilot_services{{{i}}})", "short"),
                    stat("xDS pushes/s", f"sum({rate('pilot_xds_pushes', i)})", "short", decimals=2),
                    stat("Push time P99", q(0.99), "s", "From config change (or request) to response sent."),
                    stat("Rejected pushes/s", f"sum({rate('pilot_total_xds_rejects', i)})", "short", "Responses NACKed by clients: a client could not apply the config.", 3),
                    stat("Certificates issued/s", f"sum({rate('istiod_certificates_issued_total', i)})", "short", decimals=3),
                    stat("Certificates refused/s", f"sum({rate('istiod_certificates_refused_total', i)})", "short", "Certificate requests refused (authentication, authorization, invalid CSR).", 3),
                ],
            ),
            row(
                "xDS",
                [
                    ts("Connected xDS clients by version", [(f"sum by (instance, version) (pilot_xds{{{i}}})", "{{instance}} {{version}}")], "short", "Connected clients by their reported ISTIO_VERSION / build version."),
                    ts("Pushes by type", [(f"sum by (type) ({rate('pilot_xds_pushes', i)})", "{{type}}")], "short", "xDS responses sent (wds = workloads/services, wads = authorization policies)."),
                    ts("Push time", [(q(0.5), "P50"), (q(0.9), "P90"), (q(0.99), "P99")], "s", "pilot_xds_push_time: from config change (or request) to response sent."),
                    ts(
                        "Config size by type",
                        [
                            (f"histogram_quantile(0.5, sum by (le, type) ({rate('pilot_xds_config_size_bytes_bucket', i)}))", "{{type}} P50"),
                            (f"histogram_quantile(0.99, sum by (le, type) ({rate('pilot_xds_config_size_bytes_bucket', i)}))", "{{type}} P99"),
                        ],
                        "bytes",
                        "pilot_xds_config_size_bytes quantiles (Istio's coarse buckets: 1, 10 KB, 1 MB, 4 MB, 10 MB, 40 MB).",
                    ),
                    ts("Rejected pushes (NACKs) by type", [(f"sum by (type) ({rate('pilot_total_xds_rejects', i)})", "{{type}}")], "short", "A NACK means a client kept its previous config; istiod-lite's /debug/connections shows the client's error."),
                    ts("Push triggers by type", [(f"sum by (type) ({rate('pilot_push_triggers', i)})", "{{type}}")], "short", "Model rebuilds that were pushed, by what triggered them."),
                ],
            ),
            row(
                "Config",
                [
                    ts("Workloads and services", [(f"max(istiod_workloads{{{i}}})", "workloads"), (f"max(pilot_services{{{i}}})", "services")], "short"),
                    ts("Invalid config objects by kind", [(f"sum by (kind) (increase(istiod_config_errors_total{{{i}}}[{R}]))", "{{kind}}")], "short", "Objects skipped because they failed validation; istiod-lite logs the file, object, field and reason."),
                ],
            ),
            row(
                "Certificate authority",
                [
                    ts("Certificates issued", [(f"sum by (instance) ({rate('istiod_certificates_issued_total', i)})", "{{instance}}")], "short", w=8),
                    ts("Certificate requests refused by reason", [(f"sum by (reason) ({rate('istiod_certificates_refused_total', i)})", "{{reason}}")], "short", "unauthenticated (no or bad node token), not_on_node (node authorization), impersonation_mismatch, trust_domain, invalid_csr, signing_failed.", w=8),
                    ts(
                        "CSRs (Istio's citadel_server_* counters)",
                        [
                            (f"sum({rate('citadel_server_csr_count', i)})", "CSRs received"),
                            (f"sum({rate('citadel_server_success_cert_issuance_count', i)})", "issued"),
                            (f"sum({rate('citadel_server_authentication_failure_count', i)})", "authentication failures"),
                            (f"sum({rate('citadel_server_csr_parsing_err_count', i)})", "invalid CSRs"),
                        ],
                        "short",
                        w=8,
                    ),
                ],
            ),
        ],
    )


WP_DESC = (
    "Requests handled by waypoints (reporter=waypoint): HTTP/1.1, HTTP/2 and gRPC to services that use a waypoint "
    "(istio.io/use-waypoint). response_code 0 = no response (reset)."
)
RESP_FLAG_DESC = (
    "Envoy/Istio response flags set by the waypoint: - (none), NR (no route), UH (no healthy endpoint), UF (upstream connect failure), "
    "UC (upstream reset), UT (timeout), URX (retries exhausted), DC (downstream reset), UO (pool overflow), FI/DI (fault injection)."
)


def waypoint():
    w = 'instance=~"$waypoint"'
    wb = 'component="waypoint",' + w
    sel = 'reporter="waypoint",' + w + ',destination_service=~"$service"'
    on_wp = f" * on (instance) group_left istio_build{{{wb}}}"
    q = lambda p, by="": f"histogram_quantile({p}, sum by (le{', ' + by if by else ''}) ({rate('istio_request_duration_milliseconds_bucket', sel)}))"  # noqa: E731
    size = lambda m, p, by="": f"histogram_quantile({p}, sum by (le{', ' + by if by else ''}) ({rate(m, sel)}))"  # noqa: E731
    req = lambda extra="": rate("istio_requests_total", sel + extra)  # noqa: E731
    return dashboard(
        "ambient-rs-waypoint",
        "ambient-rs / Waypoint",
        "The L7 proxies: HTTP/gRPC requests they route (Istio's istio_requests_total and histograms, reporter=waypoint), "
        "response codes and flags, latency, sizes, callers, xDS and certificates.",
        [
            query_var("waypoint", "Waypoint", 'label_values(istio_build{component="waypoint"}, instance)', all_value=".*", desc="Scrape address (instance) of each waypoint."),
            query_var("service", "Service", 'label_values(istio_requests_total{reporter="waypoint",instance=~"$waypoint"}, destination_service)', all_value=".*", desc="Destination service (hostname) of the requests."),
        ],
        [
            row(
                "Waypoint overview",
                [
                    stat("Waypoints", f"count(istio_build{{{wb}}})", "short", "Waypoint processes Prometheus scrapes.", w=3),
                    stat("Versions", [(f"count by (tag) (istio_build{{{wb}}})", "{{tag}}")], "short", "Waypoints per version (tag).", text_mode="value_and_name", w=3),
                    stat("Requests/s", f"round(sum({req()}), 0.001)", "reqps", WP_DESC, w=3),
                    stat("Success rate (non-5xx)", f"sum({req(NOT_5XX)}) / sum({req()})", "percentunit", "Share of requests not answered with a 5xx.", 1, w=3),
                    stat("4xx/s", f"sum({req(IS_4XX)})", "reqps", decimals=3, w=3),
                    stat("5xx/s", f"sum({req(IS_5XX)})", "reqps", decimals=3, w=3),
                    stat("P99 duration", q(0.99), "ms", "istio_request_duration_milliseconds P99, all services.", w=3),
                    stat("Services routed", f"count(count by (destination_service) (istio_requests_total{{{sel}}}))", "short", "Destination services with requests.", w=3),
                ],
            ),
            row(
                "Requests",
                [
                    ts("Requests by service and response code", [(f"round(sum by (destination_service, response_code) ({req()}), 0.001)", "{{destination_service}} {{response_code}}")], "reqps", WP_DESC),
                    ts("Success rate (non-5xx) by service", [(f"sum by (destination_service) ({req(NOT_5XX)}) / sum by (destination_service) ({req()})", "{{destination_service}}")], "percentunit", "Share of requests not answered with a 5xx."),
                    ts("Requests by response flags", [(f"sum by (destination_service, response_flags) ({req()})", "{{destination_service}} {{response_flags}}")], "reqps", RESP_FLAG_DESC),
                    ts("Requests by protocol", [(f"sum by (request_protocol) ({req()})", "{{request_protocol}}")], "reqps", "http (HTTP/1.1 and HTTP/2) or grpc."),
                ],
            ),
            row(
                "Latency",
                [
                    ts("Request duration", [(q(0.5), "P50"), (q(0.9), "P90"), (q(0.99), "P99")], "ms", "istio_request_duration_milliseconds quantiles, all selected services: from the request's first byte to the response's last."),
                    ts("Request duration P90 by service", [(q(0.9, "destination_service"), "{{destination_service}}")], "ms"),
                ],
            ),
            row(
                "Sizes",
                [
                    ts(
                        "Request sizes",
                        [
                            (size("istio_request_bytes_bucket", 0.5), "P50"),
                            (size("istio_request_bytes_bucket", 0.9), "P90"),
                            (size("istio_request_bytes_bucket", 0.99), "P99"),
                        ],
                        "bytes",
                        "istio_request_bytes quantiles (request body; buckets are decades, 1 B to 1 GB).",
                    ),
                    ts(
                        "Response sizes",
                        [
                            (size("istio_response_bytes_bucket", 0.5), "P50"),
                            (size("istio_response_bytes_bucket", 0.9), "P90"),
                            (size("istio_response_bytes_bucket", 0.99), "P99"),
                        ],
                        "bytes",
                        "istio_response_bytes quantiles (response body; buckets are decades, 1 B to 1 GB).",
                    ),
                ],
            ),
            row(
                "Callers (by source principal)",
                [
                    table(
                        "Requests by source principal",
                        [
                            ("Requests/s", f"sum by (source_principal, destination_service) ({req()})", "reqps"),
                            ("Success rate", f"sum by (source_principal, destination_service) ({req(NOT_5XX)}) / sum by (source_principal, destination_service) ({req()})", "percentunit"),
                            ("P90 duration", f"histogram_quantile(0.9, sum by (le, source_principal, destination_service) ({rate('istio_request_duration_milliseconds_bucket', sel)}))", "ms"),
                        ],
                        "source_principal, destination_service",
                        "The mTLS identity of each caller (the HBONE peer of the waypoint), per destination service.",
                        w=12,
                    ),
                    ts("Requests by source principal and response code", [(f"sum by (source_principal, response_code) ({req()})", "{{source_principal}} {{response_code}}")], "reqps", "The mTLS identity of the caller (the HBONE peer of the waypoint)."),
                ],
            ),
            row(
                "xDS, certificates and errors",
                [
                    ts("xDS messages received by type", [(f"sum by (instance, url) ({rate('istio_xds_message_total', w)}{on_wp})", "{{instance}} {{url}}")], "short", "Route (ServiceRoutes) and address pushes from istiod-lite.", w=8),
                    ts("xDS bytes received by type", [(f"sum by (instance, url) ({rate('istio_xds_message_bytes_total', w)}{on_wp})", "{{instance}} {{url}}")], "Bps", w=8),
                    ts("xDS connection terminations by reason", [(f"sum by (instance, reason) (increase(istio_xds_connection_terminations_total{{{w}}}[{R}]){on_wp})", "{{instance}} {{reason}}")], "short", "Streams to the control plane that ended; the waypoint keeps routing with its last good config meanwhile.", w=8),
                    ts("Certificates fetched", [(f"sum by (instance) ({rate('waypoint_certificates_issued_total', w)})", "{{instance}}")], "short", "The waypoint's own certificate (first fetch and rotation at half life).", w=8),
                    ts("Rejected HBONE streams by reason", [(f"sum by (instance, reason) ({rate('waypoint_rejected_streams_total', w)})", "{{instance}} {{reason}}")], "short", "unknown_authority (503 at the CONNECT), not_connect (400), tls (failed mTLS handshake).", w=8),
                    ts("Retries by outcome", [(f"sum by (instance, outcome) ({rate('waypoint_retries_total', w)})", "{{instance}} {{outcome}}")], "short", "sent = retries made (503, connect failures, route retry policies); budget_exhausted = retries skipped by the retry budget.", w=8),
                ],
            ),
            row(
                "Process",
                [
                    ts("Memory (RSS) by waypoint", [(f"process_resident_memory_bytes{{{w}}}{on_wp}", "{{instance}}")], "bytes", "Resident memory of each waypoint process.", w=8),
                    ts("CPU by waypoint", [(f"rate(process_cpu_seconds_total{{{w}}}[$__rate_interval]){on_wp}", "{{instance}}")], "percentunit", "CPU seconds per second (1 = one core).", w=8),
                    ts("Open file descriptors by waypoint", [(f"process_open_fds{{{w}}}{on_wp}", "{{instance}}")], "short", "Sockets and files held.", w=8),
                ],
            ),
        ],
    )


DASHBOARDS = {
    "mesh.json": mesh,
    "service.json": service,
    "workload.json": workload,
    "ztunnel.json": ztunnel,
    "waypoint.json": waypoint,
    "control-plane.json": control_plane,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        path = os.path.join(HERE, name)
        text = render(build)
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        if check:
            stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python3 deploy/grafana/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

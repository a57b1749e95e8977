"""Just enough PromQL and Grafana for the dashboard test: metric names in an expression, template
variable substitution, Grafana's variable query functions, and the Prometheus text format."""

import json
import re
import urllib.error
import urllib.parse
import urllib.request

# Values for Grafana's built-in variables. 1m covers several 1 s scrapes and both traffic rounds.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def metric_names(expr):
    """Metric names an expression selects (identifiers that are not functions, keywords, label
    names or durations), plus any `__name__="..."` matcher."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s, flags=re.I)
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)", s):
        if re.match(r"\s*\(", s[m.end() :]) or m.group(1).lower() in _KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def variables_in(text):
    """Names of the template variables `text` references."""
    return {a or b or c for a, b, c in _VAR.findall(text)}


def substitute(text, values):
    """Replaces $var, ${var}, ${var:fmt} and [[var]] with `values` (then the built-ins)."""

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(name)

    return _VAR.sub(repl, text)


def range_durations(expr):
    """Every `[...]` range in an expression (to check rates use $__rate_interval)."""
    return re.findall(r"\[([^\]]*)\]", _STRING.sub('""', expr))


# -- Prometheus HTTP API -------------------------------------------------------------------------


class PromError(Exception):
    pass


class Prometheus:
    def __init__(self, addr):
        self.base = f"http://{addr}"

    def get(self, path, params=None):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except ValueError:
                raise PromError(f"HTTP {e.code} from {path}") from e
        if body.get("status") != "success":
            raise PromError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr):
        """Instant query at now: a list of {metric, value}."""
        data = self.get("/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PromError(f"unexpected result type {data['resultType']}")
        return data["result"]

    def targets(self):
        return self.get("/api/v1/targets")["activeTargets"]

    def variable_values(self, query):
        """Evaluates a Grafana Prometheus variable query as Grafana does; returns the raw texts."""
        q = query.strip()
        m = re.fullmatch(r"label_values\(\s*(\w+)\s*\)", q)
        if m:
            return self.get(f"/api/v1/label/{m.group(1)}/values")
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", q, flags=re.S)
        if m:
            series = self.get("/api/v1/series", {"match[]": m.group(1).strip()})
            return sorted({s[m.group(2)] for s in series if m.group(2) in s})
        m = re.fullmatch(r"query_result\((.*)\)", q, flags=re.S)
        if m:
            out = []
            for r in self.query(m.group(1)):
                metric = dict(r["metric"])
                text = metric.pop("__name__", "")
                text += "{" + ",".join(f'{k}="{v}"' for k, v in metric.items()) + "}"
                out.append(f"{text} {r['value'][1]} {int(float(r['value'][0]) * 1000)}")
            return out
        raise PromError(f"unsupported variable query {query!r} (label_values or query_result)")


def variable_query_metrics(query):
    """Metric names a Grafana variable query selects."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", q, flags=re.S)
    if m:
        return metric_names(m.group(1))
    m = re.fullmatch(r"query_result\((.*)\)", q, flags=re.S)
    if m:
        return metric_names(m.group(1))
    return set()


def apply_regex(texts, regex):
    """Grafana's variable regex: /pattern/flags; capture group 1 if any, else the whole match."""
    if not regex:
        return sorted(set(texts))
    m = re.fullmatch(r"/(.*)/([gimsuy]*)", regex, flags=re.S)
    pattern, flags = (m.group(1), m.group(2)) if m else (regex, "")
    rx = re.compile(pattern, re.I if "i" in flags else 0)
    out = set()
    for t in texts:
        mm = rx.search(t)
        if mm:
            out.add(mm.group(1) if mm.groups() else mm.group(0))
    return sorted(out)


# -- text exposition format ------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """[(name, {labels}, value)] of a /metrics page, and the set of metric names it holds."""
    samples, names = [], set()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        samples.append((m.group(1), labels, value))
        names.add(m.group(1))
    return samples, names


def total(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def self_test():
    cases = {
        'sum by (a, b) (rate(x_total{reporter="source",y=~"$v"}[$__rate_interval])) / sum(rate(y_total[1m]))': {"x_total", "y_total"},
        "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))": {"h_bucket"},
        "sum(a) - sum(b) or vector(0)": {"a", "b"},
        "round(sum(rate(r_total{code!~\"5..\"}[1m])), 0.001) > bool 1e3": {"r_total"},
        'count(istio_build{component="ztunnel"}) offset 5m': {"istio_build"},
        'x_total * on (instance) group_left(tag) istio_build': {"x_total", "istio_build"},
        '{__name__="named_metric"}': {"named_metric"},
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        assert got == want, f"{expr}: got {got}, want {want}"
    assert substitute('a{x="$ns",y="${wl}"}[$__rate_interval]', {"ns": "n", "wl": "w"}) == 'a{x="n",y="w"}[1m]'
    assert apply_regex(['{destination_workload_namespace="demo-b"} 1 2', '{source_workload_namespace="demo-a"} 1 2'], '/.*_namespace="([^"]*)".*/') == ["demo-a", "demo-b"]
    assert variable_query_metrics('label_values(m_total{a="b"}, a)') == {"m_total"}
    assert variable_query_metrics("label_values(a)") == set()
    assert range_durations('rate(a[$__rate_interval]) + rate(b{c="[x]"}[5m])') == ["$__rate_interval", "5m"]

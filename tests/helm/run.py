#!/usr/bin/env python3
"""Tests the Helm chart (deploy/helm/ambient-rs), its CRDs, the CNI installer and the image recipes.

Renders the chart with a Helm-faithful renderer (a `helm` binary on PATH if there is one, else
deploy/helm/render: Go's text/template + sprig, built offline from Debian's Go packages) for the
default values and several non-default value sets, then checks:

- every rendered object against the Kubernetes schemas (PyPI kubernetes-validate, strict, for
  the pinned Kubernetes versions below);
- values.yaml against values.schema.json (PyPI jsonschema), invalid value sets rejected by both
  the schema and the renderer, every key of values.yaml used by a template and every
  `.Values.x` a template reads defined in values.yaml;
- the security-relevant bits (ztunnel capabilities exactly NET_ADMIN/SYS_ADMIN/NET_RAW, no RBAC
  for ztunnel, istiod-lite's ClusterRole least-privilege), probes, ports, scrape annotations,
  the projected istio-ca token, the CNI hostPaths, ztunnel's root from the ConfigMap istiod-lite
  publishes (its ConfigMap access limited to that name);
- the environment variables set on containers are ones the binaries read (constants grepped from
  ztunnel/src/config.rs and istiod-lite/src/config.rs);
- the dashboard ConfigMaps hold exactly deploy/grafana/*.json;
- the CRD schemas accept real Istio/Gateway API objects (examples/ and samples here) and reject
  misspelt fields, and deploy/helm/crdgen.py --check passes;
- install-cni.sh chains/unchains ambient-cni in a scratch CNI directory;
- every binary a Dockerfile copies is a real [[bin]]/package of the workspace.

    python3 tests/helm/run.py            # all checks
    python3 tests/helm/run.py --keep     # keep the rendered manifests (prints the directory)

Exit status 0 when every check passed (a missing tool skips its checks with a printed reason,
except when CI=true, where it fails), 1 otherwise. The last line is "N passed, N failed".
"""

import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHART = os.path.join(ROOT, "deploy", "helm", "ambient-rs")
RENDER_SRC = os.path.join(ROOT, "deploy", "helm", "render")
GRAFANA = os.path.join(ROOT, "deploy", "grafana")
DOCKER = os.path.join(ROOT, "deploy", "docker")
CI = os.environ.get("CI") == "true"

# Kubernetes versions whose schemas the rendered objects must satisfy: the chart's minimum
# (Chart.yaml kubeVersion) and a current one. kubernetes-validate ships both.
KUBE_VERSIONS = ["1.27.0", "1.31.0"]
# Binaries of components that do not exist yet: their Dockerfile is checked once they do.
PENDING_BINARIES = {"waypoint": "the waypoint crate (issue 4)"}

passed = 0
failed = 0
skipped = []


def ok(msg):
    global passed
    passed += 1
    print(f"ok    {msg}", flush=True)


def fail(msg):
    global failed
    failed += 1
    print(f"FAIL  {msg}", flush=True)


def check(cond, msg, why=""):
    if cond:
        ok(msg)
    else:
        fail(f"{msg}: {why}" if why else msg)
    return cond


def skip(what, why):
    if CI:
        fail(f"{what}: {why} (CI=true: a missing tool is a failure; run scripts/prereqs.sh as root)")
    else:
        skipped.append(what)
        print(f"skip  {what}: {why}", flush=True)


try:
    import yaml
except ImportError:  # pragma: no cover
    print("tests/helm: PyYAML missing (python3 -m pip install pyyaml)")
    sys.exit(0 if not CI else 1)


# -- renderer ------------------------------------------------------------------------------------------


def renderer():
    """Returns (argv prefix, description) of a helm-faithful renderer, or (None, reason)."""
    helm = shutil.which("helm")
    if helm:
        return [helm], f"helm ({helm})"
    out = os.path.join(ROOT, "target", "helm-render", "render")
    src = os.path.join(RENDER_SRC, "main.go")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        if not shutil.which("go"):
            return None, "neither helm nor go is installed (scripts/prereqs.sh installs golang-go and the sprig packages)"
        r = subprocess.run([os.path.join(RENDER_SRC, "build.sh"), out], capture_output=True, text=True)
        if r.returncode != 0:
            return None, "building deploy/helm/render failed:\n" + r.stdout + r.stderr
    return [out], f"deploy/helm/render ({out})"


def render(prefix, values=None, sets=(), namespace="istio-system", kube="1.31.0", expect_fail=False):
    """Renders the chart; returns (objects, stdout, stderr, returncode)."""
    args = prefix + ["template", "ambient-rs", CHART, "--namespace", namespace, "--kube-version", "v" + kube]
    tmp = None
    if values is not None:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(values, tmp)
        tmp.close()
        args += ["-f", tmp.name]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True)
    if tmp:
        os.unlink(tmp.name)
    objs = []
    if r.returncode == 0:
        for doc in yaml.safe_load_all(r.stdout):
            if doc:
                objs.append(doc)
    return objs, r.stdout, r.stderr, r.returncode


# -- helpers -----------------------------------------------------------------------------------------------


def find(objs, kind, name=None):
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs, kind, name):
    xs = find(objs, kind, name)
    return xs[0] if len(xs) == 1 else None


def containers(obj):
    spec = obj["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("containers", []) + spec.get("initContainers", [])}


def env_constants(path):
    """Environment variable names a binary reads: the string constants of its config.rs."""
    text = open(os.path.join(ROOT, path)).read()
    names = set(re.findall(r'pub const [A-Z0-9_]+: &str = "([A-Z][A-Z0-9_]*)";', text))
    return names


def rust_const(path, name):
    """The value of string constant `name` in a Rust source file (None when absent)."""
    m = re.search(r'pub const ' + name + r': &str = "([^"]*)";', open(os.path.join(ROOT, path)).read())
    return m.group(1) if m else None


def reads_rust_log(crate):
    return any("RUST_LOG" in open(f).read() for f in glob.glob(os.path.join(ROOT, crate, "src", "**", "*.rs"), recursive=True))


def flatten(d, prefix=""):
    """Leaf paths of values.yaml; lists and empty maps are leaves."""
    out = []
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out += flatten(v, p)
        else:
            out.append(p)
    return out


def template_texts():
    return {os.path.relpath(f, CHART): open(f).read() for f in sorted(glob.glob(os.path.join(CHART, "templates", "*")))}


# -- checks ----------------------------------------------------------------------------------------------


def check_values_schema():
    try:
        import jsonschema
    except ImportError:
        skip("values.schema.json checks", "PyPI jsonschema not installed")
        return
    schema = json.load(open(os.path.join(CHART, "values.schema.json")))
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    jsonschema.Draft7Validator.check_schema(schema)
    errs = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    check(not errs, "values.yaml satisfies values.schema.json",
          "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errs))
    for path, bad in INVALID_VALUES:
        v = copy.deepcopy(values)
        node = v
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = bad
        errs = list(jsonschema.Draft7Validator(schema).iter_errors(v))
        check(errs, f"schema rejects {path}={bad!r}", "accepted")


# (values path, invalid value): each must be rejected by the schema and by the renderer.
INVALID_VALUES = [
    ("pilot.replicaCount", "two"),
    ("pilot.replicaCont", 2),  # misspelt key
    ("cni.cniBinDir", "opt/cni/bin"),
    ("global.imagePullPolicy", "Sometimes"),
    ("meshConfig.trustDomain", "bad/domain"),
    ("ztunnel.env", {"lower-case": "x"}),
    ("pilot.maxWorkloadCertTTL", "a day"),
    ("base.enableGatewayAPICRDs", "yes"),
]


def check_values_used():
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    texts = template_texts()
    alltext = "\n".join(texts.values())
    refs = set(re.findall(r"\bValues((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", alltext))
    refs = {r[1:] for r in refs}
    unused = []
    for leaf in flatten(values):
        parts = leaf.split(".")
        used = any(".".join(parts[:n]) in refs for n in range(2, len(parts) + 1))
        if not used:
            unused.append(leaf)
    check(not unused, "every key of values.yaml is used by a template", "never referenced: " + ", ".join(unused))

    known = set()
    for leaf in flatten(values):
        parts = leaf.split(".")
        for n in range(1, len(parts) + 1):
            known.add(".".join(parts[:n]))
    undefined = sorted(r for r in refs if r not in known and not any(r.startswith(k + ".") for k in known if is_free_map(values, k)))
    check(not undefined, "every .Values path a template reads is defined in values.yaml", ", ".join(undefined))


def is_free_map(values, path):
    node = values
    for k in path.split("."):
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return isinstance(node, dict) and not node


def check_kube_schemas(objs, label):
    try:
        import kubernetes_validate
    except ImportError:
        skip(f"[{label}] Kubernetes schema validation", "PyPI kubernetes-validate not installed")
        return
    for ver in KUBE_VERSIONS:
        bad = []
        for o in objs:
            try:
                kubernetes_validate.validate(o, ver, strict=True)
            except kubernetes_validate.ValidationError as e:
                bad.append(f"{o['kind']}/{o['metadata']['name']}: {e.message} at {'.'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                bad.append(f"{o['kind']}/{o['metadata']['name']}: no schema ({e})")
        check(not bad, f"[{label}] {len(objs)} objects valid for Kubernetes {ver} (strict)", "; ".join(bad))


def check_common(objs, values, label, namespace):
    """Assertions that hold for every value set."""
    ns_objs = [o for o in objs if o["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")]
    dash_ns = values["dashboards"]["namespace"] or namespace
    wrong_ns = [f"{o['kind']}/{o['metadata']['name']}" for o in ns_objs
                if o["metadata"].get("namespace") not in (namespace, dash_ns)]
    check(not wrong_ns, f"[{label}] namespaced objects are in the release namespace", ", ".join(wrong_ns))

    # ztunnel: no RBAC at all, so certainly no cluster-wide write verbs.
    bindings = find(objs, "ClusterRoleBinding") + find(objs, "RoleBinding")
    zt_bound = [b["metadata"]["name"] for b in bindings for s in b.get("subjects", []) if s.get("name") == "ztunnel"]
    check(not zt_bound, f"[{label}] ztunnel's ServiceAccount is bound to no Role or ClusterRole", ", ".join(zt_bound))
    sa = one(objs, "ServiceAccount", "ztunnel")
    check(sa is not None and sa.get("automountServiceAccountToken") is False,
          f"[{label}] ztunnel's ServiceAccount does not automount an API token")

    # istiod-lite ClusterRole: least privilege.
    cr = [c for c in find(objs, "ClusterRole") if c["metadata"]["name"].startswith("istiod-lite")]
    if check(len(cr) == 1, f"[{label}] one istiod-lite ClusterRole"):
        problems = []
        writes = set()
        for r in cr[0]["rules"]:
            for g in r.get("apiGroups", []):
                for res in r.get("resources", []):
                    for v in r["verbs"]:
                        if "*" in (g, res, v):
                            problems.append(f"wildcard in {g}/{res}/{v}")
                        if res == "secrets":
                            problems.append("access to secrets")
                        if v in ("delete", "deletecollection", "escalate", "bind", "impersonate"):
                            problems.append(f"{v} on {g}/{res}")
                        if v not in ("get", "list", "watch"):
                            writes.add((g, res, v))
        # Status is written with patches only (server-side apply for Gateways, merge patches
        # for routes and policies).
        status_writes = {("gateway.networking.k8s.io", res, "patch")
                         for res in ("gateways/status", "httproutes/status", "grpcroutes/status")}
        status_writes |= {("security.istio.io", res, "patch")
                          for res in ("authorizationpolicies/status", "requestauthentications/status")}
        # The root certificate publisher creates and patches istio-ca-root-cert ConfigMaps.
        configmap_writes = {("", "configmaps", "create"), ("", "configmaps", "patch")}
        allowed_writes = {("authentication.k8s.io", "tokenreviews", "create")} | status_writes | configmap_writes
        for g, res in (("apps", "deployments"), ("", "services"), ("", "serviceaccounts")):
            allowed_writes |= {(g, res, v) for v in ("create", "update", "patch")}
        extra = writes - allowed_writes
        if extra:
            problems.append("unexpected write verbs " + ", ".join(f"{g}/{r}:{v}" for g, r, v in sorted(extra)))
        must = {("authentication.k8s.io", "tokenreviews", "create"), ("apps", "deployments", "create")} | status_writes
        must |= configmap_writes
        # Every ConfigMap verb but create (which cannot be) is limited to istio-ca-root-cert.
        for r in cr[0]["rules"]:
            if "configmaps" in r.get("resources", []) and set(r["verbs"]) != {"create"} \
                    and r.get("resourceNames") != ["istio-ca-root-cert"]:
                problems.append(f"configmaps {r['verbs']} not limited to resourceNames [istio-ca-root-cert]")
        missing = must - writes
        if missing:
            problems.append("missing " + ", ".join(f"{g}/{r}:{v}" for g, r, v in sorted(missing)))
        reads = {(g, res) for r in cr[0]["rules"] for g in r["apiGroups"] for res in r["resources"] if "watch" in r["verbs"]}
        for need in [("", "pods"), ("", "namespaces"), ("", "services"), ("", "serviceaccounts"), ("", "nodes"),
                     ("discovery.k8s.io", "endpointslices"), ("gateway.networking.k8s.io", "gateways"),
                     ("gateway.networking.k8s.io", "httproutes"), ("gateway.networking.k8s.io", "grpcroutes"),
                     ("security.istio.io", "authorizationpolicies"), ("security.istio.io", "peerauthentications"),
                     ("security.istio.io", "requestauthentications"), ("networking.istio.io", "destinationrules"),
                     ("networking.istio.io", "virtualservices"), ("", "configmaps")]:
            if need not in reads:
                problems.append(f"cannot watch {need[0] or 'core'}/{need[1]}")
        check(not problems, f"[{label}] istiod-lite ClusterRole is least-privilege and covers what it reads", "; ".join(problems))
    role = one(objs, "Role", "istiod-lite")
    check(role is not None and all(r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"] for r in role["rules"]),
          f"[{label}] istiod-lite's namespaced Role is leases only (leader election)")

    # istiod-lite Deployment, Service, PDB.
    dep = one(objs, "Deployment", "istiod-lite")
    if check(dep is not None, f"[{label}] istiod-lite Deployment rendered"):
        c = containers(dep)["discovery"]
        probe = c.get("readinessProbe", {}).get("httpGet", {})
        check(probe.get("path") == "/ready" and probe.get("port") == 15014, f"[{label}] istiod-lite readiness probe is GET :15014/ready", str(probe))
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "15014",
              f"[{label}] istiod-lite pods carry Prometheus scrape annotations for 15014", str(ann))
        check(c["resources"] == values["pilot"]["resources"], f"[{label}] istiod-lite resources = pilot.resources", str(c["resources"]))
        check(dep["spec"]["replicas"] == values["pilot"]["replicaCount"], f"[{label}] replicas = pilot.replicaCount")
        tag = values["global"]["tag"] or yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))["appVersion"]
        want = f"{values['global']['hub']}/{values['pilot']['image']}:{tag}"
        check(c["image"] == want, f"[{label}] istiod-lite image is global.hub/pilot.image:global.tag", f"{c['image']} != {want}")
        envs = {e["name"]: e.get("value") for e in c.get("env", [])}
        check(envs.get("TRUST_DOMAIN") == values["meshConfig"]["trustDomain"], f"[{label}] istiod-lite TRUST_DOMAIN = meshConfig.trustDomain")
        check(envs.get("ROOT_NAMESPACE") == (values["meshConfig"]["rootNamespace"] or namespace), f"[{label}] ROOT_NAMESPACE = meshConfig.rootNamespace or the release namespace")
        check(("CACERTS_DIR" in envs) == bool(values["pilot"]["caCertsSecret"]), f"[{label}] CACERTS_DIR set exactly when pilot.caCertsSecret is")
    svc = one(objs, "Service", "istiod")
    if check(svc is not None, f"[{label}] Service istiod rendered"):
        ports = sorted(p["port"] for p in svc["spec"]["ports"])
        check(ports == [15010, 15012, 15014], f"[{label}] Service istiod exposes 15010/15012/15014", str(ports))
    pdb = find(objs, "PodDisruptionBudget")
    check(bool(pdb) == values["global"]["defaultPodDisruptionBudget"]["enabled"], f"[{label}] PodDisruptionBudget follows global.defaultPodDisruptionBudget.enabled")

    # ztunnel DaemonSet.
    ds = one(objs, "DaemonSet", "ztunnel")
    if not check(ds is not None, f"[{label}] ztunnel DaemonSet rendered"):
        return
    spec = ds["spec"]["template"]["spec"]
    cs = containers(ds)
    z = cs["istio-proxy"]
    caps = z["securityContext"]["capabilities"]
    check(sorted(caps.get("add", [])) == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"] and caps.get("drop") == ["ALL"]
          and z["securityContext"].get("privileged") is False and z["securityContext"].get("allowPrivilegeEscalation") is False,
          f"[{label}] ztunnel capabilities are exactly NET_ADMIN, SYS_ADMIN, NET_RAW (drop ALL, not privileged)", str(z["securityContext"]))
    for name, c in cs.items():
        if name != "istio-proxy":
            sc = c.get("securityContext", {})
            check(not sc.get("capabilities", {}).get("add") and sc.get("privileged") is False,
                  f"[{label}] container {name} adds no capabilities and is not privileged", str(sc))
    check(spec.get("priorityClassName") == "system-node-critical", f"[{label}] ztunnel priorityClassName system-node-critical")
    tol = spec.get("tolerations", [])
    check(tol == values["ztunnel"]["tolerations"], f"[{label}] ztunnel tolerations = ztunnel.tolerations", str(tol))
    probe = z.get("readinessProbe", {}).get("httpGet", {})
    check(probe.get("path") == "/healthz/ready" and probe.get("port") == 15021, f"[{label}] ztunnel readiness probe is GET :15021/healthz/ready", str(probe))
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "15020",
          f"[{label}] ztunnel pods carry Prometheus scrape annotations for 15020", str(ann))
    check(z["resources"] == values["ztunnel"]["resources"], f"[{label}] ztunnel resources = ztunnel.resources")
    vols = {v["name"]: v for v in spec["volumes"]}
    token = [s["serviceAccountToken"] for v in vols.values() for s in v.get("projected", {}).get("sources", []) if "serviceAccountToken" in s]
    check(len(token) == 1 and token[0]["audience"] == "istio-ca", f"[{label}] projected ServiceAccount token with audience istio-ca", str(token))
    hostpaths = {v["hostPath"]["path"] for v in vols.values() if "hostPath" in v}
    want_hp = {"/var/run/ambient-rs"}
    if values["cni"]["enabled"]:
        want_hp |= {values["cni"]["cniBinDir"], values["cni"]["cniConfDir"]}
    check(hostpaths == want_hp, f"[{label}] ztunnel hostPaths are exactly {sorted(want_hp)}", str(sorted(hostpaths)))
    check(("install-cni" in cs) == values["cni"]["enabled"], f"[{label}] install-cni sidecar present exactly when cni.enabled")
    zenv = {e["name"]: e.get("value") for e in z.get("env", [])}
    check(zenv.get("TRUST_DOMAIN") == values["meshConfig"]["trustDomain"], f"[{label}] ztunnel TRUST_DOMAIN = meshConfig.trustDomain")
    check(zenv.get("INPOD_UDS", "").startswith("/var/run/ambient-rs/"), f"[{label}] ztunnel's enrollment socket is on the hostPath")
    # ztunnel's root is the ConfigMap istiod-lite publishes (name and key from its source).
    published = rust_const("istiod-lite/src/controller/waypoint.rs", "ROOT_CERT_CONFIGMAP")
    key = rust_const("istiod-lite/src/controller/root_cert.rs", "ROOT_CERT_KEY")
    root_vols = {n for n, v in vols.items() if v.get("configMap", {}).get("name") == published}
    root_mounts = [m["mountPath"] for m in z.get("volumeMounts", []) if m["name"] in root_vols]
    check(published == "istio-ca-root-cert" and len(root_mounts) == 1
          and zenv.get("XDS_ROOT_CA") == f"{root_mounts[0]}/{key}",
          f"[{label}] ztunnel's XDS_ROOT_CA is {key} of the ConfigMap istiod-lite publishes ({published})",
          f"mounts {root_mounts}, XDS_ROOT_CA {zenv.get('XDS_ROOT_CA')}")

    # Environment variables are ones the binaries read.
    allowed = {
        "istio-proxy": env_constants("ztunnel/src/config.rs") | ({"RUST_LOG"} if reads_rust_log("ztunnel") else set()),
        "discovery": env_constants("istiod-lite/src/config.rs") | ({"RUST_LOG"} if reads_rust_log("istiod-lite") else set()),
        "install-cni": set(),  # configured by arguments only
    }
    for wl in [dep, ds]:
        for name, c in containers(wl).items():
            names = {e["name"] for e in c.get("env", [])}
            unknown = names - allowed.get(name, set())
            check(not unknown, f"[{label}] {wl['kind']} {wl['metadata']['name']} container {name}: every env var is read by the binary",
                  "not read: " + ", ".join(sorted(unknown)))

    # install-cni ConfigMap = the script.
    if values["cni"]["enabled"]:
        cm = [c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-cni-install")]
        script = open(os.path.join(CHART, "files", "install-cni.sh")).read()
        check(len(cm) == 1 and cm[0]["data"]["install-cni.sh"].rstrip("\n") == script.rstrip("\n"),
              f"[{label}] install-cni ConfigMap holds files/install-cni.sh")
        args = cs["install-cni"]["command"]
        check(args[args.index("--dns-capture") + 1] == str(values["cni"]["ambient"]["dnsCapture"]).lower(),
              f"[{label}] install-cni --dns-capture = cni.ambient.dnsCapture")

    # Dashboards.
    dash = [c for c in find(objs, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(GRAFANA, "*.json")))
    if values["dashboards"]["enabled"]:
        got = {}
        for c in dash:
            got.update(c["data"])
        same = sorted(got) == files and all(
            got[f] == open(os.path.join(GRAFANA, f)).read().rstrip("\n") and json.loads(got[f]) == json.load(open(os.path.join(GRAFANA, f)))
            for f in files)
        check(same, f"[{label}] dashboard ConfigMaps (grafana_dashboard: \"1\") hold exactly deploy/grafana/*.json", f"{sorted(got)} vs {files}")
        check(all(c["metadata"]["namespace"] == dash_ns for c in dash), f"[{label}] dashboard ConfigMaps in dashboards.namespace")
    else:
        check(not dash, f"[{label}] no dashboard ConfigMaps when dashboards.enabled=false")

    crds = {c["metadata"]["name"] for c in find(objs, "CustomResourceDefinition")}
    istio = {"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io", "requestauthentications.security.istio.io",
             "destinationrules.networking.istio.io", "virtualservices.networking.istio.io"}
    gw = {"gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io",
          "grpcroutes.gateway.networking.k8s.io"}
    want = (istio if values["base"]["enableCRDTemplates"] else set()) | (gw if values["base"]["enableGatewayAPICRDs"] else set())
    check(crds == want, f"[{label}] CRDs follow base.enableCRDTemplates / base.enableGatewayAPICRDs", f"{sorted(crds)} vs {sorted(want)}")


def merged(overrides):
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict) and v:
                merge(a[k], v)
            else:
                a[k] = v
        return a
    return merge(values, copy.deepcopy(overrides))


CUSTOM = {
    "global": {"hub": "registry.example.com/mesh", "tag": "1.2.3", "imagePullPolicy": "Always", "imagePullSecrets": ["regcred"],
               "multiCluster": {"clusterName": "east"}},
    "meshConfig": {"trustDomain": "example.org", "rootNamespace": "mesh-root"},
    "base": {"enableGatewayAPICRDs": True},
    "pilot": {"replicaCount": 2, "caCertsSecret": "cacerts", "maxWorkloadCertTTL": "12h",
              "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
              "env": {"PUSH_DEBOUNCE_MS": 50}, "podAnnotations": {"example.com/team": "mesh"},
              "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
              "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
              "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
                  "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "istiod-lite"}}}}]}}},
    "ztunnel": {"resources": {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "2Gi"}},
                "tolerations": [], "logLevel": "info,access=off", "env": {"SECRET_TTL": "12h", "POOL_MAX_STREAMS_PER_CONNECTION": 200},
                "terminationGracePeriodSeconds": 10, "podLabels": {"team": "mesh"}},
    "cni": {"cniBinDir": "/home/kubernetes/bin", "cniConfFileName": "10-calico.conflist", "ambient": {"dnsCapture": True}},
    "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "Istio"}},
}
MINIMAL_SETS = ["base.enableCRDTemplates=false", "cni.enabled=false", "dashboards.enabled=false",
                "global.defaultPodDisruptionBudget.enabled=false", "global.imagePullPolicy="]
MINIMAL = {"base": {"enableCRDTemplates": False}, "cni": {"enabled": False}, "dashboards": {"enabled": False},
           "global": {"defaultPodDisruptionBudget": {"enabled": False}, "imagePullPolicy": ""}}


def check_value_sets(prefix, keep):
    sets = [
        ("default", None, [], "istio-system", merged({})),
        ("custom", CUSTOM, [], "istio-system", merged(CUSTOM)),
        ("minimal --set", None, MINIMAL_SETS, "mesh", merged(MINIMAL)),
    ]
    rendered = {}
    for label, vals, sets_, ns, effective in sets:
        objs, out, err, rc = render(prefix, vals, sets_, ns)
        if not check(rc == 0, f"[{label}] chart renders", err.strip()):
            continue
        if keep:
            with open(os.path.join(keep, label.split()[0] + ".yaml"), "w") as f:
                f.write(out)
        rendered[label] = objs
        check_kube_schemas(objs, label)
        check_common(objs, effective, label, ns)
    # Specific to the custom set.
    objs = rendered.get("custom")
    if objs:
        ds = one(objs, "DaemonSet", "ztunnel")
        z = containers(ds)["istio-proxy"]
        check(z["image"] == "registry.example.com/mesh/ztunnel:1.2.3" and z.get("imagePullPolicy") == "Always",
              "[custom] ztunnel image and pull policy from global.hub/tag/imagePullPolicy", z["image"])
        check(ds["spec"]["template"]["spec"].get("imagePullSecrets") == [{"name": "regcred"}], "[custom] imagePullSecrets from global.imagePullSecrets")
        zenv = {e["name"]: e.get("value") for e in z["env"]}
        check(zenv.get("SECRET_TTL") == "12h" and zenv.get("POOL_MAX_STREAMS_PER_CONNECTION") == "200" and zenv.get("RUST_LOG") == "info,access=off"
              and zenv.get("TERMINATION_GRACE_PERIOD_SECONDS") == "10s" and zenv.get("CLUSTER_ID") == "east",
              "[custom] ztunnel env from ztunnel.env/logLevel/terminationGracePeriodSeconds/global.multiCluster", str(zenv))
        check("tolerations" not in ds["spec"]["template"]["spec"], "[custom] ztunnel.tolerations=[] renders no tolerations")
        args = containers(ds)["install-cni"]["command"]
        check(args[args.index("--conf-file") + 1] == "10-calico.conflist", "[custom] install-cni --conf-file = cni.cniConfFileName")
    objs = rendered.get("minimal --set")
    if objs:
        ds = one(objs, "DaemonSet", "ztunnel")
        check("imagePullPolicy" not in containers(ds)["istio-proxy"], "[minimal] global.imagePullPolicy='' leaves Kubernetes' default")
        check(containers(ds)["istio-proxy"]["env"][1]["value"] == "https://istiod.mesh.svc:15012", "[minimal] XDS_ADDRESS follows the release namespace")

    # Invalid value sets are refused by the renderer (Helm validates values.schema.json too).
    for path, bad in INVALID_VALUES:
        doc = {}
        node = doc
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = bad
        _, _, err, rc = render(prefix, doc)
        check(rc != 0 and "schema" in err, f"renderer refuses {path}={bad!r} (values.schema.json)", f"rc={rc} {err.strip()[:200]}")
    _, _, err, rc = render(prefix, None, [], "istio-system", kube="1.26.0")
    check(rc != 0 and "kubeVersion" in err, "renderer refuses Kubernetes 1.26 (Chart.yaml kubeVersion >=1.27)", err.strip()[:200])


# -- CRD schemas against real objects -----------------------------------------------------------------


def strict(schema):
    """The CRD schema as JSON Schema, with kubectl's strict field validation: unknown fields are
    errors except under x-kubernetes-preserve-unknown-fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
        if schema.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        if schema.get("format") in ("int32", "int64", "double", "binary", "date-time"):
            out.pop("format", None)
        return out
    if isinstance(schema, list):
        return [strict(x) for x in schema]
    return schema


SAMPLES_OK = [
    {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "bookinfo"},
     "spec": {"host": "reviews.bookinfo.svc.cluster.local",
              "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                                "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "30ms", "tcpKeepalive": {"time": "7200s", "interval": "75s"}},
                                                   "http": {"http2MaxRequests": 1000, "maxRequestsPerConnection": 10}},
                                "outlierDetection": {"consecutive5xxErrors": 7, "interval": "5m", "baseEjectionTime": "15m", "maxEjectionPercent": 50}},
              "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                          {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}}}}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "bookinfo"},
     "spec": {"hosts": ["reviews"], "http": [
         {"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api"}}],
          "route": [{"destination": {"host": "reviews", "subset": "v2"}}], "timeout": "2s",
          "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,connect-failure"},
          "fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": 10}}}},
         {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90}, {"destination": {"host": "reviews", "subset": "v3", "port": {"number": 9080}}, "weight": 10}],
          "mirror": {"host": "reviews", "subset": "v3"}, "mirrorPercentage": {"value": 5.5},
          "headers": {"response": {"set": {"x-mesh": "ambient-rs"}, "remove": ["server"]}}}],
              "tcp": [{"match": [{"port": 27017}], "route": [{"destination": {"host": "mongo", "port": {"number": 5555}}}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "jwt", "namespace": "foo"},
     "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
              "jwtRules": [{"issuer": "issuer-foo", "jwksUri": "https://example.com/.well-known/jwks.json",
                            "fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Bearer "}], "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
                            "forwardOriginalToken": True}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "viewer", "namespace": "bookinfo"},
     "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "productpage"}], "action": "ALLOW",
              "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"], "notIpBlocks": ["10.0.0.0/8"]}}],
                         "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"]}}],
                         "when": [{"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "strict", "namespace": "foo"},
     "spec": {"selector": {"matchLabels": {"app": "finance"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "bookinfo",
                                                                                     "labels": {"istio.io/waypoint-for": "service"}},
     "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "reviews", "namespace": "bookinfo"},
     "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
              "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}, "headers": [{"name": "x-canary", "value": "1"}], "method": "GET"}],
                         "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "waypoint"}]}}],
                         "backendRefs": [{"name": "reviews-v2", "port": 9080, "weight": 90}, {"name": "reviews-v1", "port": 9080, "weight": 10}],
                         "timeouts": {"request": "10s", "backendRequest": "2s"}, "retry": {"attempts": 3, "codes": [503], "backoff": "100ms"}}]}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute", "metadata": {"name": "echo", "namespace": "grpc"},
     "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
              "rules": [{"matches": [{"method": {"service": "echo.Echo", "method": "Say"}}], "backendRefs": [{"name": "echo-v2", "port": 7070}]}]}},
]
SAMPLES_BAD = [
    ({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "typo"},
      "spec": {"rules": [{"from": [{"source": {"notPrincipal": ["x"]}}]}]}}, "misspelt notPrincipal"),
    ({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "act"}, "spec": {"action": "MAYBE"}}, "unknown action"),
    ({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "m"}, "spec": {"mtls": {"mode": "ON"}}}, "unknown mTLS mode"),
    ({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "nohost"}, "spec": {"trafficPolicy": {}}}, "DestinationRule without host"),
    ({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "lb"},
      "spec": {"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN", "consistentHash": {"useSourceIp": True}}}}}, "simple and consistentHash together (a oneof)"),
    ({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "m"},
      "spec": {"http": [{"match": [{"uri": {"exact": "/a", "prefix": "/"}}]}]}}, "StringMatch with two kinds (a oneof)"),
    ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "w"},
      "spec": {"gatewayClassName": "istio-waypoint", "listeners": []}}, "Gateway without listeners"),
    ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
      "spec": {"rules": [{"matches": [{"path": {"type": "Glob", "value": "/"}}]}]}}, "unknown path match type"),
]


def check_crd_schemas(prefix):
    try:
        import jsonschema
    except ImportError:
        skip("CRD schema checks", "PyPI jsonschema not installed")
        return
    r = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "helm", "crdgen.py"), "--check"], capture_output=True, text=True)
    check(r.returncode == 0, "CRD templates match deploy/helm/crdgen.py", r.stdout + r.stderr)
    objs, _, err, rc = render(prefix, None, ["base.enableGatewayAPICRDs=true"])
    if not check(rc == 0, "chart renders with Gateway API CRDs", err):
        return
    schemas = {}
    for crd in find(objs, "CustomResourceDefinition"):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        stored = [v for v in crd["spec"]["versions"] if v["storage"]]
        check(len(stored) == 1, f"CRD {crd['metadata']['name']} has one storage version")
        for v in crd["spec"]["versions"]:
            sch = strict(v["schema"]["openAPIV3Schema"])
            # The API server adds these to every custom resource's schema.
            sch["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
            schemas[(f"{group}/{v['name']}", kind)] = sch
        check(crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
              f"CRD {crd['metadata']['name']} survives helm uninstall (resource-policy keep)")
        preserve = []

        def walk(node, path):
            if isinstance(node, dict):
                if node.get("x-kubernetes-preserve-unknown-fields"):
                    preserve.append(path)
                for k, v in node.items():
                    walk(v, f"{path}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}[{i}]")
        walk(stored[0]["schema"]["openAPIV3Schema"], "")
        allowed = [".properties.status"] if group.endswith("istio.io") else []
        check(preserve == allowed, f"CRD {crd['metadata']['name']}: x-kubernetes-preserve-unknown-fields only where Istio's CRDs have it",
              str(preserve))
    samples = list(SAMPLES_OK)
    for f in sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.y*ml"), recursive=True)):
        for doc in yaml.safe_load_all(open(f)):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).split("/")[0] in ("security.istio.io", "networking.istio.io", "gateway.networking.k8s.io"):
                samples.append(doc)
    for doc in samples:
        key = (doc["apiVersion"], doc["kind"])
        if not check(key in schemas, f"a CRD serves {key[0]} {key[1]}"):
            continue
        errs = list(jsonschema.Draft4Validator(schemas[key]).iter_errors(doc))
        check(not errs, f"CRD schema accepts {doc['kind']} {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}",
              "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errs[:3]))
    for doc, why in SAMPLES_BAD:
        errs = list(jsonschema.Draft4Validator(schemas[(doc["apiVersion"], doc["kind"])]).iter_errors(doc))
        check(errs, f"CRD schema rejects {doc['kind']} with {why}", "accepted")


# -- install-cni.sh -------------------------------------------------------------------------------------


def check_install_cni():
    if not shutil.which("jq"):
        skip("install-cni.sh checks", "jq not installed (apt-get install jq)")
        return
    script = os.path.join(CHART, "files", "install-cni.sh")
    with tempfile.TemporaryDirectory() as d:
        bindir, confdir = os.path.join(d, "bin"), os.path.join(d, "net.d")
        os.makedirs(confdir)
        src = os.path.join(d, "ambient-cni")
        with open(src, "w") as f:
            f.write("#!/bin/sh\necho fake ambient-cni\n")
        os.chmod(src, 0o755)
        primary = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
            {"type": "calico", "ipam": {"type": "calico-ipam"}}, {"type": "portmap", "capabilities": {"portMappings": True}}]}
        conflist = os.path.join(confdir, "10-calico.conflist")
        with open(conflist, "w") as f:
            json.dump(primary, f)
        with open(os.path.join(confdir, "99-loopback.conf"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}, f)

        def sh(*args):
            return subprocess.run(["sh", script, *args, "--bin-dir", bindir, "--conf-dir", confdir, "--source", src], capture_output=True, text=True)

        r = sh("install", "--dns-capture", "true", "--log-level", "debug")
        cur = json.load(open(conflist))
        entry = {"type": "ambient-cni", "ztunnel_socket": "/var/run/ambient-rs/cni.sock", "log_level": "debug", "dns_capture": True}
        check(r.returncode == 0 and cur["plugins"][:2] == primary["plugins"] and cur["plugins"][2:] == [entry],
              "install-cni.sh chains ambient-cni last into the first conflist, keeping the primary plugins", r.stderr + json.dumps(cur))
        check(os.access(os.path.join(bindir, "ambient-cni"), os.X_OK), "install-cni.sh installs the binary (executable)")
        lo = json.load(open(os.path.join(confdir, "99-loopback.conf")))
        check(lo["type"] == "loopback", "install-cni.sh leaves other CNI configs alone")
        r2 = sh("install", "--dns-capture", "true", "--log-level", "debug")
        check(r2.returncode == 0 and json.load(open(conflist)) == cur, "install-cni.sh install is idempotent")
        r3 = sh("install")
        cur3 = json.load(open(conflist))
        check(r3.returncode == 0 and [p for p in cur3["plugins"] if p["type"] == "ambient-cni"] == [dict(entry, log_level="info", dns_capture=False)],
              "install-cni.sh replaces its entry when its settings change (one entry)")
        r4 = sh("uninstall")
        check(r4.returncode == 0 and json.load(open(conflist)) == primary and not os.path.exists(os.path.join(bindir, "ambient-cni")),
              "install-cni.sh uninstall restores the conflist and deletes the binary", r4.stderr)
        check(not [f for f in os.listdir(confdir) if f.startswith(".")], "install-cni.sh leaves no temporary files")
        # A single-plugin .conf is turned into a .conflist.
        os.remove(conflist)
        with open(os.path.join(confdir, "05-bridge.conf"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0"}, f)
        r5 = sh("install")
        conv = os.path.join(confdir, "05-bridge.conflist")
        ok5 = r5.returncode == 0 and os.path.exists(conv) and not os.path.exists(os.path.join(confdir, "05-bridge.conf"))
        if ok5:
            c = json.load(open(conv))
            ok5 = c["cniVersion"] == "0.4.0" and c["name"] == "bridge-net" and [p["type"] for p in c["plugins"]] == ["bridge", "ambient-cni"]
        check(ok5, "install-cni.sh converts a single-plugin .conf into a chained .conflist", r5.stderr)
        # Watch mode: chains, re-chains after the primary CNI rewrites its file, unchains on SIGTERM.
        with open(conv, "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "bridge-net", "plugins": [{"type": "bridge"}]}, f)
        p = subprocess.Popen(["sh", script, "watch", "--bin-dir", bindir, "--conf-dir", confdir, "--source", src, "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import time
        deadline = time.time() + 10
        chained = lambda: [x["type"] for x in json.load(open(conv))["plugins"]] == ["bridge", "ambient-cni"]
        while time.time() < deadline and not chained():
            time.sleep(0.1)
        first = chained()
        with open(conv, "w") as f:  # the primary plugin rewrites its conflist
            json.dump({"cniVersion": "1.0.0", "name": "bridge-net", "plugins": [{"type": "bridge"}]}, f)
        deadline = time.time() + 10
        while time.time() < deadline and not chained():
            time.sleep(0.1)
        second = chained()
        p.terminate()
        try:
            _, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        after = [x["type"] for x in json.load(open(conv))["plugins"]]
        check(first and second and p.returncode == 0 and after == ["bridge"] and not os.path.exists(os.path.join(bindir, "ambient-cni")),
              "install-cni.sh watch chains, re-chains after a rewrite, and unchains on SIGTERM", f"first={first} second={second} rc={p.returncode} after={after} {err[-300:]}")
        r6 = subprocess.run(["sh", script, "install", "--bogus", "x"], capture_output=True, text=True)
        check(r6.returncode != 0 and "unknown option" in r6.stderr, "install-cni.sh refuses unknown options")


# -- Dockerfiles --------------------------------------------------------------------------------------


def workspace_binaries():
    """(packages, binaries) of the workspace, from the Cargo.toml files."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = None
    root = open(os.path.join(ROOT, "Cargo.toml")).read()
    members = re.findall(r'"([^"]+)"', root.split("members", 1)[1].split("]", 1)[0])
    packages, bins = set(), set()
    for m in members:
        path = os.path.join(ROOT, m, "Cargo.toml")
        if not os.path.exists(path):
            continue
        text = open(path).read()
        if tomllib:
            data = tomllib.loads(text)
            name = data["package"]["name"]
            declared = [b["name"] for b in data.get("bin", [])]
        else:
            name = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S).group(1)
            declared = re.findall(r'^\[\[bin\]\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S)
        packages.add(name)
        bins.update(declared)
        if os.path.exists(os.path.join(ROOT, m, "src", "main.rs")) and not declared:
            bins.add(name)
        bins.update(os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(ROOT, m, "src", "bin", "*.rs")))
    return packages, bins


def check_dockerfiles():
    packages, bins = workspace_binaries()
    files = sorted(glob.glob(os.path.join(DOCKER, "Dockerfile.*")))
    files = [f for f in files if not f.endswith(".dockerignore")]
    names = sorted(os.path.basename(f).split(".", 1)[1] for f in files)
    check(names == ["istiod-lite", "meshctl", "waypoint", "ztunnel"], "a Dockerfile per binary (ztunnel, istiod-lite, waypoint, meshctl)", str(names))
    for f in files:
        text = open(f).read().replace("\\\n", " ")
        label = os.path.relpath(f, ROOT)
        built = set(re.findall(r"cargo build\b[^\n&]*?-p\s+([A-Za-z0-9_-]+)", text))
        copied = []
        for line in text.splitlines():
            m = re.match(r"\s*COPY\s+(.*)", line)
            if not m:
                continue
            parts = [p for p in m.group(1).split() if not p.startswith("--")]
            if "--from=" in m.group(1):
                copied += [os.path.basename(p) for p in parts[:-1]]
            else:
                for src in parts[:-1]:
                    if src != ".":
                        check(os.path.exists(os.path.join(ROOT, src)), f"{label}: COPY source {src} exists in the repository")
        # Binaries produced inside the build stage (cp target/.../NAME) are what the runtime copies.
        produced = set(re.findall(r"cp\s+\"?target/(?:\S*/)?release/([A-Za-z0-9_-]+)", text))
        pending = [b for b in built | set(copied) | produced if b in PENDING_BINARIES and b not in packages | bins]
        if pending:
            print(f"pend  {label}: {', '.join(sorted(pending))} not in the workspace yet ({PENDING_BINARIES[pending[0]]})", flush=True)
            continue
        check(built and built <= packages, f"{label}: cargo build -p {', '.join(sorted(built))} names workspace packages", f"packages: {sorted(packages)}")
        check(copied and all(c in bins for c in copied), f"{label}: copied binaries {', '.join(copied)} are [[bin]]s of the workspace",
              f"bins: {sorted(bins)}")
        check(produced <= bins, f"{label}: binaries taken from target/ are [[bin]]s of the workspace", str(sorted(produced - bins)))
        check(re.search(r"^FROM\s+\S+\s+AS\s+build", text, re.M | re.I) and len(re.findall(r"^FROM\s", text, re.M)) == 2,
              f"{label}: two stages (rust builder, small runtime)")
        check(os.path.exists(f + ".dockerignore"), f"{label}: has a .dockerignore keeping target/ out of the build context")


def main():
    keep = None
    if "--keep" in sys.argv[1:]:
        keep = tempfile.mkdtemp(prefix="helm-render-")
    print("tests/helm: the Helm chart, its CRDs, install-cni.sh and the Dockerfiles", flush=True)
    check_values_schema()
    check_values_used()
    check_dockerfiles()
    check_install_cni()
    prefix, desc = renderer()
    if prefix is None:
        skip("rendering the chart", desc)
    else:
        print(f"renderer: {desc}", flush=True)
        check_value_sets(prefix, keep)
        check_crd_schemas(prefix)
    if keep:
        print(f"rendered manifests kept in {keep}")
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    print(f"helm: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Offline checks of the container and mesh deployment files (no engine, no cluster needed).

    scripts/check_deploy.py [--compose-config FILE] [--edge-bin PATH] [--self-test]
    scripts/check_deploy.py --materialise TARGET DIR   (the files of an image stage, for docker/rehearse.sh)

- docker-compose.yml, as normalised by `docker-compose config` (FILE): health checks and
  start-up conditions, loopback-only ports, the two networks (Envoy never on the apps' one), the
  Envoy image version against scripts/setup.sh, the mounts the Envoy config needs, and that
  envoy-configs/compose.yaml, docker/edge.json and the services agree (hosts, ports, issuer,
  trusted proxy address, app URLs);
- the Dockerfiles' stages (docker-compose.yml builds everything from source): each service's
  build target is a stage; what each stage's image holds, from its COPY lines and its base
  stage; every COPY source exists in the build context and is not kept out by .dockerignore;
  every COPY --from names an earlier stage and a file that stage makes (a repository file or the
  output of its `cargo build --locked`, whose packages, binaries and `rustup target add` are
  checked against the workspace); the envoy stage is built on the tests' Envoy image and holds
  every file envoy-configs/compose.yaml loads, at the same path; images run as non-root users;
  the builder's Rust is at least the workspace's rust-version;
- every Kubernetes manifest under envoy-configs/{istio,envoy-gateway,kubernetes}/: a hand-written schema of the resources used (Istio
  WasmPlugin, Gateway, VirtualService, ServiceEntry, DestinationRule; Gateway API Gateway and
  HTTPRoute; Envoy Gateway EnvoyExtensionPolicy and EnvoyPatchPolicy; core Namespace, ConfigMap,
  PersistentVolumeClaim, Deployment, Service), the filter order (Istio phase/priority, Envoy
  Gateway list order), FAIL_CLOSE, that each embedded filter config is the same JSON whether
  read as YAML or as JSON text (the filters' own parsers check the JSON text in
  tests/e2e/tests/deploy_manifests.rs), and the references between resources;
- with --edge-bin, `portcullis-edge check` on every edge.json (compose and Kubernetes);
- --self-test: breaks copies of the files in memory and expects each break to be reported.

Needs PyYAML (scripts/setup.sh installs it into .tools/venv). Exits 1 with one line per problem.
"""

import argparse
import copy
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    sys.exit("scripts/check_deploy.py needs PyYAML: .tools/venv/bin/pip install pyyaml (scripts/setup.sh does)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Kubernetes manifests: envoy-configs/<dir>/*.yaml (the Envoy configs sit beside them).
MANIFEST_DIRS = ("istio", "envoy-gateway", "kubernetes")
FILTERS = ["robots", "preauth", "conditional-access", "cookie"]
PUBLISHED = {10000, 10443, 9000, 9901}
PHASE_RANK = {"AUTHN": 0, "AUTHZ": 1, "STATS": 2, "UNSPECIFIED_PHASE": 3}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, what):
        self.items.append(f"{where}: {what}")


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- small schema language -------------------------------------------------------------------

def need(p, where, obj, key, kind, allowed=None):
    """obj[key] must exist and be of `kind` (a type or tuple); returns it or None."""
    if not isinstance(obj, dict) or key not in obj:
        p.add(where, f"missing `{key}`")
        return None
    return opt(p, where, obj, key, kind, allowed)


def opt(p, where, obj, key, kind, allowed=None):
    if not isinstance(obj, dict) or key not in obj:
        return None
    value = obj[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        p.add(where, f"`{key}` must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}")
        return None
    if allowed is not None and value not in allowed:
        p.add(where, f"`{key}` is {value!r}, expected one of {sorted(allowed)}")
        return None
    return value


def only(p, where, obj, keys):
    if isinstance(obj, dict):
        for k in obj:
            if k not in keys:
                p.add(where, f"unknown field `{k}`")


def target_refs(p, where, spec, kinds):
    refs = spec.get("targetRefs")
    if refs is None and "targetRef" in spec:
        refs = [spec["targetRef"]]
    if not isinstance(refs, list) or not refs:
        p.add(where, "needs targetRefs (a non-empty list)")
        return []
    for i, r in enumerate(refs):
        w = f"{where}.targetRefs[{i}]"
        need(p, w, r, "group", str)
        need(p, w, r, "kind", str, kinds)
        need(p, w, r, "name", str)
    return refs


# --- the filter configs written as JSON inside YAML ------------------------------------------

def json_object(text, start):
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
            continue
        if c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def embedded_json(text):
    """The `pluginConfig: {…}` / `config: {…}` texts of a file, in order, parsed as JSON."""
    out = []
    for m in re.finditer(r"^[ \t-]*(pluginConfig|config):[ \t]*\{", text, re.M):
        raw = json_object(text, m.end() - 1)
        out.append(json.loads(raw) if raw else None)
    return out


# --- Kubernetes manifests ----------------------------------------------------------------------

def check_wasmplugin(p, where, doc):
    spec = need(p, where, doc, "spec", dict) or {}
    only(p, where + ".spec", spec, {
        "selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
        "pluginConfig", "pluginName", "phase", "priority", "failStrategy", "vmConfig", "match", "type"})
    url = need(p, where, spec, "url", str)
    if url and not re.match(r"^(oci|https?|file)://\S+$", url):
        p.add(where, f"url {url!r} must be oci://, https://, http:// or file://")
    sha = opt(p, where, spec, "sha256", str)
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        p.add(where, "sha256 must be 64 lower-case hex digits")
    if url and url.startswith(("http://", "https://")) and sha is None:
        p.add(where, "an http(s) module URL needs sha256")
    need(p, where, spec, "phase", str, set(PHASE_RANK))
    need(p, where, spec, "priority", int)
    need(p, where, spec, "failStrategy", str, {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"})
    if spec.get("failStrategy") not in (None, "FAIL_CLOSE"):
        p.add(where, "Portcullis filters must fail closed (failStrategy: FAIL_CLOSE)")
    opt(p, where, spec, "imagePullPolicy", str, {"UNSPECIFIED_POLICY", "IfNotPresent", "Always"})
    opt(p, where, spec, "type", str, {"HTTP", "NETWORK", "UNSPECIFIED_PLUGIN_TYPE"})
    need(p, where, spec, "pluginConfig", dict)
    has_selector = "selector" in spec
    if has_selector == ("targetRefs" in spec or "targetRef" in spec):
        p.add(where, "needs exactly one of selector and targetRefs")
    if has_selector:
        sel = need(p, where + ".selector", spec["selector"], "matchLabels", dict)
        if sel is not None and not all(isinstance(v, str) for v in sel.values()):
            p.add(where, "selector.matchLabels values must be strings")
    else:
        target_refs(p, where, spec, {"Gateway", "Service", "ServiceEntry", "GatewayClass"})


# The all-in-one module: one filter whose config has a section per stage (FILTERS, `-` as `_`).
ALL_IN_ONE = "all-in-one"


def filter_of(name):
    if isinstance(name, str) and name.startswith("portcullis-") and name[11:] in FILTERS + [ALL_IN_ONE]:
        return name[11:]
    return None


def stage_configs(f, cfg):
    """[(stage, config)] of a filter's config: itself, or the sections of the all-in-one module."""
    if f == ALL_IN_ONE:
        return [(stage, cfg[stage.replace("-", "_")]) for stage in FILTERS
                if isinstance(cfg, dict) and isinstance(cfg.get(stage.replace("-", "_")), dict)]
    return [(f, cfg)]


def check_istio_order(p, where, plugins):
    """plugins: [(filter, spec)] of one file; the chain order must be the design's."""
    if [f for f, _ in plugins] == [ALL_IN_ONE]:
        return  # one plugin: its stages run in chain order inside it
    if sorted(f for f, _ in plugins) != sorted(FILTERS):
        p.add(where, f"expected one WasmPlugin per filter {FILTERS}, found {[f for f, _ in plugins]}")
        return
    try:
        ranked = sorted(plugins, key=lambda fs: (PHASE_RANK[fs[1]["phase"]], -fs[1]["priority"]))
    except (KeyError, TypeError):
        return  # reported by the schema
    order = [f for f, _ in ranked]
    if order != FILTERS:
        p.add(where, f"phase/priority give the order {order}, the design's is {FILTERS}")
    keys = {(PHASE_RANK[s["phase"]], s["priority"]) for _, s in plugins}
    if len(keys) != len(plugins):
        p.add(where, "two filters share a phase and priority (their order would be undefined)")
    selectors = {json.dumps(s.get("selector") or s.get("targetRefs"), sort_keys=True) for _, s in plugins}
    if len(selectors) != 1:
        p.add(where, "the four WasmPlugins must select the same workloads")


def check_extension_policy(p, where, doc):
    spec = need(p, where, doc, "spec", dict) or {}
    only(p, where + ".spec", spec, {"targetRef", "targetRefs", "targetSelectors", "wasm", "extProc", "lua"})
    target_refs(p, where, spec, {"Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "TLSRoute"})
    wasm = need(p, where, spec, "wasm", list) or []
    names = []
    for i, w in enumerate(wasm):
        ww = f"{where}.wasm[{i}]"
        only(p, ww, w, {"name", "rootID", "code", "config", "failOpen", "env"})
        name = need(p, ww, w, "name", str)
        names.append(filter_of(name))
        root = need(p, ww, w, "rootID", str)
        if filter_of(name) and root != "portcullis_" + filter_of(name).replace("-", "_"):
            p.add(ww, f"rootID should be portcullis_{filter_of(name).replace('-', '_')}")
        code = need(p, ww, w, "code", dict) or {}
        only(p, ww + ".code", code, {"type", "http", "image", "configMap", "sha256", "pullPolicy"})
        kind = need(p, ww + ".code", code, "type", str, {"HTTP", "Image", "ConfigMap"})
        if kind == "HTTP":
            url = need(p, ww + ".code.http", code.get("http"), "url", str)
            if url and not re.match(r"^https?://", url):
                p.add(ww, "code.http.url must be http(s)")
            if not re.fullmatch(r"[0-9a-f]{64}", str(code.get("sha256", ""))):
                p.add(ww, "an HTTP module needs code.sha256")
        if kind == "Image":
            url = need(p, ww + ".code.image", code.get("image"), "url", str)
            if url and "://" in url:
                p.add(ww, "code.image.url is registry/image:tag, without a scheme")
        for other in ("http", "image"):
            if other in code and (kind or "").lower() != other:
                p.add(ww, f"code.{other} given with code.type {kind}")
        opt(p, ww + ".code", code, "pullPolicy", str, {"IfNotPresent", "Always"})
        need(p, ww, w, "config", dict)
        if w.get("failOpen", False) is not False:
            p.add(ww, "Portcullis filters must fail closed (failOpen: false)")
    if names == [ALL_IN_ONE]:
        return
    if [n for n in names if n] != FILTERS or len(names) != len(FILTERS):
        p.add(where, f"spec.wasm must list the filters in chain order {FILTERS}, found {names}")


def check_patch_policy(p, where, doc):
    spec = need(p, where, doc, "spec", dict) or {}
    only(p, where + ".spec", spec, {"targetRef", "targetRefs", "type", "jsonPatches", "priority"})
    target_refs(p, where, spec, {"Gateway", "GatewayClass"})
    need(p, where, spec, "type", str, {"JSONPatch"})
    for i, jp in enumerate(need(p, where, spec, "jsonPatches", list) or []):
        w = f"{where}.jsonPatches[{i}]"
        t = need(p, w, jp, "type", str)
        if t and not t.startswith("type.googleapis.com/envoy.config."):
            p.add(w, "type must be an Envoy xDS resource type URL")
        need(p, w, jp, "name", str)
        op = need(p, w, jp, "operation", dict) or {}
        need(p, w + ".operation", op, "op", str, {"add", "remove", "replace", "move", "copy", "test"})
        need(p, w + ".operation", op, "path", str)


def check_envoy_filter(p, where, doc):
    """The Istio EnvoyFilter that sets the gateway's path normalisation (only that use)."""
    spec = need(p, where, doc, "spec", dict) or {}
    only(p, where + ".spec", spec, {"workloadSelector", "targetRefs", "configPatches", "priority"})
    sel = need(p, where + ".workloadSelector", spec.get("workloadSelector"), "labels", dict)
    if sel is not None and not all(isinstance(v, str) for v in sel.values()):
        p.add(where, "workloadSelector.labels values must be strings")
    for i, cp in enumerate(need(p, where, spec, "configPatches", list) or []):
        w = f"{where}.configPatches[{i}]"
        only(p, w, cp, {"applyTo", "match", "patch"})
        need(p, w, cp, "applyTo", str, {"NETWORK_FILTER", "HTTP_FILTER", "LISTENER", "CLUSTER",
                                        "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"})
        m = need(p, w, cp, "match", dict) or {}
        opt(p, w + ".match", m, "context", str, {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"})
        patch = need(p, w, cp, "patch", dict) or {}
        need(p, w + ".patch", patch, "operation", str, {"MERGE", "ADD", "REMOVE", "INSERT_BEFORE",
                                                         "INSERT_AFTER", "INSERT_FIRST", "REPLACE"})
        need(p, w + ".patch", patch, "value", dict)


def check_client_traffic_policy(p, where, doc):
    spec = need(p, where, doc, "spec", dict) or {}
    only(p, where + ".spec", spec, {"targetRef", "targetRefs", "targetSelectors", "path", "headers",
                                    "clientIPDetection", "timeout", "connection", "tls", "http1",
                                    "http2", "http3", "tcpKeepalive", "enableProxyProtocol"})
    target_refs(p, where, spec, {"Gateway"})
    path = opt(p, where + ".spec", spec, "path", dict)
    if path is not None:
        only(p, where + ".spec.path", path, {"escapedSlashesAction", "disableMergeSlashes"})
        opt(p, where + ".spec.path", path, "escapedSlashesAction", str,
            {"KeepUnchanged", "RejectRequest", "UnescapeAndRedirect", "UnescapeAndForward"})
        opt(p, where + ".spec.path", path, "disableMergeSlashes", bool)


def check_generic(p, where, doc, kinds):
    api = doc.get("apiVersion")
    kind = doc.get("kind")
    if (api, kind) not in kinds:
        p.add(where, f"unknown apiVersion/kind {api}/{kind}")
        return False
    meta = need(p, where, doc, "metadata", dict) or {}
    name = need(p, where, meta, "name", str)
    if name and not DNS1123.match(name):
        p.add(where, f"metadata.name {name!r} is not a DNS-1123 name")
    if kind != "Namespace":
        need(p, where, meta, "namespace", str)
    return True


KINDS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
    ("gateway.networking.k8s.io/v1alpha3", "BackendTLSPolicy"),
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}


def check_manifests(p, files, edge_bin):
    """files: {path: text}."""
    docs = []  # (where, doc, path)
    for path, text in sorted(files.items()):
        try:
            loaded = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            p.add(rel(path), f"not YAML: {e}")
            continue
        # The embedded JSON must read the same as JSON and as YAML (what the mesh sees).
        as_yaml = []
        for d in loaded:
            spec = d.get("spec") or {}
            if "pluginConfig" in spec:
                as_yaml.append(spec["pluginConfig"])
            for w in spec.get("wasm") or []:
                if "config" in w:
                    as_yaml.append(w["config"])
        try:
            as_json = embedded_json(text)
        except json.JSONDecodeError as e:
            p.add(rel(path), f"an embedded filter config is not JSON: {e}")
            as_json = as_yaml
        if as_json != as_yaml:
            p.add(rel(path), "the embedded filter configs read differently as YAML and as JSON "
                  "(write each pluginConfig/config as one JSON object)")
        plugins = []
        for i, d in enumerate(loaded):
            where = f"{rel(path)}[{i}] {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            if not isinstance(d, dict) or not check_generic(p, where, d, KINDS):
                continue
            docs.append((where, d, path))
            kind = d["kind"]
            if kind == "WasmPlugin":
                check_wasmplugin(p, where, d)
                f = filter_of(d["metadata"].get("name"))
                if f is None:
                    p.add(where, "name must be portcullis-<filter>")
                elif f and f.replace("-", "") not in str((d.get("spec") or {}).get("url", "")).replace("-", ""):
                    p.add(where, f"url does not name the {f} module")
                else:
                    plugins.append((f, d.get("spec") or {}))
            elif kind == "EnvoyExtensionPolicy":
                check_extension_policy(p, where, d)
            elif kind == "EnvoyPatchPolicy":
                check_patch_policy(p, where, d)
            elif kind == "EnvoyFilter":
                check_envoy_filter(p, where, d)
            elif kind == "ClientTrafficPolicy":
                check_client_traffic_policy(p, where, d)
        if plugins:
            check_istio_order(p, rel(path), plugins)
    check_references(p, docs, edge_bin)
    return docs


def check_references(p, docs, edge_bin):
    by_kind = {}
    for where, d, _ in docs:
        by_kind.setdefault(d["kind"], []).append((where, d))
    services = {}
    for where, d in by_kind.get("Service", []):
        m = d["metadata"]
        services[(m["name"], m["namespace"])] = d
    configmaps = {(d["metadata"]["name"], d["metadata"]["namespace"]): d for _, d in by_kind.get("ConfigMap", [])}
    secrets = {(d["metadata"]["name"], d["metadata"]["namespace"]): d for _, d in by_kind.get("Secret", [])}

    def container_env(where, ns, env):
        """The variables a container's env sets; each secretKeyRef names a Secret and key of the manifests."""
        names = set()
        for e in env or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                sec = secrets.get((ref.get("name"), ns))
                if sec is None:
                    p.add(where, f"env {e.get('name')}: no Secret {ns}/{ref.get('name')} in the manifests")
                elif ref.get("key") not in {**(sec.get("data") or {}), **(sec.get("stringData") or {})}:
                    p.add(where, f"env {e.get('name')}: Secret {ns}/{ref.get('name')} has no key {ref.get('key')!r}")
            names.add(e.get("name"))
        return names

    # The variables the gateways' Envoy has (EnvoyProxy container env), by namespace.
    proxy_env = {}
    for where, d in by_kind.get("EnvoyProxy", []):
        ns = d["metadata"]["namespace"]
        c = (((((d.get("spec") or {}).get("provider") or {}).get("kubernetes") or {})
              .get("envoyDeployment") or {}).get("container") or {})
        proxy_env.setdefault(ns, set()).update(container_env(where, ns, c.get("env")))

    def service_port(where, name, ns, port):
        svc = services.get((name, ns))
        if svc is None:
            p.add(where, f"no Service {ns}/{name} in the manifests")
        elif port not in [sp.get("port") for sp in (svc.get("spec") or {}).get("ports", [])]:
            p.add(where, f"Service {ns}/{name} has no port {port}")

    edge_apps = {}
    for where, d in by_kind.get("Deployment", []):
        spec = d.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            p.add(where, "spec.selector.matchLabels must match the pod template labels")
        pod = tmpl.get("spec") or {}
        volumes = {v.get("name"): v for v in pod.get("volumes", [])}
        for c in pod.get("containers") or []:
            need(p, where, c, "name", str)
            need(p, where, c, "image", str)
            container_env(where, d["metadata"]["namespace"], c.get("env"))
            for vm in c.get("volumeMounts", []):
                if vm.get("name") not in volumes:
                    p.add(where, f"volumeMount {vm.get('name')} has no volume")
        for v in volumes.values():
            cm = (v.get("configMap") or {}).get("name")
            if cm and (cm, d["metadata"]["namespace"]) not in configmaps:
                p.add(where, f"volume {v.get('name')}: no ConfigMap {cm}")
    for where, d in by_kind.get("Service", []):
        sel = (d.get("spec") or {}).get("selector") or {}
        if not any(all(((dd.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels", {}).get(k) == v
                       for k, v in sel.items()) for _, dd in by_kind.get("Deployment", [])):
            p.add(where, f"selector {sel} matches no Deployment in the manifests")
    for where, d in by_kind.get("ConfigMap", []):
        text = (d.get("data") or {}).get("edge.json")
        if text is None:
            continue
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            p.add(where, f"edge.json is not JSON: {e}")
            continue
        edge_apps.update({a.get("name"): a.get("internal_url") for a in cfg.get("apps", [])})
        edge_check(p, where, text, edge_bin)

    # Istio: routes to the edge, the provider's ServiceEntry named by the preauth cluster.
    entries = set()
    for _, d in by_kind.get("ServiceEntry", []):
        for h in d["spec"].get("hosts", []):
            for port in d["spec"].get("ports", []):
                entries.add(f"outbound|{port.get('number')}||{h}")
    routed_apps = {}
    for where, d in by_kind.get("VirtualService", []):
        for route in (d.get("spec") or {}).get("http", []):
            app = ((route.get("headers") or {}).get("request") or {}).get("set", {}).get("x-portcullis-app")
            if not app:
                p.add(where, "every route must set x-portcullis-app")
            for r in route.get("route", []):
                dest = r.get("destination") or {}
                m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", dest.get("host", ""))
                if not m:
                    p.add(where, f"destination {dest.get('host')} is not a Service FQDN")
                else:
                    service_port(where, m.group(1), m.group(2), (dest.get("port") or {}).get("number"))
            routed_apps.setdefault("istio", set()).add(app)
    for where, d in by_kind.get("HTTPRoute", []):
        ns = d["metadata"]["namespace"]
        for rule in (d.get("spec") or {}).get("rules", []):
            apps = [h.get("value") for f in rule.get("filters", []) if f.get("type") == "RequestHeaderModifier"
                    for h in (f.get("requestHeaderModifier") or {}).get("set", []) if h.get("name") == "x-portcullis-app"]
            if not apps:
                p.add(where, "every rule must set x-portcullis-app")
            routed_apps.setdefault("gateway-api", set()).update(apps)
            for b in rule.get("backendRefs", []):
                service_port(where, b.get("name"), b.get("namespace", ns), b.get("port"))
    patched_clusters = {jp.get("name") for _, d in by_kind.get("EnvoyPatchPolicy", [])
                        for jp in (d.get("spec") or {}).get("jsonPatches", [])}
    for flavour, routed in routed_apps.items():
        for app in routed:
            if edge_apps and app not in edge_apps:
                p.add(f"envoy-configs/ ({flavour})", f"routes send x-portcullis-app {app!r}, which the edge config lacks")

    # The filter configs: preauth clusters exist, cookie internal URLs are the edge's.
    for where, d in by_kind.get("WasmPlugin", []) + by_kind.get("EnvoyExtensionPolicy", []):
        items = []
        if d["kind"] == "WasmPlugin":
            spec = d.get("spec") or {}
            host = [e.get("name") for e in (spec.get("vmConfig") or {}).get("env", []) if e.get("valueFrom") == "HOST"]
            items.append((filter_of(d["metadata"]["name"]), spec.get("pluginConfig") or {}, host))
        else:
            items += [(filter_of(w.get("name")), w.get("config") or {}, (w.get("env") or {}).get("hostKeys", []))
                      for w in (d.get("spec") or {}).get("wasm", [])]
        ns = d["metadata"]["namespace"]
        # Secrets from the environment: the filter gets each variable it names, and the gateway has it.
        for f, _, host_keys in items:
            for key in host_keys:
                if d["kind"] == "EnvoyExtensionPolicy" and key not in proxy_env.get(ns, set()):
                    p.add(where, f"{f}: env.hostKeys {key} is set by no EnvoyProxy container env in {ns}")
        for f, cfg, host_keys in [(sf, sc, k) for f, c, k in items for sf, sc in stage_configs(f, c)]:
            if f == "preauth":
                for app in cfg.get("apps", []):
                    refs = [app.get("client_secret")] + list(app.get("sealing_keys") or [])
                    for ref in refs:
                        if isinstance(ref, dict) and ref.get("env") not in host_keys:
                            p.add(where, f"preauth app {app.get('id')}: variable {ref.get('env')} is not passed "
                                  "to the filter (env.hostKeys, or vmConfig.env with valueFrom: HOST)")
            if f == "preauth":
                for app in cfg.get("apps", []):
                    cluster = app.get("cluster")
                    known = entries if d["kind"] == "WasmPlugin" else patched_clusters
                    if cluster not in known:
                        p.add(where, f"preauth app {app.get('id')}: cluster {cluster!r} is defined nowhere in the manifests")
            if f == "cookie":
                for app in cfg.get("apps", []):
                    want = edge_apps.get(app.get("name"))
                    if edge_apps and want != app.get("internal_url"):
                        p.add(where, f"cookie app {app.get('name')}: internal_url {app.get('internal_url')} "
                              f"is not the edge's {want}")


def edge_check(p, where, text, edge_bin):
    if not edge_bin:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(text)
        name = f.name
    try:
        r = subprocess.run([edge_bin, "check", "--config", name], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            p.add(where, f"portcullis-edge check refuses edge.json: {(r.stderr or r.stdout).strip()}")
    finally:
        os.unlink(name)


# --- docker-compose ------------------------------------------------------------------------------

def envoy_setup_version():
    m = re.search(r"^ENVOY_VERSION=([0-9.]+)$", read(os.path.join(ROOT, "scripts/setup.sh")), re.M)
    return m.group(1) if m else None


def normalise(compose):
    """Ports and volumes in one form, from docker-compose.yml or from `docker-compose config`."""
    for s in (compose.get("services") or {}).values():
        ports = []
        for port in s.get("ports") or []:
            if isinstance(port, dict):
                ports.append(port)
                continue
            bits = str(port).split("/")[0].split(":")
            host_ip = bits[0] if len(bits) == 3 else None
            ports.append({"host_ip": host_ip, "published": int(bits[-2]) if len(bits) > 1 else None,
                          "target": int(bits[-1])})
        if ports:
            s["ports"] = ports
        volumes = []
        for v in s.get("volumes") or []:
            if not isinstance(v, dict):
                bits = str(v).split(":")
                v = {"source": bits[0], "target": bits[1], "read_only": len(bits) > 2 and "ro" in bits[2].split(",")}
            src = v.get("source") or ""
            if src.startswith("."):
                v["source"] = os.path.normpath(os.path.join(ROOT, src))
            volumes.append(v)
        if volumes:
            s["volumes"] = volumes
    return compose


def check_compose(p, compose, envoy_yaml, edge_json, edge_bin, images=None):
    where = "docker-compose.yml"
    services = compose.get("services") or {}
    networks = compose.get("networks") or {}
    one_shots = {dep for s in services.values() for dep, c in (s.get("depends_on") or {}).items()
                 if isinstance(c, dict) and c.get("condition") == "service_completed_successfully"}
    for name, s in services.items():
        w = f"{where} service {name}"
        if name in one_shots:
            if s.get("restart", "no") != "no" or "healthcheck" in s:
                p.add(w, "a one-shot service has restart \"no\" and no health check")
        elif "healthcheck" not in s or (s["healthcheck"] or {}).get("disable"):
            p.add(w, "long-running services need a health check")
        deps = s.get("depends_on") or {}
        if isinstance(deps, list):
            p.add(w, "depends_on must give conditions")
            deps = {}
        for dep, c in deps.items():
            cond = (c or {}).get("condition")
            if dep not in services:
                p.add(w, f"depends on unknown service {dep}")
            elif cond == "service_healthy" and "healthcheck" not in services[dep]:
                p.add(w, f"waits for {dep} to be healthy, but {dep} has no health check")
            elif cond not in ("service_healthy", "service_completed_successfully"):
                p.add(w, f"depends_on {dep}: condition must be service_healthy or service_completed_successfully")
        published = set()
        for port in s.get("ports") or []:
            if port.get("host_ip") != "127.0.0.1":
                p.add(w, f"port {port.get('published')} is not published on 127.0.0.1 only")
            published.add(int(port.get("published") or port.get("target")))
        if published - PUBLISHED:
            p.add(w, f"publishes {sorted(published - PUBLISHED)}, only {sorted(PUBLISHED)} may be")

    def nets(name):
        n = (services.get(name) or {}).get("networks") or {}
        return set(n if isinstance(n, (list, dict)) else [])

    app_nets = set().union(*[nets(n) for n in services if n.startswith("app-")] or [set()])
    private = [n for n, v in networks.items() if (v or {}).get("internal") and n in app_nets]
    if len(private) != 1:
        p.add(where, "needs exactly one internal network for the apps")
        return
    private = private[0]

    apps = [n for n in services if n.startswith("app-")]
    if not apps:
        p.add(where, "no app-* services")
    for a in apps:
        if nets(a) != {private}:
            p.add(f"{where} service {a}", f"apps must be on the {private} network only")
    if private in nets("envoy"):
        p.add(f"{where} service envoy", f"Envoy must not reach the {private} network")
    if not {private} < nets("connector"):
        p.add(f"{where} service connector", f"the connector must join {private} and the edge's network")

    envoy = services.get("envoy") or {}
    version = envoy_setup_version()
    build = envoy.get("build") or {}
    dockerfile = build.get("dockerfile", "Dockerfile")
    image_files = {}
    if not build:
        p.add(f"{where} service envoy", "must be built from source (build: docker/portcullis.Dockerfile, target envoy)")
    elif images is not None:
        image_files, _, base = images.image(p, dockerfile, build.get("target") or "")
        # The base of the stage (through its own bases) is the tests' Envoy.
        stages = {st["name"]: st for st in images.stages.get(dockerfile, [])}
        while base in stages:
            base = stages[base]["base"]
        if base != f"envoyproxy/envoy:v{version}":
            p.add(f"{dockerfile} stage {build.get('target')}", f"is built on {base}, not the tests' Envoy (envoyproxy/envoy:v{version})")
    workdir = envoy.get("working_dir", "/")
    mounts = {}
    for v in envoy.get("volumes") or []:
        src, dst, ro = v.get("source"), v.get("target"), v.get("read_only", False)
        if not ro:
            p.add(f"{where} service envoy", f"mount {dst} must be read-only")
        mounts[dst] = src
    needed = re.findall(r"filename: ([^\s}]+)", envoy_yaml) + ["envoy-configs/compose.yaml"]
    needed += [c for c in (envoy.get("command") or [])[:1] if isinstance(c, str)]
    for rel_path in needed:
        inside = rel_path if rel_path.startswith("/") else os.path.normpath(os.path.join(workdir, rel_path))
        repo_path = os.path.relpath(inside, workdir)
        host = next((src if inside == dst else os.path.join(src, os.path.relpath(inside, dst))
                     for dst, src in mounts.items()
                     if inside == dst or inside.startswith(dst.rstrip("/") + "/")), None)
        if host is None and images is not None:
            made = images.lookup(image_files, inside)
            if made is None:
                p.add("envoy-configs/compose.yaml", f"{rel_path} ({inside}) is neither in the envoy image nor under a mount")
                continue
            host, what = made
            if host is None or what.startswith("cargo build"):
                continue  # made by a build step (checked with the Dockerfile)
        if host is None:
            p.add("envoy-configs/compose.yaml", f"{rel_path} is not under any mount of the envoy service")
        elif os.path.normpath(os.path.relpath(host, ROOT)) != os.path.normpath(repo_path):
            p.add("envoy-configs/compose.yaml", f"{rel_path} maps to {host}, not the same repository path")
        elif not os.path.exists(host):
            p.add("envoy-configs/compose.yaml", f"{rel_path}: {host} does not exist")

    # The edge's shared store: Redis on a network of its own with the edge only.
    edge = json.loads(edge_json)
    store = edge.get("store") or {}
    if store.get("backend") != "redis":
        p.add("docker/edge.json", "store.backend must be redis (the compose file runs a redis service)")
    else:
        m = re.match(r"redis://(?:[^@/]*@)?([a-z][a-z0-9-]*):(\d+)", store.get("url", ""))
        host = m.group(1) if m else None
        if host not in services:
            p.add("docker/edge.json", f"store.url host {host} is no compose service")
        else:
            shared = nets(host) & nets("edge")
            if not shared:
                p.add(f"{where} service {host}", "the edge cannot reach it")
            others = [n for n in services if n not in (host, "edge") and nets(n) & nets(host)]
            if others:
                p.add(f"{where} service {host}", f"only the edge may reach the store, not {sorted(others)}")
            if "edge" in services and ((services["edge"].get("depends_on") or {}).get(host) or {}).get("condition") != "service_healthy":
                p.add(f"{where} service edge", f"must wait for {host} to be healthy")

    # The Envoy config, the edge config and the services agree.
    hosts = set(re.findall(r"address: ([a-z][a-z0-9-]*), port_value", envoy_yaml))
    for h in hosts - set(services):
        p.add("envoy-configs/compose.yaml", f"cluster address {h} is no compose service")
    envoy_ip = ((envoy.get("networks") or {}).get("dmz") or {}).get("ipv4_address")
    if envoy_ip not in edge.get("trusted_proxies", []):
        p.add("docker/edge.json", f"trusted_proxies must hold Envoy's address {envoy_ip}")
    for n, cfg in networks.items():
        for pool in ((cfg or {}).get("ipam") or {}).get("config") or []:
            if n in nets("envoy") and envoy_ip and ipaddress.ip_address(envoy_ip) not in ipaddress.ip_network(pool["subnet"]):
                p.add(f"{where} service envoy", f"{envoy_ip} is outside network {n} ({pool['subnet']})")
    idp_cmd = " ".join(map(str, (services.get("idp") or {}).get("command") or []))
    m = re.search(r"--issuer (\S+)", idp_cmd)
    issuer = m.group(1) if m else None
    if edge.get("admin", {}).get("issuer") != issuer:
        p.add("docker/edge.json", f"admin.issuer must be the provider's issuer {issuer}")
    for iss in set(re.findall(r'"issuer": "([^"]+)"', envoy_yaml)):
        if iss != issuer:
            p.add("envoy-configs/compose.yaml", f"preauth issuer {iss} is not the provider's {issuer}")
    cookie_urls = set(re.findall(r'"internal_url": "([^"]+)"', envoy_yaml))
    edge_urls = {a["internal_url"] for a in edge.get("apps", [])}
    if cookie_urls != edge_urls:
        p.add("envoy-configs/compose.yaml", f"cookie internal_url {sorted(cookie_urls)} != edge apps {sorted(edge_urls)}")
    for url in edge_urls:
        host, _, port = url.split("://", 1)[1].partition(":")
        svc = services.get(host)
        if svc is None or private not in nets(host):
            p.add("docker/edge.json", f"app URL {url} is no app service on {private}")
        elif port and port not in " ".join(map(str, svc.get("command") or [])):
            p.add("docker/edge.json", f"app URL {url}: the service does not listen on {port}")
    tunnel_port = edge.get("listen", {}).get("tunnel", "").rpartition(":")[2]
    hc = " ".join(map(str, ((services.get("connector") or {}).get("healthcheck") or {}).get("test") or []))
    if f"tunnel {tunnel_port}" not in hc:
        p.add(f"{where} service connector", f"the health check must watch the tunnel port {tunnel_port}")
    if f"edge:{tunnel_port}" not in edge.get("advertised_tunnel_addresses", []):
        p.add("docker/edge.json", f"advertised_tunnel_addresses must be edge:{tunnel_port}")
    check_envoy_to_edge(p, where, services, envoy_yaml, edge)
    edge_check(p, "docker/edge.json", edge_json, edge_bin)


def check_envoy_to_edge(p, where, services, envoy_yaml, edge):
    """Only Envoy reaches the edge's listener for it: a Unix socket on a volume that only the
    edge and Envoy mount, Envoy running as the socket's owner; no plain h2c on TCP; header
    limits at least Envoy's; every app's identity assertion checked."""
    listen = edge.get("listen", {})
    if "local" in listen or "insecure_envoy_h2c_tcp" in listen:
        p.add("docker/edge.json", "Envoy's listener must be envoy_socket, never plain h2c on TCP")
    sock = listen.get("envoy_socket")
    if not sock:
        p.add("docker/edge.json", "listen.envoy_socket must be set")
        return
    mode = int(listen.get("envoy_socket_mode", "0660"), 8)
    if mode & 0o007:
        p.add("docker/edge.json", f"envoy_socket_mode {oct(mode)} lets others reach the socket")
    directory = os.path.dirname(sock)
    mounted_by = sorted(n for n, s in services.items()
                        for v in s.get("volumes") or [] if v.get("target") == directory)
    if mounted_by != ["edge", "envoy"]:
        p.add(where, f"the socket's volume ({directory}) must be mounted by edge and envoy only, not {mounted_by}")
    uid = str(((services.get("envoy") or {}).get("environment") or {}).get("ENVOY_UID", ""))
    if uid != "10001":
        p.add(f"{where} service envoy", "ENVOY_UID must be the edge's user (10001) to open its socket")
    if f"pipe: {{ path: {sock} }}" not in envoy_yaml:
        p.add("envoy-configs/compose.yaml", f"the portcullis_edge cluster must use pipe {sock}")
    envoy_kb = max([int(k) for k in re.findall(r"max_request_headers_kb: (\d+)", envoy_yaml)] or [60])
    if int(edge.get("max_request_headers_kb", 96)) < envoy_kb:
        p.add("docker/edge.json", f"max_request_headers_kb must be at least Envoy's ({envoy_kb})")
    for a in edge.get("apps", []):
        if not a.get("assertion"):
            p.add("docker/edge.json", f"app {a.get('name')} has no assertion: identity could never travel")


class Images:
    """The Dockerfiles under docker/ as stages (FROM ... AS name, then instructions), what each
    stage's image holds (COPY destinations, inherited from a base stage), what the builder's
    cargo commands produce, and .dockerignore. Offline: nothing is built."""

    HOST = "host"

    def __init__(self, dockerfiles, dockerignore, workspace, rust_version):
        self.texts = dockerfiles  # {"docker/x.Dockerfile": text}
        self.ignore = [l.strip() for l in dockerignore.splitlines() if l.strip() and not l.startswith("#")]
        self.workspace = workspace  # {package: {"bins": set, "lib": name or None}}
        self.rust_version = rust_version
        self.stages = {name: self.parse(text) for name, text in dockerfiles.items()}
        self.memo = {}

    @staticmethod
    def parse(text):
        stages = []
        for line in re.sub(r"\\\n", " ", text).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            op, _, rest = line.partition(" ")
            if op.upper() == "FROM":
                m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
                stages.append({"name": m.group(2) or str(len(stages)), "base": m.group(1), "instrs": []})
            elif stages:
                stages[-1]["instrs"].append((op.upper(), rest.strip()))
        return stages

    @staticmethod
    def copy_args(rest):
        flags, words = {}, rest.split()
        while words and words[0].startswith("--"):
            k, _, v = words.pop(0)[2:].partition("=")
            flags[k] = v
        return flags, words[:-1], words[-1] if words else ""

    def ignored(self, src):
        import fnmatch
        path = os.path.normpath(src)
        for pat in self.ignore:
            pat = pat.rstrip("/")
            bits = path.split("/")
            if any(fnmatch.fnmatch("/".join(bits[:n]), pat) for n in range(1, len(bits) + 1)):
                return pat
            if pat.startswith("**/") and any(fnmatch.fnmatch(b, pat[3:]) for b in bits):
                return pat
        return None

    def cargo_outputs(self, p, where, stage):
        """{absolute path: description} of what the stage's cargo builds produce."""
        out, added, workdir = {}, set(), "/"
        for op, rest in stage["instrs"]:
            if op == "WORKDIR":
                workdir = rest if rest.startswith("/") else os.path.normpath(os.path.join(workdir, rest))
            if op != "RUN":
                continue
            for cmd in rest.split("&&"):
                words = cmd.split()
                if words[:3] == ["rustup", "target", "add"]:
                    added.update(words[3:])
                if words[:2] != ["cargo", "build"]:
                    continue
                if "--locked" not in words:
                    p.add(where, f"`{' '.join(words[:6])} ...` must build --locked (Cargo.lock as committed)")
                triple = words[words.index("--target") + 1] if "--target" in words else self.HOST
                if triple != self.HOST and triple not in added:
                    p.add(where, f"cargo builds for {triple}, but the stage has no `rustup target add {triple}` before it")
                pkgs = [words[k + 1] for k, w in enumerate(words) if w == "-p"]
                bins = [words[k + 1] for k, w in enumerate(words) if w == "--bin"]
                # `--profile native` builds into target/native (`--release` is the `release` profile).
                release = (words[words.index("--profile") + 1] if "--profile" in words
                           else "release" if "--release" in words else "debug")
                tdir = f"{workdir}/target/{release}" if triple == self.HOST else f"{workdir}/target/{triple}/{release}"
                for pkg in pkgs:
                    if pkg not in self.workspace:
                        p.add(where, f"cargo builds -p {pkg}, which is no workspace package")
                for b in bins:
                    if not any(b in self.workspace.get(pkg, {}).get("bins", ()) for pkg in pkgs):
                        p.add(where, f"cargo builds --bin {b}, which none of {pkgs} has")
                    out[f"{tdir}/{b}"] = f"cargo build --bin {b}"
                if not bins:
                    for pkg in pkgs:
                        lib = self.workspace.get(pkg, {}).get("lib")
                        if lib and triple.startswith("wasm32"):
                            out[f"{tdir}/{lib}.wasm"] = f"cargo build -p {pkg} --target {triple}"
        return out

    def image(self, p, dockerfile, target):
        """{path in the image: (host path or None, what makes it)} of stage `target`, its user
        and base; problems are reported once per stage."""
        key = (dockerfile, target)
        if key not in self.memo:
            q = Problems()
            self.memo[key] = self.build_image(q, dockerfile, target)
            for item in q.items:
                where, _, what = item.partition(": ")
                p.add(where, what)
        return self.memo[key]

    def build_image(self, p, dockerfile, target):
        where = dockerfile
        stages = {st["name"]: (k, st) for k, st in enumerate(self.stages.get(dockerfile, []))}
        if target not in stages:
            p.add(where, f"has no stage {target!r}")
            return {}, None, None
        index, stage = stages[target]
        files, user, workdir = {}, None, "/"
        base = stage["base"]
        if base in stages:
            files, user, _ = self.image(p, dockerfile, base)
            files = dict(files)
        builds = self.cargo_outputs(p, f"{where} stage {target}", stage)
        for op, rest in stage["instrs"]:
            if op == "WORKDIR":
                workdir = rest if rest.startswith("/") else os.path.normpath(os.path.join(workdir, rest))
            elif op == "USER":
                user = rest.split(":")[0]
            elif op in ("COPY", "ADD"):
                flags, srcs, dest = self.copy_args(rest)
                dest = dest if dest.startswith("/") else os.path.normpath(os.path.join(workdir, dest)) + ("/" if dest.endswith("/") else "")
                into_dir = dest.endswith("/") or len(srcs) > 1
                src_stage = flags.get("from")
                if src_stage is not None and (src_stage not in stages or stages[src_stage][0] >= index):
                    p.add(where, f"stage {target}: COPY --from={src_stage} names no earlier stage")
                    continue
                if src_stage is not None:
                    src_files, _, _ = self.image(p, dockerfile, src_stage)
                for src in srcs:
                    to = os.path.join(dest, os.path.basename(src.rstrip("/"))) if into_dir else dest.rstrip("/")
                    if src_stage is None:
                        if "$" in src:
                            continue
                        if src.rstrip("/") in (".", "") or os.path.isdir(os.path.join(ROOT, src)):
                            files[to.rstrip("/") + "/"] = (os.path.normpath(os.path.join(ROOT, src)), "the build context")
                        elif not os.path.exists(os.path.join(ROOT, src)):
                            p.add(where, f"COPY source {src} does not exist")
                        else:
                            files[to] = (os.path.join(ROOT, src), "the build context")
                        pat = self.ignored(src) if src.rstrip("/") not in (".", "") else None
                        if pat:
                            p.add(where, f"COPY source {src} is excluded by .dockerignore ({pat})")
                    else:
                        made = self.lookup(src_files, src)
                        if made is None:
                            p.add(where, f"stage {target}: COPY --from={src_stage} {src}: no step of stage {src_stage} makes it")
                        else:
                            files[to] = made
        # A build output at WORKDIR/<path> is, on a machine that ran the same cargo command in
        # the repository, <repository>/<path> (the builder copies the whole context to WORKDIR).
        context_dir = next((d for d, (h, _) in files.items() if d.endswith("/") and h == os.path.normpath(ROOT)), None)
        for k, v in builds.items():
            host = os.path.join(ROOT, k[len(context_dir):]) if context_dir and k.startswith(context_dir) else None
            files[k] = (host, v)
        return files, user, stage["base"]

    def lookup(self, files, path):
        """What provides `path` in an image's file map: the file itself, or a directory copied
        from the build context (less what .dockerignore keeps out of the context)."""
        path = os.path.normpath(path)
        if path in files:
            return files[path]
        for dest, (host, what) in files.items():
            if dest.endswith("/") and path.startswith(dest):
                if host is None or what.startswith("cargo build"):
                    return None
                inner = os.path.join(host, path[len(dest):])
                if os.path.relpath(inner, ROOT).startswith("..") or self.ignored(os.path.relpath(inner, ROOT)):
                    return None
                return (inner, what) if os.path.exists(inner) else None
        return None

    def check(self, p, uses):
        """uses: [(dockerfile, target or None)] of the compose services."""
        for name, text in self.texts.items():
            if name.endswith("wasm-plugin.Dockerfile"):
                continue
            for st in self.stages[name]:
                self.image(p, name, st["name"])
                m = re.match(r"rust:(\d+)\.(\d+)", st["base"])
                if m and tuple(map(int, m.groups())) < tuple(map(int, self.rust_version.split(".")[:2])):
                    p.add(name, f"builder {st['base']} is older than the workspace's rust-version {self.rust_version}")
        for dockerfile, target in uses:
            stages = self.stages.get(dockerfile)
            if stages is None:
                p.add("docker-compose.yml", f"builds {dockerfile}, which does not exist")
                continue
            target = target or stages[-1]["name"]
            _, user, _ = self.image(p, dockerfile, target)
            if user in (None, "root", "0"):
                p.add(dockerfile, f"stage {target}: the image must run as a non-root USER")


def load_images():
    dockerfiles = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "docker"))):
        if name.endswith("Dockerfile"):
            dockerfiles[f"docker/{name}"] = read(os.path.join(ROOT, "docker", name))
    r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        sys.exit(f"cargo metadata --locked failed (is Cargo.lock current?):\n{r.stderr}")
    meta = json.loads(r.stdout)
    workspace = {}
    for pkg in meta["packages"]:
        bins = {t["name"] for t in pkg["targets"] if "bin" in t["kind"]}
        lib = next((t["name"].replace("-", "_") for t in pkg["targets"] if "cdylib" in t["kind"]), None)
        workspace[pkg["name"]] = {"bins": bins, "lib": lib}
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        import tomllib
        rust_version = tomllib.load(f)["workspace"]["package"]["rust-version"]
    return Images(dockerfiles, read(os.path.join(ROOT, ".dockerignore")), workspace, rust_version)


# --- self test --------------------------------------------------------------------------------------

def materialise(images, dockerfile, target, out):
    """Writes the files of a stage's image (those Portcullis puts there) under `out`, taken from
    this repository and its builds: what docker/rehearse.sh runs Envoy from."""
    p = Problems()
    files, _, _ = images.image(p, dockerfile, target)
    if p.items:
        sys.exit("\n".join(f"problem: {i}" for i in p.items))
    for dest, (host, what) in sorted(files.items()):
        if host is None or dest.endswith("/"):
            continue  # directories of the builder's context never reach this image directly
        if not os.path.exists(host):
            sys.exit(f"{host} is missing ({what}): build it first")
        to = os.path.join(out, dest.lstrip("/"))
        os.makedirs(os.path.dirname(to), exist_ok=True)
        import shutil
        shutil.copy2(host, to)
        print(os.path.relpath(to, out))


def image_uses(compose):
    """(Dockerfile, target) of every compose service built from source."""
    uses = []
    for s in (compose.get("services") or {}).values():
        b = s.get("build")
        if isinstance(b, dict):
            uses.append((b.get("dockerfile", "Dockerfile"), b.get("target")))
        elif isinstance(b, str):
            uses.append(("Dockerfile", None))
    return uses


def check_images(p, compose, images):
    images.check(p, image_uses(compose))


def self_test(compose, envoy_yaml, edge_json, manifests, images):
    """Each break must be reported; the unbroken files must pass."""
    def compose_problems(c=compose, e=envoy_yaml, j=edge_json, im=images):
        p = Problems()
        im = Images(im.texts, "\n".join(im.ignore), im.workspace, im.rust_version)
        check_compose(p, c, e, j, None, im)
        check_images(p, c, im)
        return p.items

    def with_dockerfile(old, new, name="docker/portcullis.Dockerfile", ignore=None):
        texts = dict(images.texts)
        if old not in texts[name]:
            failures.append(f"self-test break not applicable: {old!r} is not in {name}")
        texts[name] = texts[name].replace(old, new, 1)
        return Images(texts, "\n".join(images.ignore) if ignore is None else ignore, images.workspace, images.rust_version)

    def manifest_problems(files):
        p = Problems()
        check_manifests(p, files, None)
        return p.items

    failures = []
    base = compose_problems() + manifest_problems(manifests)
    if base:
        failures.append(f"the files themselves have problems: {base}")

    def expect(label, items, fragment):
        if not any(fragment in i for i in items):
            failures.append(f"{label}: expected a problem mentioning {fragment!r}, got {items}")

    c = copy.deepcopy(compose)
    c["services"]["envoy"]["ports"][0]["host_ip"] = "0.0.0.0"
    expect("port on all interfaces", compose_problems(c), "127.0.0.1 only")
    c = copy.deepcopy(compose)
    c["services"]["envoy"]["networks"]["private"] = None
    expect("Envoy on the apps' network", compose_problems(c), "must not reach")
    c = copy.deepcopy(compose)
    del c["services"]["edge"]["healthcheck"]
    expect("no health check", compose_problems(c), "health check")
    expect("other Envoy", compose_problems(im=with_dockerfile("FROM envoyproxy/envoy:v1.40.0 AS envoy",
                                                           "FROM envoyproxy/envoy:v1.30.0 AS envoy")), "tests' Envoy")
    c = copy.deepcopy(compose)
    del c["services"]["envoy"]["build"]
    c["services"]["envoy"]["image"] = "envoyproxy/envoy:v1.40.0"
    expect("Envoy not built from source", compose_problems(c), "built from source")
    expect("a filter not built", compose_problems(im=with_dockerfile(" -p portcullis-cookie\n", "\n")),
           "portcullis_cookie.wasm: no step of stage build makes it")
    expect("a module not copied", compose_problems(im=with_dockerfile(
        "     /src/target/wasm32-wasip1/release/portcullis_cookie.wasm \\\n", "")), "neither in the envoy image")
    expect("no wasm target", compose_problems(im=with_dockerfile("RUN rustup target add wasm32-wasip1\n", "")),
           "rustup target add wasm32-wasip1")
    expect("not --locked", compose_problems(im=with_dockerfile(
        "cargo build --locked --release --target wasm32-wasip1", "cargo build --release --target wasm32-wasip1")), "--locked")
    expect("unknown stage", compose_problems(im=with_dockerfile("COPY --from=build /src/target/native/sample-app",
                                                             "COPY --from=builder /src/target/native/sample-app")),
           "names no earlier stage")
    c = copy.deepcopy(compose)
    c["services"]["envoy"]["build"]["target"] = "proxy"
    expect("unknown target", compose_problems(c), "has no stage 'proxy'")
    expect("root Envoy", compose_problems(im=with_dockerfile("USER 10001:10001\nEXPOSE 10000", "EXPOSE 10000")),
           "stage envoy: the image must run as a non-root USER")
    expect("config kept out of the context", compose_problems(
        im=with_dockerfile("", "", ignore="\n".join(images.ignore + ["envoy-configs"]))), "excluded by .dockerignore")
    expect("edge trust", compose_problems(j=edge_json.replace("10.209.0.10", "10.209.0.99")), "trusted_proxies")
    expect("cookie URL", compose_problems(e=envoy_yaml.replace("http://app-sample:8081", "http://app-sample:9999")),
           "internal_url")

    sock_json = json.loads(edge_json)
    sock_json["listen"]["insecure_envoy_h2c_tcp"] = "0.0.0.0:8080"
    expect("h2c on TCP", compose_problems(j=json.dumps(sock_json)), "plain h2c")
    c = copy.deepcopy(compose)
    c["services"]["app-sample"].setdefault("volumes", []).append(
        {"source": "envoy-socket", "target": "/var/lib/portcullis/envoy-socket", "read_only": False})
    expect("socket shared", compose_problems(c), "edge and envoy only")
    c = copy.deepcopy(compose)
    c["services"]["envoy"]["environment"].pop("ENVOY_UID", None)
    expect("envoy user", compose_problems(c), "ENVOY_UID")
    expect("cluster over TCP", compose_problems(e=envoy_yaml.replace("pipe: { path: /var/lib/portcullis/envoy-socket/edge.sock }",
                                                                     "socket_address: { address: edge, port_value: 8080 }")), "pipe")
    low = json.loads(edge_json)
    low["max_request_headers_kb"] = 16
    expect("header limit", compose_problems(j=json.dumps(low)), "max_request_headers_kb")
    embedded = json.loads(edge_json)
    embedded["store"] = {"backend": "embedded"}
    expect("store not shared", compose_problems(j=json.dumps(embedded)), "store.backend")
    c = copy.deepcopy(compose)
    c["services"]["connector"]["networks"]["store"] = None
    expect("connector reaches the store", compose_problems(c), "only the edge may reach the store")
    c = copy.deepcopy(compose)
    del c["services"]["edge"]["depends_on"]["redis"]
    expect("edge before redis", compose_problems(c), "wait for redis")

    ist = next(k for k in manifests if k.endswith("istio/wasmplugins.yaml"))
    eg = next(k for k in manifests if k.endswith("envoy-gateway/portcullis.yaml"))

    def with_file(path, text):
        m = dict(manifests)
        m[path] = text
        return m

    t = manifests[ist]
    expect("phase swap", manifest_problems(with_file(ist, t.replace("phase: AUTHZ\n  priority: 100", "phase: AUTHN\n  priority: 100", 1))),
           "order")
    expect("fail open", manifest_problems(with_file(ist, t.replace("failStrategy: FAIL_CLOSE", "failStrategy: FAIL_OPEN", 1))), "fail closed")
    expect("bad phase", manifest_problems(with_file(ist, t.replace("phase: AUTHN", "phase: EARLY", 1))), "phase")
    expect("unknown field", manifest_problems(with_file(ist, t.replace("type: HTTP", "typo: HTTP", 1))), "unknown field")
    expect("yaml/json drift", manifest_problems(with_file(ist, t.replace('{"x_robots_tag": true', '{"x_robots_tag": yes', 1))),
           "JSON")
    t = manifests[eg]
    robots_block = t[t.index("    - name: portcullis-robots"):t.index("    - name: portcullis-preauth")]
    # robots moved from first to just before cookie
    swapped = t.replace(robots_block, "", 1).replace("    - name: portcullis-cookie",
                                                     robots_block + "    - name: portcullis-cookie", 1)
    expect("list order", manifest_problems(with_file(eg, swapped)), "chain order")
    expect("code type", manifest_problems(with_file(eg, t.replace("type: Image", "type: Tarball", 1))), "code.type")
    expect("secret variable not passed", manifest_problems(with_file(eg, t.replace(
        "PORTCULLIS_HR_CLIENT_SECRET, ", "", 1))), "is not passed")
    expect("secret key missing", manifest_problems(with_file(eg, t.replace(
        "key: hr-client-secret", "key: hr-client-secert", 1))), "has no key")
    expect("host key not in the gateway", manifest_problems(with_file(eg, t.replace(
        "            - name: PORTCULLIS_HR_SEALING_KEY\n", "            - name: PORTCULLIS_HR_SEALING_KEY_X\n", 1))),
        "set by no EnvoyProxy")
    expect("cluster", manifest_problems(with_file(eg, t.replace('"cluster": "portcullis_oidc_provider"', '"cluster": "nowhere"', 1))),
           "defined nowhere")
    ef = next(k for k in manifests if k.endswith("istio/path-normalisation.yaml"))
    expect("EnvoyFilter operation", manifest_problems(with_file(ef, manifests[ef].replace(
        "operation: MERGE", "operation: BLEND", 1))), "operation")
    ctp = next(k for k in manifests if k.endswith("envoy-gateway/path-normalisation.yaml"))
    expect("escaped slashes action", manifest_problems(with_file(ctp, manifests[ctp].replace(
        "escapedSlashesAction: KeepUnchanged", "escapedSlashesAction: Keep", 1))), "escapedSlashesAction")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose-config", help="output of `docker-compose -f docker-compose.yml config`")
    ap.add_argument("--edge-bin", help="a portcullis-edge binary, to run `check` on every edge.json")
    ap.add_argument("--self-test", action="store_true", help="also check that breaks are reported")
    ap.add_argument("--materialise", nargs=2, metavar=("TARGET", "DIR"),
                    help="write the files of docker/portcullis.Dockerfile's stage TARGET under DIR and exit")
    args = ap.parse_args()
    if args.materialise:
        materialise(load_images(), "docker/portcullis.Dockerfile", args.materialise[0], args.materialise[1])
        return

    compose_text = read(args.compose_config) if args.compose_config else read(os.path.join(ROOT, "docker-compose.yml"))
    compose = normalise(yaml.safe_load(compose_text))
    envoy_yaml = read(os.path.join(ROOT, "envoy-configs/compose.yaml"))
    edge_json = read(os.path.join(ROOT, "docker/edge.json"))
    manifests = {}
    for sub in MANIFEST_DIRS:
        for dirpath, _, names in os.walk(os.path.join(ROOT, "envoy-configs", sub)):
            for n in names:
                if n.endswith((".yaml", ".yml")):
                    path = os.path.join(dirpath, n)
                    manifests[path] = read(path)

    p = Problems()
    images = load_images()
    check_compose(p, compose, envoy_yaml, edge_json, args.edge_bin, images)
    check_images(p, compose, images)
    docs = check_manifests(p, manifests, args.edge_bin)
    for item in p.items:
        print(f"problem: {item}")
    failures = self_test(compose, envoy_yaml, edge_json, manifests, images) if args.self_test else []
    for f in failures:
        print(f"self-test: {f}")
    print(f"checked docker-compose.yml ({len(compose.get('services', {}))} services), "
          f"{len(manifests)} manifest files ({len(docs)} resources)"
          + (", self-test" if args.self_test else ""))
    sys.exit(1 if p.items or failures else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side benchmarks (see BENCHMARKS.md): filter chains, then tunnel paths.

Filters: every scenario gets its own Envoy (one worker, fixed) in front of the
same trivial upstream (the sample app's `/1k`, a 1 KiB body). After a warm-up,
the scenarios run alternately (A B C ... then C B A ...) for several rounds with
`wrk` at a fixed concurrency and duration, so drift on the machine hits all of
them alike. Reported per scenario: median req/s over rounds, p50/p99 latency
(median over rounds), Envoy CPU time per request (from /proc), and ratios to
the baseline (bare Envoy: router only). Scenarios: each filter alone with a
valid session cookie, the chain with 20 policies, the all-in-one module doing the same work
(`all-in-one (20 policies)`), Envoy's native peers
(jwt_authn + rbac, and oauth2 + jwt_authn + rbac with a valid HMAC cookie), the
sign-in redirect, and the callback (code exchange against a static token
endpoint, ID token validation, session sealing) per request. Then bare Envoy,
the chain and the oauth2 peer run at a fixed 1000 req/s with an open-loop
generator (target/native/loadgen: latency from each request's scheduled time).

Tunnel (scripts/bench_tunnel.py): Envoy -> app directly, through edge +
connector, and through rathole (TLS): small requests, 100 MiB down and up, and
the connector's memory.

Results go to bench-results/: bench.json, filters.svg, tunnel.svg. A run in
which any request failed exits non-zero.

    scripts/bench.py                  # default: 8 s per run, 3 rounds (about 8 minutes)
    scripts/bench.py --quick          # 2 s per run, 2 rounds (about 2 minutes)
    scripts/bench.py --only tunnel    # or --only filters
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".tools/venv/bin/envoy"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


_NEXT_PORT = [20000 + os.getpid() * 7919 % 12000]


def free_port():
    """A free port below Linux's ephemeral range (32768-60999), so no socket
    binding port 0 or connecting out can take it before our server binds it."""
    for _ in range(12000):
        port = _NEXT_PORT[0]
        _NEXT_PORT[0] = 20000 + (port - 20000 + 1) % 12000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port in 20000-32000")


def cpu_seconds(pid):
    """utime + stime of process `pid`, in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def replace_port(text, old, new):
    pattern = re.compile(rf"port_value: {old}\b")
    if not pattern.search(text):
        raise SystemExit(f"config has no port_value {old}")
    return pattern.sub(f"port_value: {new}", text)


def without_filter(text, name):
    """Removes the http filter `name` (up to the next filter entry)."""
    start = text.index(f"          - name: {name}")
    end = text.index("          - name: ", start + 1)
    return text[:start] + text[end:]


def filter_block(text, name):
    """The http filter entry `name` of a config (up to the next filter entry)."""
    start = text.index(f"          - name: {name}")
    end = text.index("          - name: ", start + 1)
    return text[start:end]


def with_filters_before_router(text, blocks):
    at = text.index("          - name: envoy.filters.http.router")
    return text[:at] + "".join(blocks) + text[at:]


def twenty_policies():
    """20 enabled policies for app `sample`, each evaluated on every request."""
    policies = []
    for i in range(20):
        kind = i % 4
        p = {"name": f"p{i:02}", "apps": ["sample"]}
        if kind == 0:
            p["conditions"] = {"paths": [f"/section-{i}"]}
            p["grant"] = {"mfa": True}
        elif kind == 1:
            p["conditions"] = {"locations": {"include": ["all"], "exclude": ["trusted"]}}
            p["grant"] = {"block": True}
        elif kind == 2:
            p["assignments"] = {"include": {"groups": [f"g{i}", "staff"]}}
            p["conditions"] = {"methods": ["GET", "POST"]}
            p["grant"] = {"mfa": True}
        else:
            p["conditions"] = {"client_types": ["api"], "platforms": ["windows", "linux", "macos", "other"]}
            p["session"] = {"sign_in_frequency": 86400}
        policies.append(p)
    return {
        "named_locations": {"loopback": {"cidrs": ["127.0.0.0/8", "::1/128"], "trusted": True}},
        "apps": {"sample": {"groups": ["staff"]}},
        "policies": policies,
    }


def ca_with(config):
    block = filter_block((ROOT / "envoy-configs/conditional-access.yaml").read_text(), "portcullis.conditional_access")
    start = block.index("value: |") + len("value: |\n")
    end = block.index("                vm_config:")
    body = "\n".join(" " * 20 + line for line in json.dumps(config, indent=2).split("\n"))
    return block[:start] + body + "\n" + block[end:]


def block_config(block):
    """The JSON configuration of a filter entry."""
    start = block.index("value: |") + len("value: |\n")
    end = block.index("                vm_config:")
    return json.loads(block[start:end])


def all_in_one(sections):
    """The portcullis.wasm filter entry of envoy-configs/portcullis.yaml with `sections`
    (section name -> that stage's configuration) as its one configuration document."""
    block = filter_block(read_cfg("portcullis.yaml"), "portcullis")
    start = block.index("value: |") + len("value: |\n")
    end = block.index("                vm_config:")
    body = "\n".join(" " * 20 + line for line in json.dumps(sections, indent=2).split("\n"))
    return block[:start] + body + "\n" + block[end:]


def read_cfg(name):
    return (ROOT / "envoy-configs" / name).read_text()


def signed_id_token(tmp, iss="http://127.0.0.1:9000", aud="portcullis-demo", nonce=None):
    """An RS256 ID token (2048-bit key made here) and the JWKS that verifies it."""
    key = Path(tmp) / "jwt.key"
    if not key.exists():
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"], check=True,
                             capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                      "n": b64(bytes.fromhex(modulus)), "e": "AQAB"}]}
    now = int(time.time())
    header = b64(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())
    claims = {"iss": iss, "aud": aud, "sub": "u-bench", "email": "bench@example.com", "groups": ["staff"],
              "amr": ["pwd", "otp", "mfa"], "iat": now, "auth_time": now, "exp": now + 7200}
    if nonce is not None:
        claims["nonce"] = nonce
    claims = b64(json.dumps(claims).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input,
                         check=True, capture_output=True).stdout
    return f"{header}.{claims}.{b64(sig)}", jwks


def rbac_twenty():
    """rbac with 20 ALLOW policies on the verified token's subject and headers."""
    policies = {}
    for i in range(20):
        policies[f"p{i:02}"] = {
            "permissions": [{"and_rules": {"rules": [
                {"url_path": {"path": {"prefix": "/"}}},
                {"not_rule": {"url_path": {"path": {"prefix": f"/section-{i}"}}}}]}}],
            "principals": [{"and_ids": {"ids": [
                {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                              "path": [{"key": "jwt"}, {"key": "sub"}],
                              "value": {"string_match": {"exact": "u-bench"}}}},
                {"not_id": {"header": {"name": "x-blocked", "present_match": True}}}]}}],
        }
    return {"name": "envoy.filters.http.rbac",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                             "rules": {"action": "ALLOW", "policies": policies}}}


def jwt_authn(jwks, source):
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {"issuer": "http://127.0.0.1:9000", "audiences": ["portcullis-demo"],
                                  "local_jwks": {"inline_string": json.dumps(jwks)},
                                  **source, "payload_in_metadata": "jwt", "forward": False}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
        },
    }


OAUTH2_HOST = "bench.local"
OAUTH2_HMAC_SECRET = "bench-hmac-secret-0123456789abcdef"


def oauth2_cookies(id_token):
    """The cookies Envoy's oauth2 filter accepts without a redirect: OauthHMAC is the base64
    HMAC-SHA256, keyed with the HMAC secret, of host, expiry and the tokens joined by newlines
    (the validator of Envoy 1.40's oauth2 filter)."""
    expires = str(int(time.time()) + 7200)
    access = "bench-access-token"
    payload = "\n".join([OAUTH2_HOST, expires, access, id_token, ""]).encode()
    mac = base64.b64encode(hmac.new(OAUTH2_HMAC_SECRET.encode(), payload, hashlib.sha256).digest()).decode()
    return f"OauthHMAC={mac}; OauthExpires={expires}; BearerToken={access}; IdToken={id_token}"


def native_peer(tmp, oauth2):
    """Envoy's own filters doing comparable work. Without `oauth2`: jwt_authn verifies an RS256
    ID token from a header on every request (local JWKS), rbac holds 20 policies. With `oauth2`:
    Envoy's oauth2 filter first checks its HMAC session cookies (a request without them is
    redirected to sign in), then jwt_authn verifies the ID token from the IdToken cookie, then
    rbac."""
    token, jwks = signed_id_token(tmp)
    text = without_filter(read_cfg("robots.yaml"), "portcullis.robots")
    if not oauth2:
        blocks = [jwt_authn(jwks, {"from_headers": [{"name": "x-id-token"}]}), rbac_twenty()]
        headers = [f"x-id-token: {token}"]
    else:
        oauth2_block = {
            "name": "envoy.filters.http.oauth2",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
                "config": {
                    "token_endpoint": {"cluster": "app", "uri": "http://127.0.0.1:8081/token", "timeout": "3s"},
                    "authorization_endpoint": "http://127.0.0.1:9000/auth",
                    "redirect_uri": "http://%REQ(:authority)%/callback",
                    "redirect_path_matcher": {"path": {"exact": "/callback"}},
                    "signout_path": {"path": {"exact": "/signout"}},
                    "forward_bearer_token": True,
                    "disable_token_encryption": True,
                    "credentials": {"client_id": "bench", "token_secret": {"name": "oauth2-token"},
                                    "hmac_secret": {"name": "oauth2-hmac"}},
                    "auth_scopes": ["openid"],
                },
            },
        }
        blocks = [oauth2_block, jwt_authn(jwks, {"from_cookies": ["IdToken"]}), rbac_twenty()]
        headers = [f"Host: {OAUTH2_HOST}", f"Cookie: {oauth2_cookies(token)}"]
        secrets = ("  secrets:\n"
                   "  - name: oauth2-token\n"
                   "    generic_secret: { secret: { inline_string: bench-client-secret } }\n"
                   f"  - name: oauth2-hmac\n"
                   f"    generic_secret: {{ secret: {{ inline_string: {OAUTH2_HMAC_SECRET} }} }}\n")
        text = text.replace("static_resources:\n", "static_resources:\n" + secrets, 1)
    lines = "".join("          - " + json.dumps(b) + "\n" for b in blocks)
    return with_filters_before_router(text, [lines]), headers


def scenarios(tmp, idp_port, issuer, cookie, bench_issuer_port):
    preauth = read_cfg("preauth.yaml").replace("http://127.0.0.1:9000", issuer)
    preauth = replace_port(preauth, 9000, idp_port)
    chain = with_filters_before_router(
        without_filter(preauth, "portcullis.preauth"),
        [filter_block(read_cfg("robots.yaml"), "portcullis.robots"),
         filter_block(preauth, "portcullis.preauth"),
         ca_with(twenty_policies()),
         filter_block(read_cfg("cookie.yaml"), "portcullis.cookie")])
    # The same four stages and configurations as the chain, in one filter.
    aio = with_filters_before_router(
        without_filter(preauth, "portcullis.preauth"),
        [all_in_one({
            "robots": block_config(filter_block(read_cfg("robots.yaml"), "portcullis.robots")),
            "preauth": block_config(filter_block(preauth, "portcullis.preauth")),
            "conditional_access": twenty_policies(),
            "cookie": block_config(filter_block(read_cfg("cookie.yaml"), "portcullis.cookie")),
        })])
    native_text, native_headers = native_peer(tmp, oauth2=False)
    oauth2_text, oauth2_headers = native_peer(tmp, oauth2=True)
    cookie_header = [f"Cookie: {cookie}; app_pref=dark", "Accept: text/html"]
    browser = ["Accept: text/html"]
    # name: (config, headers, expected status)
    return {
        "bare envoy": (without_filter(read_cfg("robots.yaml"), "portcullis.robots"), [], 200),
        "robots": (read_cfg("robots.yaml"), [], 200),
        "preauth (valid cookie)": (preauth, cookie_header, 200),
        "conditional-access": (read_cfg("conditional-access.yaml"), [], 200),
        "cookie": (read_cfg("cookie.yaml"), cookie_header, 200),
        "chain (20 policies)": (chain, cookie_header, 200),
        "all-in-one (20 policies)": (aio, cookie_header, 200),
        "native jwt_authn+rbac(20)": (native_text, native_headers, 200),
        "native oauth2+jwt_authn+rbac(20)": (oauth2_text, oauth2_headers, 200),
        "preauth: sign-in redirect": (preauth, browser, 302),
        "chain: sign-in redirect": (chain, browser, 302),
        "all-in-one: sign-in redirect": (aio, browser, 302),
        # Headers and path come from a sign-in on this Envoy (run_filters): the login cookie
        # and `state`; the token endpoint answers an ID token with that sign-in's nonce.
        CALLBACK: (replace_port(read_cfg("preauth.yaml").replace("http://127.0.0.1:9000",
                                                                 f"http://127.0.0.1:{bench_issuer_port}"),
                                9000, bench_issuer_port), None, 302),
    }


CALLBACK = "preauth: callback (code exchange)"


def issuer_config(issuer, jwks, token):
    """An Envoy (router only) standing in for the provider in the callback scenario: static
    discovery, JWKS and token documents as direct responses, so the token endpoint costs
    almost nothing and never limits the measured Envoy."""
    docs = {
        "/.well-known/openid-configuration": {"issuer": issuer, "authorization_endpoint": f"{issuer}/auth",
                                              "token_endpoint": f"{issuer}/token", "jwks_uri": f"{issuer}/jwks"},
        "/jwks": jwks,
        "/token": {"id_token": token, "access_token": "bench-access", "token_type": "Bearer", "expires_in": 3600},
    }
    routes = "".join(
        "              - " + json.dumps({
            "match": {"path": path},
            "direct_response": {"status": 200, "body": {"inline_string": json.dumps(doc)}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }) + "\n" for path, doc in docs.items())
    text = without_filter(read_cfg("robots.yaml"), "portcullis.robots")
    return text.replace('              - match: { prefix: "/" }\n                route: { cluster: app }\n', routes)


def start_login(port):
    """Starts a sign-in on the preauth Envoy at `port`; returns (state, nonce, login cookie pair)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Accept": "text/html"})
    try:
        urllib.request.build_opener(_NoRedirect).open(req, timeout=5)
    except urllib.error.HTTPError as e:
        if e.code != 302:
            raise SystemExit(f"sign-in did not redirect: {e.code}")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(e.headers["location"]).query)
        cookie = e.headers["set-cookie"].split(";", 1)[0]
        return q["state"][0], q["nonce"][0], cookie
    raise SystemExit("sign-in did not redirect")


# The fixed-rate comparison (open loop, target/native/loadgen).
FIXED_RATE = 1000
FIXED_RATE_SCENARIOS = ["bare envoy", "chain (20 policies)", "all-in-one (20 policies)",
                        "native oauth2+jwt_authn+rbac(20)"]


BASELINE = "bare envoy"


class Envoy:
    def __init__(self, name, text, upstream_port, tmp, port=None):
        self.name = name
        self.port, self.admin = port or free_port(), free_port()
        text = replace_port(text, 10000, self.port)
        text = replace_port(text, 9901, self.admin)
        text = replace_port(text, 8081, upstream_port)
        cfg = Path(tmp) / f"{re.sub(r'[^a-z0-9]+', '-', name)}.yaml"
        cfg.write_text(text)
        self.log = open(str(cfg) + ".log", "w")
        self.proc = subprocess.Popen(
            [ENVOY, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
             "--base-id", str(self.admin + 200000), "--log-level", "warn"],
            cwd=ROOT, stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"Envoy for {name} exited; see {cfg}.log")
            time.sleep(0.1)
        raise SystemExit(f"Envoy for {name} not ready")

    def cpu_seconds(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def parse_duration_us(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def run_wrk(port, headers, duration, connections, path="/1k"):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = parse_duration_us(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_duration_us(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    if p50 is None or p99 is None:
        raise SystemExit(f"cannot read wrk's latency:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rps, "requests": total, "p50_us": p50, "p99_us": p99, "non2xx": errors}


LOADGEN = ROOT / "target/native/loadgen"


def run_loadgen(port, headers, rate, duration, connections):
    out = subprocess.run([str(LOADGEN), f"http://127.0.0.1:{port}/1k", str(rate), str(duration),
                          str(connections), *headers], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def check_scenario(name, port, headers, status, path="/1k", location=None):
    """Waits (15 s at most) until the scenario answers `status` (200 with the 1 KiB body; a
    redirect to `location` when given)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=dict(h.split(": ", 1) for h in headers))
    opener = urllib.request.build_opener(_NoRedirect)
    deadline = time.time() + 15
    got = None
    while time.time() < deadline:
        try:
            with opener.open(req, timeout=2) as r:
                got = r.status
                if status == 200 and r.status == 200 and len(r.read()) == 1024:
                    return
        except urllib.error.HTTPError as e:
            got = e.code
            if location is not None and e.headers.get("location") != location:
                got = f"{e.code} to {e.headers.get('location')}"
            elif e.code == status:
                return
        except OSError as e:
            got = e
        time.sleep(0.2)
    raise SystemExit(f"scenario {name!r} does not answer {status} (last: {got})")


def svg_plot(title, rows, path):
    """A horizontal bar chart: rows of (label, ratio to the baseline, annotation)."""
    width, bar_h, gap, left = 860, 24, 8, 300
    height = 60 + len(rows) * (bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="10" y="22" font-size="15">{title}</text>']
    for i, (label, ratio, note) in enumerate(rows):
        y = 40 + i * (bar_h + gap)
        w = max(1, int((width - left - 150) * min(ratio, 1.5) / 1.5))
        parts.append(f'<text x="10" y="{y + 17}">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar_h}" fill="#4a78b5"/>')
        parts.append(f'<text x="{left + w + 6}" y="{y + 17}">{ratio:.2f}× ({note})</text>')
    x1 = left + int((width - left - 150) / 1.5)
    parts.append(f'<line x1="{x1}" y1="34" x2="{x1}" y2="{height - 10}" stroke="#999" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts))


def filters_plot(results, path):
    base = results[BASELINE]["rps"] or 1
    svg_plot(f"Requests/s relative to {BASELINE} (median of rounds; dashed line = 1.0)",
             [(n, r["rps"] / base, f"{r['rps']:.0f}/s") for n, r in results.items()], path)


def run_filters(args, tmp, duration, rounds):
    """The filter scenarios; returns (results for the JSON file, names of scenarios with failed requests)."""
    upstream_port = free_port()
    app = subprocess.Popen([str(ROOT / "target/native/sample-app"), f"127.0.0.1:{upstream_port}", "bench"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients = Path(tmp) / "clients.json"
    clients.write_text(json.dumps({"clients": [{"client_id": "portcullis-demo", "client_secret": "portcullis-demo-secret",
                                                "redirect_uris": ["http://127.0.0.1:10000/.auth/callback"]}]}))
    idp = subprocess.Popen(["node", str(ROOT / "tests/idp/server.mjs"), "--port", "0", "--quiet", "--config", str(clients)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    envoys, paths, issuer_envoy = {}, {}, [None]
    try:
        issuer = idp.stdout.readline().strip().removeprefix("READY ")
        idp_port = int(issuer.rsplit(":", 1)[1])
        key = re.search(r'"sealing_keys": \["([^"]+)"', read_cfg("preauth.yaml")).group(1)
        cookie = subprocess.run([str(ROOT / "target/native/mint-session"), key, "sample", "__Host-portcullis", "staff"],
                                check=True, capture_output=True, text=True).stdout.strip()
        time.sleep(0.3)
        bench_issuer = f"http://127.0.0.1:{free_port()}"
        bench_issuer_port = int(bench_issuer.rsplit(":", 1)[1])
        _, jwks = signed_id_token(tmp)
        issuer_envoy[0] = Envoy("bench issuer", issuer_config(bench_issuer, jwks, "none"), upstream_port, tmp,
                                port=bench_issuer_port)
        expected = {}
        for name, (text, headers, status) in scenarios(tmp, idp_port, issuer, cookie, bench_issuer_port).items():
            envoys[name] = (Envoy(name, text, upstream_port, tmp), headers)
            expected[name] = status
        # The callback scenario: one real sign-in start, then the token endpoint learns its nonce.
        state, nonce, login_cookie = start_login(envoys[CALLBACK][0].port)
        token, _ = signed_id_token(tmp, iss=bench_issuer, aud="portcullis-demo", nonce=nonce)
        issuer_envoy[0].stop()
        issuer_envoy[0] = Envoy("bench issuer", issuer_config(bench_issuer, jwks, token), upstream_port, tmp,
                                port=bench_issuer_port)
        envoys[CALLBACK] = (envoys[CALLBACK][0], [f"Cookie: {login_cookie}", "Accept: text/html"])
        paths[CALLBACK] = f"/.auth/callback?code=bench-code&state={state}"
        # Every scenario must give its expected answer before it is measured: 200 with the
        # app's 1 KiB body, the sign-in redirect, or (callback) the redirect back to "/".
        for name, (envoy, headers) in envoys.items():
            check_scenario(name, envoy.port, headers, expected[name], paths.get(name, "/1k"),
                           "/" if name == CALLBACK else None)
        # The native oauth2 peer really checks its cookies: without them it redirects.
        oauth2_envoy, oauth2_headers = envoys["native oauth2+jwt_authn+rbac(20)"]
        check_scenario("native oauth2 peer without its cookies", oauth2_envoy.port,
                       [h for h in oauth2_headers if not h.startswith("Cookie:")], 302)
        print(f"warm-up ({len(envoys)} scenarios)…", flush=True)
        for name, (envoy, headers) in envoys.items():
            run_wrk(envoy.port, headers, 1, args.connections, paths.get(name, "/1k"))
        runs = {name: [] for name in envoys}
        for r in range(rounds):
            order = list(envoys) if r % 2 == 0 else list(reversed(envoys))
            for name in order:
                envoy, headers = envoys[name]
                cpu0 = envoy.cpu_seconds()
                res = run_wrk(envoy.port, headers, duration, args.connections, paths.get(name, "/1k"))
                res["cpu_us_per_req"] = (envoy.cpu_seconds() - cpu0) * 1e6 / max(res["requests"], 1)
                runs[name].append(res)
                print(f"  round {r + 1}/{rounds} {name:>34}: {res['rps']:9.0f} req/s  p99 {res['p99_us']:8.0f} µs", flush=True)
        fixed = {name: [] for name in FIXED_RATE_SCENARIOS}
        if shutil.which(str(LOADGEN)) is None:
            raise SystemExit(f"{LOADGEN} is missing: run `make bench` (it builds it)")
        for name in FIXED_RATE_SCENARIOS:  # the open-loop client must get 2xx too
            envoy, headers = envoys[name]
            res = run_loadgen(envoy.port, headers, 100, 1, args.connections)
            if res["errors"]:
                raise SystemExit(f"scenario {name!r}: {res['errors']} of {res['scheduled']} open-loop requests failed")
        for r in range(rounds):
            order = FIXED_RATE_SCENARIOS if r % 2 == 0 else list(reversed(FIXED_RATE_SCENARIOS))
            for name in order:
                envoy, headers = envoys[name]
                res = run_loadgen(envoy.port, headers, FIXED_RATE, duration, args.connections)
                fixed[name].append(res)
                print(f"  round {r + 1}/{rounds} {name:>34} at {FIXED_RATE}/s: p50 {res['p50_us']:6d} µs  "
                      f"p99 {res['p99_us']:6d} µs  errors {res['errors']}", flush=True)
    finally:
        for envoy, _ in envoys.values():
            envoy.stop()
        if issuer_envoy[0]:
            issuer_envoy[0].stop()
        app.terminate()
        idp.terminate()

    med = lambda rs, k: statistics.median(x[k] for x in rs)
    results = {n: {k: med(rs, k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")} | {"non2xx": sum(x["non2xx"] for x in rs), "runs": rs}
               for n, rs in runs.items()}
    base = results[BASELINE]
    print()
    print(f"{'scenario':<34}{'req/s':>10}{'ratio':>8}{'p50 µs':>10}{'p99 µs':>10}{'Δp99 µs':>10}{'CPU µs/req':>12}{'ratio':>8}{'non-2xx':>9}")
    for n, r in results.items():
        print(f"{n:<34}{r['rps']:>10.0f}{r['rps'] / base['rps']:>8.2f}{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}"
              f"{r['p99_us'] - base['p99_us']:>10.0f}{r['cpu_us_per_req']:>12.1f}{r['cpu_us_per_req'] / base['cpu_us_per_req']:>8.2f}{r['non2xx']:>9}")
    fixed_results = {n: {k: statistics.median(x[k] for x in rs) for k in ("p50_us", "p99_us", "p999_us", "achieved_rate")}
                     | {"errors": sum(x["errors"] for x in rs), "runs": rs} for n, rs in fixed.items()}
    fb = fixed_results[BASELINE]
    print(f"\nfixed rate {FIXED_RATE} req/s (open loop, latency from the scheduled send time):")
    print(f"{'scenario':<36}{'p50 µs':>9}{'p99 µs':>9}{'Δp99 µs':>10}{'p99.9 µs':>10}{'rate':>8}{'errors':>8}")
    for n, r in fixed_results.items():
        print(f"{n:<36}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['p99_us'] - fb['p99_us']:>10.0f}"
              f"{r['p999_us']:>10.0f}{r['achieved_rate']:>8.0f}{r['errors']:>8}")
    failed = [n for n, r in results.items() if r["non2xx"]] + [n for n, r in fixed_results.items() if r["errors"]]
    return {"results": results, "fixed_rate": fixed_results}, failed


def check_configs():
    """Validates every Envoy config the benchmarks generate with `envoy --mode validate`
    (`make test` runs this, so the benchmarks cannot rot unnoticed)."""
    import bench_tunnel
    tmp = tempfile.mkdtemp(prefix="portcullis-bench-check-")
    _, jwks = signed_id_token(tmp)
    configs = {name: text for name, (text, _, _) in
               scenarios(tmp, 9000, "http://127.0.0.1:9000", "__Host-portcullis=x", 9010).items()}
    configs["bench issuer"] = issuer_config("http://127.0.0.1:9010", jwks, "x.y.z")
    me = sys.modules[__name__]
    configs["tunnel: direct or rathole"] = bench_tunnel.router_config(me)
    configs["tunnel: edge"] = bench_tunnel.router_config(me, h2=True, app_header="sample")
    failed = []
    for name, text in configs.items():
        path = Path(tmp) / (re.sub(r"[^a-z0-9]+", "-", name) + ".yaml")
        path.write_text(text)
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"], cwd=ROOT,
                           capture_output=True, text=True)
        print(f"  {'ok  ' if r.returncode == 0 else 'FAIL'} {name}")
        if r.returncode != 0:
            failed.append(f"{name}:\n{r.stdout}{r.stderr}")
    shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise SystemExit("benchmark configs that Envoy refuses:\n" + "\n".join(failed))
    print(f"all {len(configs)} benchmark configs validate")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (about 1 minute in all)")
    ap.add_argument("--duration", type=int, help="seconds per run")
    ap.add_argument("--rounds", type=int, help="rounds of A B A B ...")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "bench-results"))
    ap.add_argument("--only", choices=["filters", "tunnel"], help="run one part only")
    ap.add_argument("--bulk-mib", type=int, default=100, help="tunnel bulk transfer size")
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams for the connector's memory")
    ap.add_argument("--check-configs", action="store_true",
                    help="only validate every generated Envoy config (envoy --mode validate) and exit")
    args = ap.parse_args()
    if args.check_configs:
        return check_configs()
    started = time.time()
    duration = args.duration or (2 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 3)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make bench` (it installs it)")

    tmp = tempfile.mkdtemp(prefix="portcullis-bench-")
    doc = {"meta": {"duration_s": duration, "rounds": rounds, "connections": args.connections, "envoy_workers": 1,
                    "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "baseline": BASELINE,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    failed = []
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    if args.only != "tunnel":
        data, bad = run_filters(args, tmp, duration, rounds)
        doc.update(data)
        failed += bad
        filters_plot(data["results"], out / "filters.svg")
    if args.only != "filters":
        import bench_tunnel
        data, bad = bench_tunnel.run(sys.modules[__name__], tmp, duration, rounds, args.connections,
                                     args.bulk_mib, args.streams)
        doc["tunnel"] = data
        bench_tunnel.plot(svg_plot, data, out / "tunnel.svg")
        failed += [f"tunnel {n}" for n in bad]
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out / 'bench.json'} and the plots in {out} in {time.time() - started:.0f} s")
    if failed:
        raise SystemExit(f"INVALID RUN: requests failed in {', '.join(failed)}; the figures above do not count")


if __name__ == "__main__":
    main()

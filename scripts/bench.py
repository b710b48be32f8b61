#!/usr/bin/env python3
"""Side-by-side benchmarks of Envoy filter chains (see BENCHMARKS.md).

Every scenario gets its own Envoy (one worker, fixed) in front of the same
trivial upstream (the sample app's `/1k`, a 1 KiB body). After a warm-up, the
scenarios run alternately (A B C A B C ...) for several rounds with `wrk` at a
fixed concurrency and duration, so that drift on the machine hits all of them
alike. Reported per scenario: median req/s over rounds, p50/p99 latency (median
over rounds), Envoy CPU time per request (from /proc), and ratios to the
baseline (bare Envoy: router only). Results go to bench-results/ as JSON and SVG.

    scripts/bench.py            # default: ~10 s per run, 3 rounds
    scripts/bench.py --quick    # 3 s per run, 2 rounds
"""

import argparse
import base64
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVOY = os.environ.get("ENVOY_BIN", str(ROOT / ".tools/venv/bin/envoy"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def read_cfg(name):
    return (ROOT / "envoy-configs" / name).read_text()


def native_peer(tmp):
    """Envoy's own filters doing comparable work: jwt_authn (RS256 ID token in a header,
    verified on every request against a local JWKS) + rbac (20 policies)."""
    key = Path(tmp) / "jwt.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"], check=True,
                             capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                      "n": b64(bytes.fromhex(modulus)), "e": "AQAB"}]}
    now = int(time.time())
    header = b64(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"iss": "http://127.0.0.1:9000", "aud": "portcullis-demo", "sub": "u-bench",
                             "groups": ["staff"], "amr": ["pwd", "otp", "mfa"], "iat": now,
                             "exp": now + 7200}).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input,
                         check=True, capture_output=True).stdout
    token = f"{header}.{claims}.{b64(sig)}"
    rbac_policies = {}
    for i in range(20):
        rbac_policies[f"p{i:02}"] = {
            "permissions": [{"and_rules": {"rules": [
                {"url_path": {"path": {"prefix": "/"}}},
                {"not_rule": {"url_path": {"path": {"prefix": f"/section-{i}"}}}}]}}],
            "principals": [{"and_ids": {"ids": [
                {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                              "path": [{"key": "jwt"}, {"key": "sub"}],
                              "value": {"string_match": {"exact": "u-bench"}}}},
                {"not_id": {"header": {"name": "x-blocked", "present_match": True}}}]}}],
        }
    jwt_block = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {"issuer": "http://127.0.0.1:9000", "audiences": ["portcullis-demo"],
                                  "local_jwks": {"inline_string": json.dumps(jwks)},
                                  "from_headers": [{"name": "x-id-token"}],
                                  "payload_in_metadata": "jwt", "forward": False}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
        },
    }
    rbac_block = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                         "rules": {"action": "ALLOW", "policies": rbac_policies}},
    }
    blocks = "".join("          - " + json.dumps(b) + "\n" for b in (jwt_block, rbac_block))
    text = without_filter(read_cfg("robots.yaml"), "portcullis.robots")
    return with_filters_before_router(text, [blocks]), [f"x-id-token: {token}"]


def scenarios(tmp, idp_port, issuer, cookie):
    preauth = read_cfg("preauth.yaml").replace("http://127.0.0.1:9000", issuer)
    preauth = replace_port(preauth, 9000, idp_port)
    chain = with_filters_before_router(
        without_filter(preauth, "portcullis.preauth"),
        [filter_block(read_cfg("robots.yaml"), "portcullis.robots"),
         filter_block(preauth, "portcullis.preauth"),
         ca_with(twenty_policies()),
         filter_block(read_cfg("cookie.yaml"), "portcullis.cookie")])
    native_text, native_headers = native_peer(tmp)
    cookie_header = [f"Cookie: {cookie}; app_pref=dark", "Accept: text/html"]
    return {
        "bare envoy": (without_filter(read_cfg("robots.yaml"), "portcullis.robots"), []),
        "robots": (read_cfg("robots.yaml"), []),
        "preauth (valid cookie)": (preauth, cookie_header),
        "conditional-access": (read_cfg("conditional-access.yaml"), []),
        "cookie": (read_cfg("cookie.yaml"), cookie_header),
        "chain (20 policies)": (chain, cookie_header),
        "native jwt_authn+rbac(20)": (native_text, native_headers),
    }


BASELINE = "bare envoy"


class Envoy:
    def __init__(self, name, text, upstream_port, tmp):
        self.name = name
        self.port, self.admin = free_port(), free_port()
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
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

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


def run_wrk(port, headers, duration, connections):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}/1k")
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


def svg_plot(results, path):
    names = list(results)
    base = results[BASELINE]["rps"] or 1
    width, bar_h, gap, left = 720, 26, 10, 170
    height = 60 + len(names) * (bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
             f'<text x="10" y="22" font-size="15">Requests/s relative to {BASELINE} (median of rounds)</text>']
    for i, n in enumerate(names):
        ratio = results[n]["rps"] / base
        y = 40 + i * (bar_h + gap)
        w = max(1, int((width - left - 90) * min(ratio, 1.5) / 1.5))
        parts.append(f'<text x="10" y="{y + 18}">{n}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar_h}" fill="#4a78b5"/>')
        parts.append(f'<text x="{left + w + 6}" y="{y + 18}">{ratio:.2f}× ({results[n]["rps"]:.0f}/s)</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (about 1 minute in all)")
    ap.add_argument("--duration", type=int, help="seconds per run")
    ap.add_argument("--rounds", type=int, help="rounds of A B A B ...")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "bench-results"))
    args = ap.parse_args()
    duration = args.duration or (3 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 3)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make bench` (it installs it)")

    tmp = tempfile.mkdtemp(prefix="portcullis-bench-")
    upstream_port = free_port()
    app = subprocess.Popen([str(ROOT / "target/release/sample-app"), f"127.0.0.1:{upstream_port}", "bench"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients = Path(tmp) / "clients.json"
    clients.write_text(json.dumps({"clients": [{"client_id": "portcullis-demo", "client_secret": "portcullis-demo-secret",
                                                "redirect_uris": ["http://127.0.0.1:10000/.auth/callback"]}]}))
    idp = subprocess.Popen(["node", str(ROOT / "tests/idp/server.mjs"), "--port", "0", "--quiet", "--config", str(clients)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    envoys = {}
    try:
        issuer = idp.stdout.readline().strip().removeprefix("READY ")
        idp_port = int(issuer.rsplit(":", 1)[1])
        key = re.search(r'"sealing_keys": \["([^"]+)"', read_cfg("preauth.yaml")).group(1)
        cookie = subprocess.run([str(ROOT / "target/release/mint-session"), key, "sample", "__Host-portcullis", "staff"],
                                check=True, capture_output=True, text=True).stdout.strip()
        time.sleep(0.3)
        for name, (text, headers) in scenarios(tmp, idp_port, issuer, cookie).items():
            envoys[name] = (Envoy(name, text, upstream_port, tmp), headers)
        # Every scenario must answer 200 from the app before it is measured.
        for name, (envoy, headers) in envoys.items():
            req = urllib.request.Request(f"http://127.0.0.1:{envoy.port}/1k",
                                         headers=dict(h.split(": ", 1) for h in headers))
            deadline = time.time() + 15
            while True:
                try:
                    with urllib.request.urlopen(req, timeout=2) as r:
                        if r.status == 200 and len(r.read()) == 1024:
                            break
                except OSError as e:
                    if time.time() > deadline:
                        raise SystemExit(f"scenario {name!r} does not answer 200: {e}")
                time.sleep(0.2)
        print(f"warm-up ({len(envoys)} scenarios)…", flush=True)
        for name, (envoy, headers) in envoys.items():
            run_wrk(envoy.port, headers, 1, args.connections)
        runs = {name: [] for name in envoys}
        for r in range(rounds):
            order = list(envoys) if r % 2 == 0 else list(reversed(envoys))
            for name in order:
                envoy, headers = envoys[name]
                cpu0 = envoy.cpu_seconds()
                res = run_wrk(envoy.port, headers, duration, args.connections)
                res["cpu_us_per_req"] = (envoy.cpu_seconds() - cpu0) * 1e6 / max(res["requests"], 1)
                runs[name].append(res)
                print(f"  round {r + 1}/{rounds} {name:>24}: {res['rps']:9.0f} req/s  p99 {res['p99_us']:8.0f} µs", flush=True)
    finally:
        for envoy, _ in envoys.values():
            envoy.stop()
        app.terminate()
        idp.terminate()

    med = lambda rs, k: statistics.median(x[k] for x in rs)
    results = {n: {k: med(rs, k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")} | {"non2xx": sum(x["non2xx"] for x in rs), "runs": rs}
               for n, rs in runs.items()}
    base = results[BASELINE]
    print()
    print(f"{'scenario':<26}{'req/s':>10}{'ratio':>8}{'p50 µs':>10}{'p99 µs':>10}{'Δp99 µs':>10}{'CPU µs/req':>12}{'ratio':>8}{'non-2xx':>9}")
    for n, r in results.items():
        print(f"{n:<26}{r['rps']:>10.0f}{r['rps'] / base['rps']:>8.2f}{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}"
              f"{r['p99_us'] - base['p99_us']:>10.0f}{r['cpu_us_per_req']:>12.1f}{r['cpu_us_per_req'] / base['cpu_us_per_req']:>8.2f}{r['non2xx']:>9}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    meta = {"duration_s": duration, "rounds": rounds, "connections": args.connections, "envoy_workers": 1,
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "baseline": BASELINE,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "filters.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    svg_plot(results, out / "filters.svg")
    print(f"\nwrote {out / 'filters.json'} and {out / 'filters.svg'}")


if __name__ == "__main__":
    main()

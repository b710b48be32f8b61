"""Tunnel scenarios for scripts/bench.py (see BENCHMARKS.md).

Three paths from one Envoy each (router only, one worker) to the same sample app:

- direct:   Envoy -> app
- tunnel:   Envoy -> edge (h2c) -> connector tunnel (mTLS, HTTP/2, dialled out) -> app
- rathole:  Envoy -> rathole server -> rathole client (TLS tunnel, dialled out) -> app

The edge, the connector and the app come from `target/native/portcullis-stack`
(the whole system of `make demo` on free ports); rathole from .tools/rathole
(`make bench` installs it from crates.io). Measured, alternating the paths
round by round: small requests (`wrk`, req/s, p50, p99, and the CPU per request
of every process on the path but the app), bulk transfer (100 MiB down and up
with curl, MB/s), and the connector's memory (VmRSS) with 2 idle tunnels, per
extra idle tunnel, and at 1,000 concurrent streams.
"""

import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RATHOLE = os.environ.get("RATHOLE_BIN", "")
MIB = 1024 * 1024
BASELINE = "direct"


def rathole_bin(root):
    path = Path(RATHOLE) if RATHOLE else root / ".tools/rathole/bin/rathole"
    if not path.exists():
        raise SystemExit(f"rathole not found at {path}: run `make bench` (scripts/setup-bench.sh installs it)")
    return path


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def router_config(b, timeout="120s", h2=False, app_header=None):
    """The bare Envoy config (router only) with a long route timeout, optionally HTTP/2 to
    the upstream and the edge's app header."""
    text = b.without_filter(b.read_cfg("robots.yaml"), "portcullis.robots")
    route = f"route: {{ cluster: app, timeout: {timeout} }}"
    if app_header:
        route += ("\n                request_headers_to_add:\n"
                  f"                - header: {{ key: x-portcullis-app, value: {app_header} }}\n"
                  "                  append_action: OVERWRITE_IF_EXISTS_OR_ADD")
    text = text.replace("route: { cluster: app }", route)
    if h2:
        text = text.replace(
            "    connect_timeout: 1s\n",
            "    connect_timeout: 1s\n"
            "    typed_extension_protocol_options:\n"
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
            "        explicit_http_config:\n"
            "          http2_protocol_options: {}\n", 1)
    return text


def start_stack(root, state):
    # The native builds, always: the stack alone would take the newer of target/native and
    # target/debug, and a test run since the last `make build` makes the debug ones newer.
    env = dict(os.environ, PORTCULLIS_BIN_DIR=str(root / "target/native"))
    proc = subprocess.Popen([str(root / "target/native/portcullis-stack"), str(state)],
                            stdout=subprocess.PIPE, stderr=open(Path(state).parent / "stack.log", "w"), text=True,
                            env=env)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"portcullis-stack failed; see {Path(state).parent / 'stack.log'}")
    return proc, json.loads(line)


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def extra_connector(root, info, tmp, name, tunnels):
    """Registers another connector with the demo admin's token and runs it with `tunnels`
    tunnels; returns its process once the edge counts its tunnels up."""
    bins = root / "target/native"
    token = subprocess.run(["node", "tests/idp/admin-token.mjs", "--issuer", info["issuer"], "--user", "carol",
                            "--password", "carol-password"], cwd=root, check=True, capture_output=True,
                           text=True).stdout.strip()
    token_file = Path(tmp) / f"{name}.token"
    token_file.write_text(token)
    fingerprint = subprocess.run([str(bins / "portcullis-edge"), "fingerprint", "--config",
                                  str(Path(info["dir"]) / "edge.json")], check=True, capture_output=True,
                                 text=True).stdout.strip()
    state = Path(tmp) / name
    subprocess.run([str(bins / "portcullis-connector"), "register", "--edge",
                    f"https://127.0.0.1:{info['ports']['edge_registration']}", "--token-file", str(token_file),
                    "--state-dir", str(state), "--edge-fingerprint", fingerprint], cwd=root, check=True,
                   capture_output=True)
    cfg_path = state / "connector.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tunnels_per_edge"] = tunnels
    cfg_path.write_text(json.dumps(cfg, indent=2))
    before = metric(info["ports"]["edge_metrics"], "portcullis_edge_tunnels_up") or 0
    proc = subprocess.Popen([str(bins / "portcullis-connector"), "run", "--state-dir", str(state)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / f"{name}.log", "w"))
    deadline = time.time() + 20
    while time.time() < deadline:
        if (metric(info["ports"]["edge_metrics"], "portcullis_edge_tunnels_up") or 0) >= before + tunnels:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"connector {name} did not bring up {tunnels} tunnels")


def start_rathole(root, tmp, app_port, b):
    """A rathole server and client (TLS transport, certificate made here) forwarding a local
    port to the app; returns (server, client, port Envoy connects to)."""
    exe = rathole_bin(root)
    d = Path(tmp) / "rathole"
    d.mkdir(exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(d / "key.pem"), "-out",
                    str(d / "cert.pem")], check=True, capture_output=True)
    subprocess.run(["openssl", "pkcs12", "-export", "-out", str(d / "identity.pfx"), "-inkey", str(d / "key.pem"),
                    "-in", str(d / "cert.pem"), "-passout", "pass:bench"], check=True, capture_output=True)
    control, public = b.free_port(), b.free_port()
    token = os.urandom(16).hex()
    (d / "server.toml").write_text(f"""[server]
bind_addr = "127.0.0.1:{control}"
[server.transport]
type = "tls"
[server.transport.tcp]
nodelay = true
[server.transport.tls]
pkcs12 = "{d / 'identity.pfx'}"
pkcs12_password = "bench"
[server.services.app]
bind_addr = "127.0.0.1:{public}"
token = "{token}"
nodelay = true
""")
    (d / "client.toml").write_text(f"""[client]
remote_addr = "localhost:{control}"
[client.transport]
type = "tls"
[client.transport.tcp]
nodelay = true
[client.transport.tls]
trusted_root = "{d / 'cert.pem'}"
hostname = "localhost"
[client.services.app]
local_addr = "127.0.0.1:{app_port}"
token = "{token}"
nodelay = true
""")
    server = subprocess.Popen([str(exe), "--server", str(d / "server.toml")], stdout=subprocess.DEVNULL,
                              stderr=open(d / "server.log", "w"))
    time.sleep(0.3)
    client = subprocess.Popen([str(exe), "--client", str(d / "client.toml")], stdout=subprocess.DEVNULL,
                              stderr=open(d / "client.log", "w"))
    return server, client, public


def curl_transfer(port, direction, size, upload_file):
    """One transfer of `size` bytes through Envoy on `port`; returns MB/s (10^6 bytes/s)."""
    if direction == "down":
        cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
               f"http://127.0.0.1:{port}/bytes?n={size}"]
    else:
        cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_upload} %{time_total}", "-H", "Expect:",
               "--data-binary", f"@{upload_file}", f"http://127.0.0.1:{port}/upload"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    moved, seconds = int(float(out[0])), float(out[1])
    if moved != size:
        raise SystemExit(f"{direction} through port {port}: moved {moved} of {size} bytes")
    return moved / seconds / 1e6


def concurrent_streams_rss(b, info, pid, streams, hold_ms):
    """Holds `streams` requests open at once through the edge (the app answers after
    `hold_ms`) and returns (peak connector VmRSS KiB, completed, errors)."""
    peak = [rss_kib(pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    try:
        out = subprocess.run([str(b.LOADGEN), f"http://127.0.0.1:{info['ports']['edge_insecure_tcp']}/slow?ms={hold_ms}",
                              str(streams), "1", str(streams), "x-portcullis-app: sample"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        done.set()
        t.join()
    res = json.loads(out)
    return peak[0], res["completed"], res["errors"]


def run(b, tmp, duration, rounds, connections, bulk_mib, streams):
    """Runs the tunnel scenarios; `b` is the bench module (its Envoy, wrk and port helpers)."""
    root = b.ROOT
    stack, info = start_stack(root, Path(tmp) / "stack")
    envoys, procs, extra = {}, [], []
    try:
        app_port = info["ports"]["app_sample"]
        rat_server, rat_client, rat_port = start_rathole(root, tmp, app_port, b)
        procs += [rat_server, rat_client]
        envoys["direct"] = (b.Envoy("tunnel: direct", router_config(b), app_port, tmp), [])
        envoys["tunnel"] = (b.Envoy("tunnel: edge+connector", router_config(b, h2=True, app_header="sample"),
                                    info["ports"]["edge_insecure_tcp"], tmp), [info["edge_pid"], info["connector_pid"]])
        envoys["rathole"] = (b.Envoy("tunnel: rathole", router_config(b), rat_port, tmp),
                             [rat_server.pid, rat_client.pid])
        for name, (envoy, _) in envoys.items():
            b.check_scenario(f"tunnel: {name}", envoy.port, [], 200)

        # Memory first, while the connector has only ever been idle.
        time.sleep(1)
        idle_kib = rss_kib(info["connector_pid"])
        two = extra_connector(root, info, tmp, "connector-2", 2)
        extra.append(two)
        many_n = 34
        many = extra_connector(root, info, tmp, f"connector-{many_n}", many_n)
        extra.append(many)
        time.sleep(1)
        two_kib, many_kib = rss_kib(two.pid), rss_kib(many.pid)
        per_tunnel_kib = (many_kib - two_kib) / (many_n - 2)
        for p in extra:
            p.terminate()
            p.wait(10)
        extra.clear()

        print("tunnel: warm-up…", flush=True)
        for name, (envoy, _) in envoys.items():
            b.run_wrk(envoy.port, [], 1, connections)
        small = {n: [] for n in envoys}
        for r in range(rounds):
            order = list(envoys) if r % 2 == 0 else list(reversed(envoys))
            for name in order:
                envoy, pids = envoys[name]
                all_pids = [envoy.proc.pid] + pids
                cpu0 = sum(b.cpu_seconds(p) for p in all_pids)
                res = b.run_wrk(envoy.port, [], duration, connections)
                res["cpu_us_per_req"] = (sum(b.cpu_seconds(p) for p in all_pids) - cpu0) * 1e6 / max(res["requests"], 1)
                small[name].append(res)
                print(f"  round {r + 1}/{rounds} tunnel {name:>8}: {res['rps']:9.0f} req/s  p99 {res['p99_us']:8.0f} µs"
                      f"  path CPU {res['cpu_us_per_req']:6.1f} µs/req", flush=True)

        size = bulk_mib * MIB
        upload = Path(tmp) / "upload.bin"
        with open(upload, "wb") as f:
            f.truncate(size)
        bulk = {n: {"down": [], "up": []} for n in envoys}
        for r in range(rounds):
            order = list(envoys) if r % 2 == 0 else list(reversed(envoys))
            for name in order:
                for direction in ("down", "up"):
                    mbs = curl_transfer(envoys[name][0].port, direction, size, upload)
                    bulk[name][direction].append(mbs)
                    print(f"  round {r + 1}/{rounds} tunnel {name:>8}: {bulk_mib} MiB {direction:>4} {mbs:8.1f} MB/s",
                          flush=True)
        upload.unlink()

        peak_kib, completed, errors = concurrent_streams_rss(b, info, info["connector_pid"], streams, 3000)
        print(f"  connector VmRSS: idle with 2 tunnels {idle_kib / 1024:.1f} MiB; "
              f"{per_tunnel_kib:.0f} KiB per extra idle tunnel ({two_kib} KiB with 2, {many_kib} KiB with {many_n}); "
              f"{peak_kib / 1024:.1f} MiB at {streams} concurrent streams ({completed} completed, {errors} errors)",
              flush=True)
    finally:
        for p in extra:
            p.kill()
        for envoy, _ in envoys.values():
            envoy.stop()
        for p in procs:
            p.terminate()
        stack.terminate()
        try:
            stack.wait(20)
        except subprocess.TimeoutExpired:
            stack.kill()

    med = statistics.median
    results = {n: {"rps": med(x["rps"] for x in rs), "p50_us": med(x["p50_us"] for x in rs),
                   "p99_us": med(x["p99_us"] for x in rs), "cpu_us_per_req": med(x["cpu_us_per_req"] for x in rs),
                   "non2xx": sum(x["non2xx"] for x in rs),
                   "down_mb_s": med(bulk[n]["down"]), "up_mb_s": med(bulk[n]["up"]),
                   "runs": rs, "bulk_runs": bulk[n]} for n, rs in small.items()}
    base = results[BASELINE]
    print(f"\ntunnel scenarios (small: wrk {connections} connections, GET /1k; bulk: {bulk_mib} MiB, one stream):")
    print(f"{'path':<10}{'req/s':>9}{'ratio':>7}{'p50 µs':>9}{'p99 µs':>9}{'Δp99 µs':>9}{'CPU µs/req':>12}"
          f"{'down MB/s':>11}{'ratio':>7}{'up MB/s':>10}{'ratio':>7}")
    for n, r in results.items():
        print(f"{n:<10}{r['rps']:>9.0f}{r['rps'] / base['rps']:>7.2f}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}"
              f"{r['p99_us'] - base['p99_us']:>9.0f}{r['cpu_us_per_req']:>12.1f}"
              f"{r['down_mb_s']:>11.0f}{r['down_mb_s'] / base['down_mb_s']:>7.2f}"
              f"{r['up_mb_s']:>10.0f}{r['up_mb_s'] / base['up_mb_s']:>7.2f}")
    memory = {"idle_2_tunnels_kib": idle_kib, "per_extra_idle_tunnel_kib": per_tunnel_kib,
              "second_connector_2_tunnels_kib": two_kib, f"second_connector_{many_n}_tunnels_kib": many_kib,
              "concurrent_streams": streams, "concurrent_peak_kib": peak_kib, "concurrent_completed": completed,
              "concurrent_errors": errors}
    print(f"connector memory: {idle_kib / 1024:.1f} MiB with 2 idle tunnels; {per_tunnel_kib:.0f} KiB per extra idle "
          f"tunnel; {peak_kib / 1024:.1f} MiB at {streams} concurrent streams ({completed}/{streams} completed)")
    failed = [n for n, r in results.items() if r["non2xx"]] + (["concurrent streams"] if errors else [])
    return {"results": results, "memory": memory, "bulk_mib": bulk_mib}, failed


def plot(svg_plot, data, path):
    res = data["results"]
    base = res[BASELINE]
    rows = []
    for key, unit, what in (("rps", "/s", "small requests"), ("down_mb_s", " MB/s", "download"),
                            ("up_mb_s", " MB/s", "upload")):
        for n, r in res.items():
            rows.append((f"{what}: {n}", r[key] / (base[key] or 1), f"{r[key]:.0f}{unit}"))
    svg_plot(f"Tunnel paths relative to {BASELINE} (median of rounds; dashed line = 1.0)", rows, path)

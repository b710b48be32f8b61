#!/usr/bin/env python3
"""Writes the hand-made seed corpus of every fuzz target (fuzz/corpus/<target>/seed-*).
Configuration seeds are the JSON configurations of envoy-configs/ and connector/examples/.
Run from the repository root with a Python that has PyYAML (.tools/venv/bin/python);
the CSR seeds come from `openssl req` (a fresh P-256 key each run)."""
import base64, glob, json, os, subprocess, sys, tempfile
import yaml

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
corpus = os.path.join(root, "fuzz", "corpus")

def put(target, items):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = item.encode()
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
            f.write(item)

put("path_normalize", ["/", "/a/b/../c", "/%2e%2E/x", "/a//b/./c?q=1", "/robots.txt", "/a%2Fb",
    "/%41%7e/", "/.auth/login?rd=/x", "/..;/admin", "/a/%2e%2e%2fb", "/A;x=1/B", "/a/b/.."])
put("path_prefix", ["/public/x\n/public", "/publicity\n/public", "/a/\n/a/", "/p/../q\n/q",
    "/PUBLIC/x\n/public"])
put("redirect_validate", ["/", "/a?b=c#d", "//evil", "/\\evil", "/%2F%2Fevil", "/%252F/evil",
    "https://x", "/a%0d%0aSet-Cookie:x", "/%5Cevil", "/%25252F%25252Fevil"])
put("cookie_header", ["a=1; __Host-portcullis=x; b=2", "portcullis_state_abc=1\nc=3",
    "__host-portcullis=x", "=;;; a", "Portcullis-x=1;y=2", "a=1", "a=\"q;x\"; portcullis=2"])
put("set_cookie", ["sid=abc; Path=/app; Domain=wiki.internal; HttpOnly",
    "__Host-portcullis=evil; Path=/", "a=b; SameSite=None; Secure; Max-Age=10",
    "x=y; Domain=.internal; Path=/app/sub", "__Secure-portcullis_x=1", "k=v; Path=/other"])
put("url_header", ["http://wiki.internal:8080/app/x?y=1", "0; url=http://wiki.internal:8080/app/",
    "<http://10.0.0.7/a>; rel=next, <http://wiki.internal:8080/app/b>; rel=prev",
    "/app/relative", "HTTP://WIKI.INTERNAL:8080/app", "http://wiki.internal:8080/apples"])
html = (b'<a href="http://wiki.internal:8080/app/x">x</a> http:\\/\\/wiki.internal:8080\\/app\\/y '
        b'//wiki.internal:8080/app/z http%3A%2F%2Fwiki.internal%3A8080%2Fapp http://10.0.0.7/q '
        b'http://wiki.internal:8080/apples http://wiki.internal:80800/app')
put("body_chunks", [bytes([3, 10, 100, 200]) + html, bytes([0]) + html, bytes([15]) + bytes(range(15)) + html])
put("policy_inputs", ["203.0.113.7, 10.0.0.1\n__Host-portcullis", "1800000000.0123abcd\nx",
    "[::1]:80, 1.2.3.4\nua", "Mozilla/5.0 (Windows NT 10.0)\nXMLHttpRequest", "::ffff:1.2.3.4\nhigh"])
put("seal_open", ["AdQHBwcHBwcHBwcHBwf20ZnRbYyLg3j2bVPD4hpRIje3G6c9D1H4JEc7Bbc1", "",
    bytes(range(44)) + b"\x05" + b'{"sub":"alice"}', bytes(45)])
put("jwt_validate", [b"\x00a.b.c", b"\x80" + b'{"alg":"none"}', b"\x80" + b'{"alg":"ES256","kid":"ec1","crit":["x"]}',
    b"\x82" + b'{"iss":"https://idp.test","aud":"portcullis","sub":"mallory","exp":1900000000,"iat":1800000000,"nonce":"n0nce"}',
    b"\x84" + bytes(64), b"\x81" + b'{"alg":"HS256","kid":"ed1"}', b"\x00eyJhbGciOiJub25lIn0.e30."])
put("jwks_parse", ['{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"AAAA","y":"AAAA"}]}',
    '{"keys":[{"kty":"RSA","n":"sXch","e":"AQAB","kid":"r"},{"kty":"oct","k":"AAAA"}]}',
    '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"sig"}]}',
    '{"keys":[]}', '[]'])
put("discovery_parse", ['{"issuer":"https://idp.test","authorization_endpoint":"https://idp.test/auth","token_endpoint":"https://idp.test/token","jwks_uri":"https://idp.test/jwks","end_session_endpoint":"https://idp.test/logout"}',
    '{"id_token":"a.b.c","access_token":"x"}', '{"error":"invalid_grant"}', '{"issuer":"https://idp.test","authorization_endpoint":"//x","token_endpoint":"http://[::1","jwks_uri":""}'])
put("handoff_decode", ['{"v":1,"app":"hr","identity":{"sub":"a","groups":["g"],"amr":["pwd"],"claims":{},"iat":1,"exp":2}}',
    '{"v":2}', '{"v":1,"app":"hr"}', '{"s":"st","n":"no","v":"ver","r":"/x","t":1}'])

configs = {}
def walk(x):
    if isinstance(x, dict):
        for v in x.values(): walk(v)
    elif isinstance(x, list):
        for v in x: walk(v)
    elif isinstance(x, str) and x.strip().startswith("{"):
        try:
            j = json.loads(x)
        except ValueError:
            return
        configs[json.dumps(sorted(j.keys()))] = x
for f in sorted(glob.glob(os.path.join(root, "envoy-configs", "**", "*.yaml"), recursive=True)):
    try:
        for d in yaml.safe_load_all(open(f)):
            walk(d)
    except yaml.YAMLError:
        pass
by_kind = {"config_preauth": [], "config_policy": [], "config_cookie": [], "config_robots": []}
for keys, text in configs.items():
    k = json.loads(keys)
    if "proxy_cookies" in k:
        by_kind["config_cookie"].append(text)
    elif "policies" in k:
        by_kind["config_policy"].append(text)
    elif "x_robots_tag" in k or not k:
        by_kind["config_robots"].append(text)
    elif "apps" in k:
        by_kind["config_preauth"].append(text)
for kind, texts in by_kind.items():
    put(kind, texts + ["{}", "{\"apps\":[{}]}"])
put("config_structured", [bytes(range(i, i + 64)) for i in (0, 64, 128)])
connector_files = [open(os.path.join(root, p)).read() for p in ("connector/examples/connector.json", "connector/examples/edge.json")]
put("connector_config", connector_files + ["{}"])

with tempfile.TemporaryDirectory() as tmp:
    key, pem, der = (os.path.join(tmp, n) for n in ("key.pem", "csr.pem", "csr.der"))
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=connector", "-keyout", key, "-out", pem], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "req", "-in", pem, "-outform", "DER", "-out", der], check=True)
    csr_pem, csr_der = open(pem).read(), open(der, "rb").read()
put("edge_register", [json.dumps({"csr_pem": csr_pem}), json.dumps({"csr_pem": csr_pem, "group": "default"}),
    '{"csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----\\n"}'])
put("edge_csr", [csr_der, csr_der[:100]])

#!/usr/bin/env python3
"""Checks a release directory written by scripts/dist.py (docs/dist.md).

    scripts/check_dist.py DIR [--skopeo] [--self-test] [--require-binaries]

- SHA256SUMS lists every file (but itself and the .sha256 files) with its right SHA-256, and each
  .sha256 file beside a module or binary agrees;
- each OCI image layout: `oci-layout`, `index.json` with one manifest tagged with the version,
  every descriptor's digest and size match its blob, no blob is unreferenced, the manifest is an
  OCI image manifest in the Wasm "compat" variant Istio and Envoy Gateway read (one
  `tar+gzip` layer, annotation `module.wasm.image/variant: compat`), the layer holds only
  `plugin.wasm` and it is, byte for byte, the module in wasm/, and the config's diff_id is the
  uncompressed layer's digest;
- the binaries are static x86-64 executables (no dynamic loader named; `file` and `ldd` agree
  where they are installed);
- the SBOM is valid CycloneDX 1.6 (the reference library's strict JSON-schema validator,
  cyclonedx-python-lib, installed by scripts/setup.sh), names every artefact with its SHA-256,
  and gives each crates.io crate the checksum Cargo.lock has for it;
- release.json agrees with all of the above;
- with --skopeo: skopeo (a real OCI client, Debian's) reads each layout, reports the same
  manifest digest, and copies the image out with its digests preserved and every blob verified;
- with --self-test: copies of DIR broken in one way each (a changed layer byte, a changed module,
  a wrong sum, a stray blob, a second layer, a dynamic binary) must each be reported, and the
  broken layer must make skopeo fail too.

Exits 1 with one line per problem.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The four single-stage modules and the all-in-one module (scripts/dist.py's MODULES).
EXPECTED_MODULES = ["portcullis-robots", "portcullis-preauth", "portcullis-conditional-access",
                    "portcullis-cookie", "portcullis-all-in-one"]
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from dist import LAYER, MANIFEST, INDEX, CONFIG, is_static_elf  # noqa: E402


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def check_sums(p, d):
    sums = os.path.join(d, "SHA256SUMS")
    if not os.path.exists(sums):
        p.append("SHA256SUMS is missing")
        return
    listed = {}
    for n, line in enumerate(read(sums).decode().splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            p.append(f"SHA256SUMS line {n} is not `<sha256>  <path>`")
            continue
        listed[rel] = digest
        path = os.path.join(d, rel)
        if not os.path.isfile(path):
            p.append(f"SHA256SUMS names {rel}, which does not exist")
        elif sha256(read(path)) != digest:
            p.append(f"SHA256SUMS: {rel} does not have the listed SHA-256")
    for dirpath, _, names in os.walk(d):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), d)
            if rel == "SHA256SUMS":
                continue
            if rel.endswith(".sha256"):
                digest, _, base = read(os.path.join(d, rel)).decode().strip().partition("  ")
                target = rel[:-len(".sha256")]
                if base != os.path.basename(target) or listed.get(target) != digest:
                    p.append(f"{rel} does not agree with SHA256SUMS for {target}")
            elif rel not in listed:
                p.append(f"{rel} is not in SHA256SUMS")


def check_layout(p, d, rel, module, version):
    where = rel
    layout = os.path.join(d, rel)
    try:
        if json.loads(read(os.path.join(layout, "oci-layout"))) != {"imageLayoutVersion": "1.0.0"}:
            p.append(f"{where}/oci-layout is not imageLayoutVersion 1.0.0")
        index = json.loads(read(os.path.join(layout, "index.json")))
    except (OSError, ValueError) as e:
        p.append(f"{where}: {e}")
        return None
    referenced = set()

    def blob(desc, media_type, what):
        digest = desc.get("digest", "")
        if desc.get("mediaType") != media_type:
            p.append(f"{where}: {what} has media type {desc.get('mediaType')}, expected {media_type}")
        if not digest.startswith("sha256:"):
            p.append(f"{where}: {what} digest {digest!r} is not sha256")
            return None
        path = os.path.join(layout, "blobs", "sha256", digest[7:])
        if not os.path.isfile(path):
            p.append(f"{where}: {what} blob {digest} is missing")
            return None
        data = read(path)
        referenced.add(digest[7:])
        if sha256(data) != digest[7:]:
            p.append(f"{where}: {what} blob {digest} does not have that digest")
        if len(data) != desc.get("size"):
            p.append(f"{where}: {what} is {len(data)} bytes, its descriptor says {desc.get('size')}")
        return data

    if index.get("schemaVersion") != 2 or index.get("mediaType") != INDEX:
        p.append(f"{where}/index.json is not an OCI image index")
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        p.append(f"{where}/index.json must hold one manifest, not {len(manifests)}")
        return None
    desc = manifests[0]
    if (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name") != version:
        p.append(f"{where}: the manifest is not tagged {version}")
    raw = blob(desc, MANIFEST, "manifest")
    if raw is None:
        return None
    manifest = json.loads(raw)
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType") != MANIFEST:
        p.append(f"{where}: the manifest is not an OCI image manifest")
    if (manifest.get("annotations") or {}).get("module.wasm.image/variant") != "compat":
        p.append(f"{where}: the manifest lacks the annotation module.wasm.image/variant: compat")
    config_raw = blob(manifest.get("config") or {}, CONFIG, "config")
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        p.append(f"{where}: the image must have exactly one layer (plugin.wasm), not {len(layers)}")
    layer = blob(layers[0], LAYER, "layer") if layers else None
    if layer is not None:
        try:
            tar_bytes = gzip.decompress(layer)
            with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
                members = tar.getmembers()
                names = [m.name for m in members]
                if names != ["plugin.wasm"]:
                    p.append(f"{where}: the layer holds {names}, expected only plugin.wasm")
                f = tar.extractfile(members[0]) if members and members[0].isfile() else None
                if f is None or f.read() != module:
                    p.append(f"{where}: the layer's plugin.wasm is not the module in wasm/")
            if config_raw is not None:
                config = json.loads(config_raw)
                if (config.get("rootfs") or {}).get("diff_ids") != [f"sha256:{sha256(tar_bytes)}"]:
                    p.append(f"{where}: the config's rootfs.diff_ids is not the uncompressed layer's digest")
        except (OSError, EOFError, tarfile.TarError, ValueError) as e:
            p.append(f"{where}: the layer is not a gzip tar: {e}")
    stored = set(os.listdir(os.path.join(layout, "blobs", "sha256")))
    for stray in sorted(stored - referenced):
        p.append(f"{where}: blob {stray} is referenced by nothing")
    return desc.get("digest")


def check_sbom(p, d, release, validate=True):
    rel = (release.get("sbom") or {}).get("file", "")
    path = os.path.join(d, rel)
    if not rel or not os.path.isfile(path):
        p.append("the SBOM named by release.json is missing")
        return
    text = read(path).decode()
    if validate:
        try:
            from cyclonedx.schema import SchemaVersion
            from cyclonedx.validation.json import JsonStrictValidator
        except ImportError:
            p.append("cyclonedx-python-lib is missing (scripts/setup.sh installs it into .tools/venv)")
        else:
            error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
            if error is not None:
                first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                p.append(f"{rel} is not valid CycloneDX 1.6: {first}")
    bom = json.loads(text)
    components = bom.get("components") or []
    files = {}
    for c in components:
        props = {x["name"]: x["value"] for x in c.get("properties") or []}
        if "portcullis:file" in props:
            files[props["portcullis:file"]] = (c.get("hashes") or [{}])[0].get("content")
    wanted = {a["file"]: a["sha256"] for a in release.get("modules", []) + release.get("binaries", [])}
    if files != wanted:
        p.append(f"{rel}: the artefacts listed {sorted(files)} with their hashes are not release.json's {sorted(wanted)}")
    with open(os.path.join(ROOT, "Cargo.lock"), "rb") as f:
        lock = {(x["name"], x["version"]): x.get("checksum") for x in tomllib.load(f).get("package", [])}
    crates = [c for c in components if c.get("type") == "library"]
    if not crates:
        p.append(f"{rel}: no crates listed")
    for c in crates:
        key = (c.get("name"), c.get("version"))
        if key not in lock:
            p.append(f"{rel}: {key[0]} {key[1]} is not in Cargo.lock")
        elif c.get("purl") and (c.get("hashes") or [{}])[0].get("content") != lock[key]:
            p.append(f"{rel}: {key[0]} {key[1]} does not carry Cargo.lock's checksum")
    refs = {c.get("bom-ref") for c in components} | {bom.get("metadata", {}).get("component", {}).get("bom-ref")}
    for dep in bom.get("dependencies") or []:
        for r in [dep.get("ref")] + dep.get("dependsOn", []):
            if r not in refs:
                p.append(f"{rel}: the dependency graph names {r}, which is no component")


def tool(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_dir(d, require_binaries=False, skopeo=False, validate_sbom=True):
    p = []
    try:
        release = json.loads(read(os.path.join(d, "release.json")))
    except (OSError, ValueError) as e:
        return [f"release.json: {e}"]
    version = release.get("version")
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        if tomllib.load(f)["workspace"]["package"]["version"] != version:
            p.append(f"release.json says version {version}, Cargo.toml another")
    if os.path.basename(os.path.normpath(d)).startswith("portcullis-") and not d.rstrip("/").endswith(f"portcullis-{version}"):
        p.append(f"the directory is not named portcullis-{version}")
    check_sums(p, d)
    names = sorted(m.get("name", "?") for m in release.get("modules", []))
    if names != sorted(EXPECTED_MODULES):
        p.append(f"release.json lists the modules {names}, expected {sorted(EXPECTED_MODULES)}")
    for m in release.get("modules", []):
        path = os.path.join(d, m["file"])
        if not os.path.isfile(path):
            p.append(f"{m['file']} is missing")
            continue
        module = read(path)
        if module[:4] != b"\0asm" or sha256(module) != m["sha256"]:
            p.append(f"{m['file']} is not the wasm module release.json describes")
        digest = check_layout(p, d, m["oci_layout"], module, version)
        if digest and digest != m["oci_manifest_digest"]:
            p.append(f"{m['oci_layout']}: manifest {digest}, release.json says {m['oci_manifest_digest']}")
        if skopeo and digest:
            check_skopeo(p, d, m, digest, module)
    if require_binaries and len(release.get("binaries", [])) != 2:
        p.append("the static binaries are missing (not built with --wasm-only?)")
    for b in release.get("binaries", []):
        path = os.path.join(d, b["file"])
        if not os.path.isfile(path):
            p.append(f"{b['file']} is missing")
            continue
        data = read(path)
        if sha256(data) != b["sha256"]:
            p.append(f"{b['file']} is not the binary release.json describes")
        if not is_static_elf(data):
            p.append(f"{b['file']} is not a static x86-64 executable (it names a dynamic loader)")
        r = tool("file", "-b", path)
        if r is not None and r.returncode == 0 and not any(s in r.stdout for s in ("statically linked", "static-pie linked")):
            p.append(f"{b['file']}: file(1) says {r.stdout.strip()!r}")
        r = tool("ldd", path)
        if r is not None and "not a dynamic executable" not in (r.stdout + r.stderr) and "statically linked" not in (r.stdout + r.stderr):
            p.append(f"{b['file']}: ldd lists libraries: {r.stdout.strip()!r}")
    check_sbom(p, d, release, validate_sbom)
    return p


def check_skopeo(p, d, m, digest, module):
    ref = f"oci:{os.path.join(d, m['oci_layout'])}:{m['oci_ref']}"
    r = tool("skopeo", "inspect", "--raw", ref)
    if r is None or r.returncode != 0:
        p.append(f"skopeo inspect {m['oci_layout']}: {(r.stderr if r else 'skopeo not found').strip()}")
        return
    if f"sha256:{sha256(r.stdout.encode())}" != digest:
        p.append(f"skopeo reads another manifest from {m['oci_layout']}")
    with tempfile.TemporaryDirectory(prefix="portcullis-skopeo-") as out:
        r = tool("skopeo", "copy", "--quiet", "--preserve-digests", ref, f"dir:{out}")
        if r is None or r.returncode != 0:
            p.append(f"skopeo copy {m['oci_layout']}: {(r.stderr if r else '').strip()}")
            return
        if f"sha256:{sha256(read(os.path.join(out, 'manifest.json')))}" != digest:
            p.append(f"skopeo copy of {m['oci_layout']} changed the manifest digest")
        layer = json.loads(read(os.path.join(out, "manifest.json")))["layers"][0]["digest"][7:]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(read(os.path.join(out, layer))))) as tar:
            f = tar.extractfile("plugin.wasm")
            if f is None or f.read() != module:
                p.append(f"skopeo's copy of {m['oci_layout']} does not hold the module")


def self_test(d):
    """Each break of a copy of `d` must be reported (the SBOM, unchanged, is not validated
    again: the schema check takes seconds)."""
    failures = []
    release = json.loads(read(os.path.join(d, "release.json")))
    m = release["modules"][0]

    def broken(label, change, fragment, skopeo=False):
        with tempfile.TemporaryDirectory(prefix="portcullis-dist-selftest-") as tmp:
            copy = os.path.join(tmp, os.path.basename(os.path.normpath(d)))
            shutil.copytree(d, copy)
            change(copy)
            problems = check_dir(copy, skopeo=skopeo, validate_sbom=False)
            if not any(fragment in x for x in problems):
                failures.append(f"{label}: expected a problem mentioning {fragment!r}, got {problems}")

    def manifest_of(copy):
        index = json.loads(read(os.path.join(copy, m["oci_layout"], "index.json")))
        return json.loads(read(os.path.join(copy, m["oci_layout"], "blobs", "sha256", index["manifests"][0]["digest"][7:])))

    def flip_layer_byte(copy):
        path = os.path.join(copy, m["oci_layout"], "blobs", "sha256", manifest_of(copy)["layers"][0]["digest"][7:])
        data = bytearray(read(path))
        data[len(data) // 2] ^= 0x01
        with open(path, "wb") as f:
            f.write(data)

    def change_module(copy):
        path = os.path.join(copy, m["file"])
        with open(path, "ab") as f:
            f.write(b"\0")

    def wrong_sum(copy):
        path = os.path.join(copy, "SHA256SUMS")
        lines = read(path).decode().splitlines(keepends=True)
        lines[0] = "0" * 64 + lines[0][64:]
        with open(path, "w") as f:
            f.writelines(lines)

    def stray_blob(copy):
        data = b"not referenced\n"
        with open(os.path.join(copy, m["oci_layout"], "blobs", "sha256", sha256(data)), "wb") as f:
            f.write(data)

    def dynamic_binary(copy):
        # An ELF header naming a loader (PT_INTERP) stands in for a glibc build.
        for b in release.get("binaries", [])[:1]:
            path = os.path.join(copy, b["file"])
            data = bytearray(read(path))
            phoff = int.from_bytes(data[32:40], "little")
            data[phoff:phoff + 4] = (3).to_bytes(4, "little")
            with open(path, "wb") as f:
                f.write(data)

    def sbom_hash(copy):
        path = os.path.join(copy, release["sbom"]["file"])
        text = read(path).decode().replace(m["sha256"], "0" * 64)
        with open(path, "w") as f:
            f.write(text)

    def drop_all_in_one(copy):
        # release.json without the all-in-one module (a dist.py that forgot it).
        path = os.path.join(copy, "release.json")
        r = json.loads(read(path))
        r["modules"] = [x for x in r["modules"] if x.get("name") != "portcullis-all-in-one"]
        with open(path, "w") as f:
            f.write(json.dumps(r, indent=1) + "\n")

    broken("a release without the all-in-one module", drop_all_in_one, "expected")
    broken("an SBOM with another hash", sbom_hash, "artefacts listed")
    broken("a changed layer byte", flip_layer_byte, "does not have that digest")
    if shutil.which("skopeo"):
        broken("a changed layer byte, through skopeo", flip_layer_byte, "skopeo copy", skopeo=True)
    broken("a changed module", change_module, "not the wasm module")
    broken("a wrong sum", wrong_sum, "does not have the listed SHA-256")
    broken("a stray blob", stray_blob, "referenced by nothing")
    if release.get("binaries"):
        broken("a dynamic binary", dynamic_binary, "not a static")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--skopeo", action="store_true", help="also load every image layout with skopeo")
    ap.add_argument("--self-test", action="store_true", help="also check that breaks are reported")
    ap.add_argument("--require-binaries", action="store_true")
    args = ap.parse_args()
    if args.skopeo and not shutil.which("skopeo"):
        sys.exit("skopeo is missing (apt-get install -y skopeo; scripts/setup.sh does it)")
    problems = check_dir(args.dir, args.require_binaries, args.skopeo)
    for x in problems:
        print(f"problem: {x}")
    failures = self_test(args.dir) if args.self_test else []
    for f in failures:
        print(f"self-test: {f}")
    release = json.loads(read(os.path.join(args.dir, "release.json"))) if not problems else {}
    print(f"checked {args.dir}: {len(release.get('modules', []))} modules and image layouts, "
          f"{len(release.get('binaries', []))} static binaries, SBOM"
          + (", skopeo" if args.skopeo else "") + (", self-test" if args.self_test else ""))
    sys.exit(1 if problems or failures else 0)


if __name__ == "__main__":
    main()

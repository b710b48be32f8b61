#!/usr/bin/env python3
"""Writes the release artefacts of Portcullis into a versioned directory (docs/dist.md).

    scripts/dist.py [--dist DIR] [--wasm-only] [--wasm-dir DIR] [--bin-dir DIR]

From the release builds already made (`make dist` runs the builds first, then this script):

    dist/portcullis-<version>/        (--dist DIR: DIR/portcullis-<version>; the version of
                                      [workspace.package] in Cargo.toml; replaced whole)
      wasm/portcullis_<filter>.wasm           the four single-stage proxy-wasm modules and the
      wasm/portcullis.wasm                    all-in-one module, with .sha256 beside each
      oci/portcullis-<name>/                  one OCI image layout per module (<name>: the filter,
                                              or all-in-one for portcullis.wasm; oci-layout,
                                              index.json, blobs/sha256/...), tagged <version>
      bin/x86_64-unknown-linux-musl/          static portcullis-edge and portcullis-connector
                                              (unless --wasm-only), with .sha256 beside each
      sbom/portcullis-<version>.cdx.json      CycloneDX 1.6 SBOM: the artefacts, with their
                                              hashes, and every crate they are built from
      release.json                            the artefacts, their SHA-256 and image digests
      SHA256SUMS                              every file above (`sha256sum -c SHA256SUMS`)

The image layouts follow the "compat" variant of the Wasm image specification that Istio's and
Envoy Gateway's image fetchers read (pkg/wasm/imagefetcher.go in both): an OCI image manifest
with one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, and the
annotation `module.wasm.image/variant: compat`. Everything is reproducible: tar entries and gzip
headers carry no time, owner or name, so the same module gives the same digests.

Only the Python standard library and `cargo metadata` are used.
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
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (image name, module file, crate): the four single-stage modules, then the all-in-one module.
MODULES = [(f, f"portcullis_{f.replace('-', '_')}.wasm", f"portcullis-{f}")
           for f in ("robots", "preauth", "conditional-access", "cookie")] + [
    ("all-in-one", "portcullis.wasm", "portcullis")]
BINARIES = ["portcullis-edge", "portcullis-connector"]
MUSL = "x86_64-unknown-linux-musl"
WASM = "wasm32-wasip1"

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def version():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def git_commit():
    """The commit built, with `-dirty` when the work tree has changes to tracked files."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None
        d = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() + ("-dirty" if d.stdout.strip() else "")
    except OSError:
        return None


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --- OCI image layout ----------------------------------------------------------------------------

def plugin_layer(module):
    """The layer: a tar holding only plugin.wasm (mode 0444, owner 0, time 0), gzip without time
    or name. Returns (uncompressed tar, compressed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(module), 0o444, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(module))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, compresslevel=9, mtime=0)


def oci_layout(directory, name, module, ver):
    """Writes an OCI image layout for one module; returns the manifest's descriptor."""
    tar_bytes, layer = plugin_layer(module)
    config = canonical({
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(tar_bytes)}"]},
        "config": {"Labels": {"org.opencontainers.image.title": name,
                              "org.opencontainers.image.version": ver}},
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{sha256(config)}", "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": f"sha256:{sha256(layer)}", "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
        "annotations": {
            "module.wasm.image/variant": "compat",
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": ver,
            "org.opencontainers.image.licenses": "Apache-2.0",
        },
    })
    for blob in (layer, config, manifest):
        write(os.path.join(directory, "blobs", "sha256", sha256(blob)), blob)
    descriptor = {"mediaType": MANIFEST, "digest": f"sha256:{sha256(manifest)}", "size": len(manifest),
                  "annotations": {"org.opencontainers.image.ref.name": ver}}
    write(os.path.join(directory, "index.json"),
          canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [descriptor]}))
    write(os.path.join(directory, "oci-layout"), canonical({"imageLayoutVersion": "1.0.0"}))
    return descriptor


# --- SBOM ------------------------------------------------------------------------------------------

def cargo_metadata(platform):
    r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", platform],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        sys.exit(f"cargo metadata --filter-platform {platform} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def lock_checksums():
    with open(os.path.join(ROOT, "Cargo.lock"), "rb") as f:
        lock = tomllib.load(f)
    return {(p["name"], p["version"]): p.get("checksum") for p in lock.get("package", [])}


def closure(meta, roots):
    """Package ids reachable from `roots` through normal and build dependencies (not dev), with
    whether each is linked into the artefact (reached through normal dependencies only)."""
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    linked, built = set(), set()

    def walk(start, kinds, seen):
        stack = list(start)
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            for d in nodes[pid]["deps"]:
                if any(k["kind"] in kinds for k in d["dep_kinds"]):
                    stack.append(d["pkg"])

    walk(roots, {None}, linked)
    walk(roots, {None, "build"}, built)
    return linked, built


def bom_ref(pkg):
    return f"{pkg['name']}@{pkg['version']}"


def sbom(ver, commit, artefacts):
    """CycloneDX 1.6: one component per artefact (type application, SHA-256), one per crate
    (purl pkg:cargo/..., licence, the Cargo.lock checksum of its .crate), and the dependency
    graph. `artefacts`: [(relative path, sha256, target platform, root package name)]."""
    checksums = lock_checksums()
    components, deps = {}, {}
    artefact_components = []
    for path, digest, platform, package in artefacts:
        meta = cargo_metadata(platform)
        by_id = {p["id"]: p for p in meta["packages"]}
        root = next(p["id"] for p in meta["packages"] if p["name"] == package and p["id"] in meta["workspace_members"])
        linked, built = closure(meta, [root])
        nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
        for pid in built:
            pkg = by_id[pid]
            ref = bom_ref(pkg)
            c = components.get(ref)
            if c is None:
                c = {"type": "library", "bom-ref": ref, "name": pkg["name"], "version": pkg["version"],
                     "scope": "excluded"}
                if pkg.get("description"):
                    c["description"] = " ".join(pkg["description"].split())
                if pkg.get("license"):
                    c["licenses"] = [{"expression": pkg["license"]}]
                if pkg.get("source", "") and pkg["source"].startswith("registry+"):
                    c["purl"] = f"pkg:cargo/{pkg['name']}@{pkg['version']}"
                    checksum = checksums.get((pkg["name"], pkg["version"]))
                    if checksum:
                        c["hashes"] = [{"alg": "SHA-256", "content": checksum}]
                    if pkg.get("repository"):
                        c["externalReferences"] = [{"type": "vcs", "url": pkg["repository"]}]
                else:
                    c["properties"] = [{"name": "portcullis:source", "value": "workspace"}]
                components[ref] = c
            if pid in linked:
                c["scope"] = "required"
            wanted = [by_id[d["pkg"]] for d in nodes[pid]["deps"]
                      if any(k["kind"] in (None, "build") for k in d["dep_kinds"])]
            deps.setdefault(ref, set()).update(bom_ref(p) for p in wanted)
        aref = f"file:{path}"
        artefact_components.append({
            "type": "application", "bom-ref": aref, "name": os.path.basename(path), "version": ver,
            "hashes": [{"alg": "SHA-256", "content": digest}],
            "properties": [{"name": "portcullis:file", "value": path},
                           {"name": "portcullis:target", "value": platform},
                           {"name": "portcullis:package", "value": package}],
        })
        deps[aref] = {bom_ref(by_id[root])}
    metadata = {
        "component": {"type": "application", "bom-ref": f"portcullis@{ver}", "name": "portcullis",
                      "version": ver, "licenses": [{"expression": "Apache-2.0"}]},
        "tools": {"components": [{"type": "application", "name": "scripts/dist.py",
                                  "description": "Portcullis release script (cargo metadata, Cargo.lock)"}]},
    }
    if commit:
        metadata["component"]["properties"] = [{"name": "portcullis:git-commit", "value": commit}]
    deps[f"portcullis@{ver}"] = {a["bom-ref"] for a in artefact_components}
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "version": 1,
        "metadata": metadata,
        "components": artefact_components + [components[k] for k in sorted(components)],
        "dependencies": [{"ref": k, "dependsOn": sorted(v)} for k, v in sorted(deps.items())],
    }


# --- main --------------------------------------------------------------------------------------------

def is_static_elf(data):
    """An x86-64 ELF file without a PT_INTERP program header (needs no dynamic loader)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1 or int.from_bytes(data[18:20], "little") != 62:
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        if int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") == 3:
            return False
    return True


def main():
    ver = version()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", default=os.path.join(ROOT, "dist"), help="parent of portcullis-<version>")
    ap.add_argument("--wasm-only", action="store_true", help="no native binaries (a test's fast layout)")
    ap.add_argument("--wasm-dir", default=os.path.join(ROOT, "target", WASM, "release"))
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", MUSL, "native"))
    args = ap.parse_args()

    out = os.path.abspath(os.path.join(args.dist, f"portcullis-{ver}"))
    if os.path.exists(out):
        shutil.rmtree(out)
    files, artefacts = [], []
    release = {"name": "portcullis", "version": ver, "commit": git_commit(), "modules": [], "binaries": []}

    def add(rel, data, sidecar=False):
        write(os.path.join(out, rel), data)
        digest = sha256(data)
        files.append(rel)
        if sidecar:
            write(os.path.join(out, rel + ".sha256"), f"{digest}  {os.path.basename(rel)}\n".encode())
        return digest

    for f, file, crate in MODULES:
        src = os.path.join(args.wasm_dir, file)
        if not os.path.exists(src):
            sys.exit(f"{src} is missing: build the release modules first (make dist does)")
        with open(src, "rb") as fh:
            module = fh.read()
        if module[:4] != b"\0asm":
            sys.exit(f"{src} is not a wasm module")
        rel = f"wasm/{os.path.basename(src)}"
        digest = add(rel, module, sidecar=True)
        name = f"portcullis-{f}"
        layout = f"oci/{name}"
        descriptor = oci_layout(os.path.join(out, layout), name, module, ver)
        for dirpath, _, names in os.walk(os.path.join(out, layout)):
            files.extend(os.path.relpath(os.path.join(dirpath, n), out) for n in names)
        release["modules"].append({"name": name, "file": rel, "sha256": digest, "size": len(module),
                                   "oci_layout": layout, "oci_ref": ver,
                                   "oci_manifest_digest": descriptor["digest"]})
        artefacts.append((rel, digest, WASM, crate))

    if not args.wasm_only:
        for b in BINARIES:
            src = os.path.join(args.bin_dir, b)
            if not os.path.exists(src):
                sys.exit(f"{src} is missing: build the static binaries first (make dist does)")
            with open(src, "rb") as fh:
                data = fh.read()
            if not is_static_elf(data):
                sys.exit(f"{src} is not a static x86-64 executable (it names a dynamic loader)")
            rel = f"bin/{MUSL}/{b}"
            digest = add(rel, data, sidecar=True)
            os.chmod(os.path.join(out, rel), 0o755)
            release["binaries"].append({"name": b, "target": MUSL, "file": rel, "sha256": digest,
                                        "size": len(data), "static": True})
            artefacts.append((rel, digest, MUSL, "portcullis-connector"))

    bom_rel = f"sbom/portcullis-{ver}.cdx.json"
    bom = json.dumps(sbom(ver, release["commit"], artefacts), indent=1, sort_keys=True).encode() + b"\n"
    release["sbom"] = {"file": bom_rel, "format": "CycloneDX 1.6 JSON", "sha256": add(bom_rel, bom)}
    add("release.json", json.dumps(release, indent=1).encode() + b"\n")

    lines = []
    for rel in sorted(files):
        with open(os.path.join(out, rel), "rb") as fh:
            lines.append(f"{sha256(fh.read())}  {rel}\n")
    write(os.path.join(out, "SHA256SUMS"), "".join(lines).encode())
    print(f"[dist] wrote {os.path.relpath(out, os.getcwd())}: {len(release['modules'])} modules with OCI layouts, "
          f"{len(release['binaries'])} static binaries, SBOM, SHA256SUMS ({len(lines)} files)")
    for m in release["modules"]:
        print(f"[dist]   {m['file']:45} sha256 {m['sha256']}  image {m['oci_manifest_digest']}")
    for b in release["binaries"]:
        print(f"[dist]   {b['file']:45} sha256 {b['sha256']}")


if __name__ == "__main__":
    main()

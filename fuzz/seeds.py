"""Writes the seed corpus of each fuzz target into fuzz/corpus/TARGET/:
the example manifests, deployments as the API receives them, and tar
archives that try what hostile uploads try (path traversal, absolute paths,
symlinks and hard links out of the tree, a writing-through symlink, a size
that claims gigabytes). The fuzzer mutates from there rather than from
nothing. Run by fuzz/run."""

import io
import json
import pathlib
import tarfile

root = pathlib.Path(__file__).resolve().parent
corpus = root / "corpus"


def seed(target, name, data):
    directory = corpus / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())


for manifest in sorted((root.parent / "examples").glob("*/wisp.toml")):
    seed("manifest", manifest.parent.name, manifest.read_text())

for name, body in {
    "wasm": {"service": "hello", "kind": "wasm-http", "image": "sha256:" + "0" * 64,
             "route": "/hello", "timeout": "10s", "memory": "128MiB", "fuel": 1000,
             "envVars": {"GREETING": "hi"}, "allowedOutboundHosts": ["https://*.example.com"]},
    "process": {"service": "shout", "kind": "process", "envProcess": "./shout.sh",
                "namespace": "team-a", "network": "outbound", "secrets": ["api-key"],
                "triggers": [{"cron": "*/5 * * * *"}, {"nats": "orders.created"}]},
    "app": {"service": "visits", "kind": "process-http", "envProcess": "python3 app.py",
            "minScale": 0, "maxScale": 4, "targetConcurrency": 20},
    "namespace": {"name": "team-a", "maxFunctions": 3, "maxArtifactBytes": "100MiB"},
    "token": {"namespace": "team-a", "role": "deploy", "name": "ci"},
}.items():
    seed("admin_json", name, json.dumps(body))

for name in ["hello", "a-b-c", "x" * 63, "x" * 64, "Upper", "-dash", "dot.ted", ""]:
    seed("names", name or "empty", name)


def archive(*members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name, data=b"", kind=tarfile.REGTYPE, link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


seed("artifact_unpack", "tree", archive(
    member("bin", kind=tarfile.DIRTYPE, mode=0o755),
    member("bin/run.sh", b"#!/bin/sh\necho hi\n", mode=0o4755),
    member("a/very/" + "long/" * 30 + "name.txt", b"x"),
))
seed("artifact_unpack", "traversal", archive(member("../escaped", b"out")))
seed("artifact_unpack", "absolute", archive(member("/tmp/escaped", b"out")))
# The file the target watches: an absolute entry must not change its mode.
seed("artifact_unpack", "absolute-sentinel", archive(member("/tmp/wisp-fuzz-sentinel", b"x")))
seed("artifact_unpack", "absolute-dir", archive(
    member("/tmp/wisp-fuzz-sentinel", kind=tarfile.DIRTYPE, mode=0o755),
))
seed("artifact_unpack", "device", archive(member("sda", kind=tarfile.BLKTYPE)))
seed("artifact_unpack", "fifo", archive(member("pipe", kind=tarfile.FIFOTYPE)))
seed("artifact_unpack", "symlink-out", archive(
    member("etc", kind=tarfile.SYMTYPE, link="/etc"),
    member("etc/written", b"through the link"),
))
seed("artifact_unpack", "hardlink-out", archive(
    member("passwd", kind=tarfile.LNKTYPE, link="/etc/passwd"),
))
big = bytearray(archive(member("huge", b"x" * 512)))
big[124:136] = b"%011o\0" % (10 << 30)  # the size field claims 10 GiB
big[148:156] = b" " * 8
big[148:156] = b"%06o\0 " % sum(big[:512])
seed("artifact_unpack", "claims-10-gib", bytes(big))

"""Detector archives and where a detector comes from (workdir.archive, workdir.fetch, shipped).

The archive is exported once from the ``smoke_evaluated`` workdir and served by a local HTTP server
on 127.0.0.1 whose routes can also 404, stall, truncate or corrupt. Every test isolates the cache
with ``$SEMSAD_CACHE``; a failure must leave no ``.part`` file or temporary directory behind and
must not touch an entry made before.
"""

from __future__ import annotations

import collections
import io
import json
import os
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import semsad_jax
from semsad_jax.errors import SemsadError
from semsad_jax.workdir import fetch, shipped
from semsad_jax.workdir.archive import MANIFEST, export_detector, extract_detector, file_sha256
from semsad_jax.workdir.fetch import package_name, resolve_detector

STALL_S = 2.0  # a stalled route sleeps this long; the client's timeout is far shorter


# ---- a local HTTP server ------------------------------------------------------------------------
class Server:
    """Routes {path: (kind, body)}: kind "ok", "stall" (no answer), "stall_body" (half the body,
    then nothing), "truncated" (half the body, Content-Length too big); unknown paths 404. ``hits`` counts the requests per path."""

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.hits: collections.Counter = collections.Counter()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                state.hits[self.path] += 1
                kind, body = state.routes.get(self.path, ("404", b""))
                if kind == "404":
                    self.send_error(404, "Not Found")
                    return
                if kind == "stall":
                    time.sleep(STALL_S)
                    return
                self.send_response(200)
                extra = 1000 if kind == "truncated" else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body if kind == "ok" else body[: len(body) // 2])
                if kind == "stall_body":
                    self.wfile.flush()
                    time.sleep(STALL_S)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, body: bytes, kind: str = "ok") -> str:
        self.routes[path] = (kind, body)
        return self.url(path)


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def archive(smoke_evaluated, tmp_path_factory) -> dict:
    """export_detector's answer for the smoke detector ({"path", "bytes", "sha256", "manifest"})."""
    return export_detector(smoke_evaluated, tmp_path_factory.mktemp("archive") / "smoke.tar.gz")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SEMSAD_CACHE", str(root))
    return root


def in_checkpoint(name: str) -> bool:
    """Whether an archive member lies in a stage's checkpoint (``<stage>/<step>/...``)."""
    parts = name.split("/")
    return len(parts) > 2 and parts[1].isdigit()


def archive_bytes(archive) -> bytes:
    return Path(archive["path"]).read_bytes()


def leftovers(root: Path) -> list[str]:
    """Half-written things under ``root``: .part files, temporary (hidden) directories."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if name.endswith(".part") or name.startswith(".") or ".extract-" in name:
                found.append(os.path.join(folder, name))
    return found


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``."""
    return {
        str(p.relative_to(root)): file_sha256(str(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(SemsadError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def tar_gz(path: Path, members: dict[str, bytes], links: dict | None = None) -> str:
    """A .tar.gz of regular files ``members`` and ``links`` {name: (type, target)}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return str(path)


def repacked(archive, path: Path, change) -> str:
    """The archive's members, ``change(name, data) -> data`` applied, as a new .tar.gz."""
    with tarfile.open(archive["path"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return tar_gz(path, {name: change(name, data) for name, data in members.items()})


# ---- export ---------------------------------------------------------------------------------------
def test_export_holds_the_detector_and_nothing_of_training(archive, smoke_evaluated):
    with tarfile.open(archive["path"]) as tar:
        members = tar.getmembers()
        contents = {m.name: tar.extractfile(m).read() for m in members}
    names = [m.name for m in members]
    assert names[0] == MANIFEST and names[1:] == sorted(names[1:])
    assert all(m.isreg() and m.mtime == members[0].mtime and m.uid == 0 for m in members)
    manifest = json.loads(contents[MANIFEST])
    assert manifest == archive["manifest"]
    assert manifest["format"] == 1 and manifest["semsad_jax"] == semsad_jax.__version__
    assert sorted(manifest["files"]) == names[1:]
    for name, entry in manifest["files"].items():
        assert entry["size"] == len(contents[name])
        if not in_checkpoint(name):  # copied as they are (the checkpoints are rewritten)
            assert file_sha256(os.path.join(smoke_evaluated, name)) == entry["sha256"]
    for required in ("config.json", "bank/bank.json", "eval/results.json", "eval/results.txt"):
        assert required in names
    for stage in ("encoder", "discriminator"):
        step = json.loads(contents[f"{stage}/stage.json"])["total_steps"]
        assert manifest["steps"][stage] == step
        steps = {n.split("/")[1] for n in names if n.startswith(stage + "/")} - {"stage.json"}
        assert steps == {str(step)}  # only the newest checkpoint
        slim = sum(len(v) for n, v in contents.items() if n.startswith(f"{stage}/{step}/"))
        full = sum(p.stat().st_size for p in Path(smoke_evaluated, stage, str(step)).rglob("*"))
        assert slim < full  # no optimiser state
    forbidden = ("metrics.jsonl", "scores.npz", ".png", ".lock")
    assert not [n for n in names if n.endswith(forbidden)]
    assert archive["sha256"] == file_sha256(archive["path"])


def test_export_refuses_an_unevaluated_workdir_and_overwriting(
    smoke_evaluated, smoke_trained, tmp_path
):
    out = tmp_path / "out" / "d.tar.gz"
    message = one_line_error(export_detector, smoke_trained, out)
    assert "eval/results.json" in message and "run --mode=eval" in message
    assert not out.parent.exists() or not list(out.parent.iterdir())
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"precious")
    message = one_line_error(export_detector, smoke_evaluated, out)
    assert "exists" in message and "overwrite=True" in message
    assert out.read_bytes() == b"precious"


def test_export_overwrites_when_asked_with_the_same_members(archive, smoke_evaluated, tmp_path):
    out = tmp_path / "d.tar.gz"
    out.write_bytes(b"old")
    again = export_detector(smoke_evaluated, out, overwrite=True)
    copied = lambda files: {k: v for k, v in files.items() if not in_checkpoint(k)}
    # the same files (the rewritten Orbax checkpoints hold random names and times: not compared)
    assert copied(again["manifest"]["files"]) == copied(archive["manifest"]["files"])
    assert sorted(os.listdir(tmp_path)) == ["d.tar.gz"]  # no staging or temporary file left


# ---- restore from every kind of source ------------------------------------------------------------
def test_restore_from_directory_archive_file_url_and_http(
    archive, smoke_evaluated, smoke_detector, server, cache
):
    assert resolve_detector(smoke_evaluated) == os.path.abspath(smoke_evaluated)
    extracted = resolve_detector(archive["path"])
    assert extracted == str(cache / "detectors" / archive["sha256"])
    assert resolve_detector(Path(archive["path"]).as_uri()) == extracted
    url = server.serve("/every/smoke.tar.gz", archive_bytes(archive))
    assert resolve_detector(url, progress=False) == extracted
    assert server.hits["/every/smoke.tar.gz"] == 1

    det = semsad_jax.Detector.restore(resolve_detector(url, progress=False))
    rng = np.random.default_rng(0)
    images = np.concatenate(
        [smoke_detector.bank.images[:3], rng.integers(0, 256, (3, 8, 8, 3), np.uint8)]
    )
    assert np.array_equal(det.score(images), smoke_detector.score(images))  # bit-identical
    assert det.threshold == smoke_detector.threshold
    assert det.is_ood(images).shape == (6,)
    assert det.provenance == smoke_detector.provenance
    assert server.hits["/every/smoke.tar.gz"] == 1
    assert leftovers(cache) == []


def test_a_second_resolve_neither_downloads_nor_extracts(archive, server, cache, monkeypatch):
    url = server.serve("/twice/smoke.tar.gz", archive_bytes(archive))
    first = resolve_detector(url, progress=False)
    first_local = resolve_detector(archive["path"])

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(fetch, "extract_detector", no_extraction)
    assert resolve_detector(url, progress=False) == first
    assert resolve_detector(archive["path"]) == first_local == first
    assert server.hits["/twice/smoke.tar.gz"] == 1


def test_sha256_right_and_wrong(archive, server, cache):
    good, bad = archive["sha256"], "0" * 64
    url = server.serve("/sha/smoke.tar.gz", archive_bytes(archive))
    entry = resolve_detector(url, sha256=good.upper(), progress=False)
    before = snapshot(cache)
    other = server.serve("/sha/other.tar.gz", archive_bytes(archive))
    assert resolve_detector(f"{other}#sha256={good}", progress=False) == entry

    for source in (f"{url}#sha256={bad}", server.url("/sha/third.tar.gz")):
        server.serve("/sha/third.tar.gz", archive_bytes(archive))
        message = one_line_error(resolve_detector, source, sha256=bad, progress=False)
        assert f"expected sha256 {bad}, got {good}; the download was discarded" in message
        assert leftovers(cache) == []
    after = snapshot(cache)
    assert {k: v for k, v in after.items() if k in before} == before  # the good entry survives
    assert server.hits["/sha/smoke.tar.gz"] == 2  # the cached copy was not the one asked for

    message = one_line_error(resolve_detector, archive["path"], sha256=bad)
    assert f"expected sha256 {bad}, got {good}" in message
    assert "64 hex digits" in one_line_error(resolve_detector, archive["path"], sha256="abc")


# ---- failures ---------------------------------------------------------------------------------------
def _not_a_detector(tmp_path: Path) -> bytes:
    return Path(tar_gz(tmp_path / "x.tar.gz", {"hello.txt": b"hi"})).read_bytes()


def _corrupted(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("404", "HTTP 404"),
        ("stall", "stalled (no data for 0.3 s)"),
        ("stall_body", "stalled (no data for 0.3 s)"),
        ("truncated", "is truncated"),
        ("corrupted", "corrupted"),
        ("not_detector", "is not a semsad-jax detector archive (no detector.json)"),
        ("refused", "cannot download"),
    ],
)
def test_a_failed_download_leaves_nothing_behind(kind, expected, archive, server, cache, tmp_path):
    good = resolve_detector(archive["path"])  # an entry made before the failure
    before = snapshot(cache)
    path = f"/fail/{kind}.tar.gz"
    data = archive_bytes(archive)
    if kind == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}{path}"
    elif kind == "404":
        url = server.url(path)
    elif kind == "corrupted":
        url = server.serve(path, _corrupted(data))
    elif kind == "not_detector":
        url = server.serve(path, _not_a_detector(tmp_path))
    else:
        url = server.serve(path, data, kind)
    message = one_line_error(resolve_detector, url, progress=False, timeout=0.3)
    assert expected in message and url in message
    assert leftovers(cache) == []
    assert snapshot(cache) == before
    assert os.path.isfile(os.path.join(good, MANIFEST))


@pytest.mark.parametrize(
    "member, links",
    [
        ("../escape.txt", {}),
        ("/tmp/semsad-absolute.txt", {}),
        (None, {"encoder/link": (tarfile.SYMTYPE, "/etc/passwd")}),
        (None, {"encoder/hard": (tarfile.LNKTYPE, "config.json")}),
        (None, {"dev": (tarfile.CHRTYPE, "")}),
    ],
)
def test_unsafe_members_are_refused(member, links, tmp_path):
    members = {MANIFEST: b"{}", "config.json": b"{}"}
    if member:
        members[member] = b"gotcha"
    path = tar_gz(tmp_path / "evil.tar.gz", members, links)
    dest = tmp_path / "inside" / "dest"
    message = one_line_error(extract_detector, path, dest)
    assert "refusing to extract" in message
    assert not dest.exists() and os.listdir(dest.parent) == []
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "inside/escape.txt").exists()


def test_not_a_detector_or_not_an_archive_is_refused(archive, cache, tmp_path):
    good = resolve_detector(archive["path"])
    before = snapshot(cache)
    plain = tar_gz(tmp_path / "plain.tar.gz", {"hello.txt": b"hi"})
    message = one_line_error(resolve_detector, plain)
    assert "is not a semsad-jax detector archive (no detector.json); make one with" in message
    text = tmp_path / "notes.tar.gz"
    text.write_text("not an archive")
    assert "is truncated or corrupted" in one_line_error(resolve_detector, str(text))
    half = tmp_path / "half.tar.gz"
    half.write_bytes(archive_bytes(archive)[: archive["bytes"] // 2])
    message = one_line_error(resolve_detector, str(half))
    assert "is truncated or corrupted" in message and "download it again" in message
    assert leftovers(cache) == [] and snapshot(cache) == before
    assert os.path.isfile(os.path.join(good, MANIFEST))


def test_a_file_that_differs_from_the_manifest_is_refused(archive, tmp_path):
    tampered = repacked(
        archive, tmp_path / "t.tar.gz", lambda n, d: d + b" " if n == "config.json" else d
    )
    message = one_line_error(extract_detector, tampered, tmp_path / "dest")
    assert "is corrupted: config.json differs from its manifest" in message
    assert sorted(os.listdir(tmp_path)) == ["t.tar.gz"]


# ---- shipped names, the cache setting, package names ------------------------------------------------
def test_shipped_names_resolve_from_the_checkout_or_the_base_url(
    archive, server, cache, tmp_path, monkeypatch
):
    message = one_line_error(resolve_detector, "no_such_detector")
    assert "digits" in message and "cifar10_cpu" in message
    assert set(shipped.shipped_names()) >= {"digits", "cifar10_cpu"}

    entry = shipped.ShippedDetector("digits.tar.gz", archive["sha256"], "the smoke detector")
    monkeypatch.setitem(shipped.SHIPPED, "digits", entry)
    monkeypatch.setattr(shipped, "repository_root", lambda: str(tmp_path / "no_checkout"))
    monkeypatch.setenv("SEMSAD_PRETRAINED_URL", server.url("/pretrained/"))
    server.serve("/pretrained/digits.tar.gz", archive_bytes(archive))
    extracted = resolve_detector("digits", progress=False)
    assert extracted.endswith(archive["sha256"])
    assert server.hits["/pretrained/digits.tar.gz"] == 1

    checkout = tmp_path / "checkout"
    (checkout / "pretrained").mkdir(parents=True)
    (checkout / "pretrained" / "digits.tar.gz").write_bytes(archive_bytes(archive))
    monkeypatch.setattr(shipped, "repository_root", lambda: str(checkout))
    assert resolve_detector("digits") == extracted
    assert server.hits["/pretrained/digits.tar.gz"] == 1

    monkeypatch.setitem(shipped.SHIPPED, "digits", entry._replace(sha256="1" * 64))
    assert f"expected sha256 {'1' * 64}" in one_line_error(resolve_detector, "digits")


def test_cache_off_and_missing_paths_and_package_names(archive, monkeypatch):
    monkeypatch.setenv("SEMSAD_CACHE", "none")
    assert "SEMSAD_CACHE" in one_line_error(resolve_detector, archive["path"])
    assert "does not exist" in one_line_error(resolve_detector, "runs/missing.tar.gz")
    assert package_name("digits") == "digits"
    assert package_name(f"https://host/x/cifar10_cpu.tar.gz#sha256={'a' * 64}") == "cifar10_cpu"
    assert package_name("/tmp/runs/my run.tgz") == "my_run"

"""A trained detector as one portable ``.tar.gz``: :func:`export_detector` and :func:`extract_detector`.

An archive holds what :meth:`semsad_jax.Detector.restore` reads and nothing of training::

    detector.json                     the manifest (first member): format, semsad_jax version,
                                      created (UTC), the stages' steps and {path: {sha256, size}}
                                      of every other member
    config.json
    encoder/stage.json                as in the workdir
    encoder/<step>/...                ONLY the finished checkpoint, slimmed: params and batch_stats
                                      (opt_state is an empty dict; restore_model drops it anyway)
    discriminator/stage.json, discriminator/<step>/...
    rotation/stage.json, rotation/<step>/...   (when the config enables the rotation detector)
    bank/bank.json, bank/arrays/...   the feature bank, as in the workdir
    eval/results.json, eval/results.txt

No metrics.jsonl, scores.npz, plots, older checkpoints or lock file. Members are regular files in
sorted order with a fixed mtime, uid/gid 0 and mode 0644 (the gzip header has no time either), so
only the manifest's "created" differs between two exports of one workdir.

The archive is written to a temporary file renamed into place (never half written, never over an
existing file unless ``overwrite``). Extraction refuses absolute paths, ``..``, links and devices,
writes into a temporary sibling of the destination, checks every file against the manifest and only
then renames it to the destination: on any failure nothing is left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from typing import Any, BinaryIO

import jax

from semsad_jax._version import __version__
from semsad_jax.errors import SemsadError
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.layout import (
    RESULTS_JSON,
    RESULTS_TXT,
    Workdir,
    as_workdir,
    trained_stages,
    write_file,
)
from semsad_jax.workdir.space import reporting_disk_full

__all__ = ["FORMAT", "MANIFEST", "REQUIRED", "export_detector", "extract_detector", "file_sha256"]

FORMAT = 1
MANIFEST = "detector.json"
REQUIRED = (
    "config.json",
    "encoder/stage.json",
    "discriminator/stage.json",
    "bank/bank.json",
    "eval/results.json",
)
_MTIME = 946684800  # 2000-01-01: every member's mtime, so the members do not depend on the clock
_CHUNK = 1 << 20
_MAKE = "make one with semsad_jax.workdir.archive.export_detector(WORKDIR, OUT)"


def file_sha256(path: str) -> str:
    """The hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---- export ---------------------------------------------------------------------------------------
def _check_exportable(wd: Workdir) -> None:
    wd.check_trained(trained_stages(wd.config()))  # config.json or a one-line error first
    if wd.read(wd.bank_json) is None:
        raise SemsadError(
            f"no feature bank in {wd.bank_dir}; run --mode=discriminator with this --workdir first."
        )
    if wd.read(wd.results_json) is None:
        raise SemsadError(
            f"{wd.path} has no eval/results.json (no thresholds to ship); run --mode=eval with "
            "this --workdir first."
        )


def _slim_checkpoint(wd: Workdir, stage: str, staging: str) -> int:
    """Writes the finished (newest) checkpoint of ``stage`` with params and batch_stats only into
    ``staging/<stage>/<step>``; returns the step. Reads exactly that step, so the workdir is never
    changed (an unreadable checkpoint is reported, not moved aside)."""
    step = int(wd.stage_meta(stage)["total_steps"])
    source = StageCheckpoints(wd.stage_dir(stage), asynchronous=False)
    try:
        if step not in source.all_steps():
            raise SemsadError(
                f"the finished {stage} checkpoint (step {step}) is missing from "
                f"{wd.stage_dir(stage)}; rerun --mode={stage}."
            )
        try:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract = source.saved_abstract(step, device)
        except Exception as err:  # unreadable metadata: a damaged checkpoint
            raise SemsadError(
                f"checkpoint {wd.stage_dir(stage)}/{step} is unreadable "
                f"({_first_line(err)}); rerun --mode={stage} --overwrite."
            ) from None
        state, _ = source.restore(abstract, step=step)
    finally:
        source.close()
    slim = StageCheckpoints(os.path.join(staging, stage), keep=1, asynchronous=False)
    try:
        slim.save(
            step, {"params": state["params"], "batch_stats": state["batch_stats"], "opt_state": {}}
        )
    finally:
        slim.close()
    return step


def _files_under(root: str, prefix: str) -> dict[str, str]:
    """{archive name: path} of the regular files under ``root`` (named ``prefix/relative``)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if "orbax-checkpoint-tmp" not in d]
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                found[f"{prefix}/{rel}"] = path
    return found


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def export_detector(
    workdir: str | Workdir, out_path: str, *, overwrite: bool = False
) -> dict[str, Any]:
    """Writes the detector of an evaluated ``workdir`` as one ``.tar.gz`` at ``out_path``.

    Returns {"path", "bytes", "sha256" (of the archive), "manifest"}. Raises a one-line SemsadError
    for an unfinished or unevaluated workdir and for an existing ``out_path`` (unless
    ``overwrite``); a failed export leaves ``out_path`` as it was.
    """
    wd = as_workdir(workdir)
    out_path = os.path.abspath(os.path.expanduser(str(out_path)))
    if os.path.exists(out_path) and not overwrite:
        raise SemsadError(f"{out_path} exists; pass overwrite=True or choose another path.")
    _check_exportable(wd)
    out_dir = os.path.dirname(out_path)
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".semsad-export-", dir=out_dir) as staging:
        files = {"config.json": wd.config_json}
        steps = {}
        for stage in trained_stages(wd.config()):
            steps[stage] = _slim_checkpoint(wd, stage, staging)
            files[f"{stage}/stage.json"] = wd.stage_json(stage)
            step_dir = os.path.join(staging, stage, str(steps[stage]))
            files.update(_files_under(step_dir, f"{stage}/{steps[stage]}"))
        files["bank/bank.json"] = wd.bank_json
        files.update(_files_under(wd.bank_arrays, "bank/arrays"))
        for name in (RESULTS_JSON, RESULTS_TXT):
            if os.path.isfile(wd.eval_file(name)):
                files[f"eval/{name}"] = wd.eval_file(name)
        listed = {
            name: {"sha256": file_sha256(path), "size": os.path.getsize(path)}
            for name, path in sorted(files.items())
        }
        manifest = {
            "format": FORMAT,
            "semsad_jax": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": steps,
            "files": listed,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True).encode()

        def write(handle: BinaryIO) -> None:
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.addfile(_member(MANIFEST, len(text)), io.BytesIO(text))
                for name in listed:
                    with open(files[name], "rb") as src:
                        tar.addfile(_member(name, listed[name]["size"]), src)

        if os.path.exists(out_path) and not overwrite:  # appeared meanwhile
            raise SemsadError(f"{out_path} exists; pass overwrite=True or choose another path.")
        write_file(out_path, write, sum(entry["size"] for entry in listed.values()))
    return {
        "path": out_path,
        "bytes": os.path.getsize(out_path),
        "sha256": file_sha256(out_path),
        "manifest": manifest,
    }


# ---- extraction -----------------------------------------------------------------------------------
def _safe_name(name: str, archive: str) -> str:
    """The member's normalised relative path; SemsadError for an absolute path or ``..``."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts or not parts:
        raise SemsadError(
            f"{archive} holds the unsafe member {name!r} (an absolute path or '..'); refusing to "
            f"extract it. Use an archive you trust, or {_MAKE}."
        )
    return "/".join(parts)


def _unpacked_bytes(path: str) -> int:
    """About the bytes ``path`` unpacks to: the gzip trailer's size (mod 4 GiB) or the file's."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(size - 4, 0))
        trailer = handle.read(4)
    return max(size, int.from_bytes(trailer, "little") if len(trailer) == 4 else 0)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def _corrupted(archive: str, err: BaseException) -> SemsadError:
    return SemsadError(
        f"{archive} is truncated or corrupted ({_first_line(err)}); download it again."
    )


def _unpack(archive_path: str, into: str, label: str) -> dict[str, str]:
    """Extracts the regular files of the archive into ``into``; returns {name: sha256}."""
    hashes: dict[str, str] = {}
    try:
        with tarfile.open(archive_path, mode="r:gz") as tar:
            for member in tar:
                name = _safe_name(member.name, label)
                if member.isdir():
                    os.makedirs(os.path.join(into, name), exist_ok=True)
                    continue
                if not member.isreg():
                    raise SemsadError(
                        f"{label} holds {name!r}, a link or device, not a file; refusing to "
                        f"extract it. Use an archive you trust, or {_MAKE}."
                    )
                if name in hashes:
                    raise SemsadError(f"{label} holds {name!r} twice; {_MAKE}.")
                path = os.path.join(into, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                digest = hashlib.sha256()
                with tar.extractfile(member) as src, open(path, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                hashes[name] = digest.hexdigest()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise _corrupted(label, err) from None
    return hashes


def _check_manifest(into: str, hashes: dict[str, str], label: str) -> dict:
    if MANIFEST not in hashes:
        raise SemsadError(f"{label} is not a semsad-jax detector archive (no {MANIFEST}); {_MAKE}.")
    try:
        with open(os.path.join(into, MANIFEST)) as handle:
            manifest = json.load(handle)
        listed, version = manifest["files"], int(manifest["format"])
        if not all(isinstance(entry, dict) for entry in listed.values()):
            raise TypeError("a file entry is not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SemsadError(
            f"{label} has an unreadable {MANIFEST} ({type(err).__name__}: {err}); {_MAKE}."
        ) from None
    if version > FORMAT:
        raise SemsadError(
            f"{label} is a detector archive of format {version}, newer than this semsad-jax "
            f"({__version__}) reads ({FORMAT}); upgrade semsad-jax."
        )
    for name in REQUIRED:
        if name not in listed:
            raise SemsadError(f"{label} is incomplete: it lacks {name}; {_MAKE}.")
    for name, entry in sorted(listed.items()):
        if name not in hashes:
            raise SemsadError(f"{label} is incomplete: {name} is missing; download it again.")
        if hashes[name] != entry.get("sha256"):
            raise SemsadError(
                f"{label} is corrupted: {name} differs from its manifest; download it again."
            )
    extra = sorted(set(hashes) - set(listed) - {MANIFEST})
    if extra:
        raise SemsadError(f"{label} is corrupted: {extra[0]} is not in its manifest; {_MAKE}.")
    return manifest


def extract_detector(archive_path: str, dest_dir: str, *, name: str | None = None) -> str:
    """Extracts and verifies a detector archive into ``dest_dir`` (which must not exist yet).

    ``name``: how messages call the archive (default: its path). Returns ``dest_dir`` (absolute).
    Raises a one-line SemsadError for a truncated or corrupted archive, one that is not a detector,
    an unsafe member or a file that differs from the manifest; nothing is then left at
    ``dest_dir``, nor any temporary directory.
    """
    archive_path = os.path.abspath(os.path.expanduser(str(archive_path)))
    dest_dir = os.path.abspath(os.path.expanduser(str(dest_dir)))
    label = name or archive_path
    if os.path.exists(dest_dir):
        raise SemsadError(f"{dest_dir} exists; remove it or extract into another directory.")
    if not os.path.isfile(archive_path):
        raise SemsadError(f"{archive_path} does not exist; pass the path of a detector archive.")
    parent = os.path.dirname(dest_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest_dir)}.extract-", dir=parent)
    try:
        with reporting_disk_full(parent, _unpacked_bytes(archive_path), f"extracting {label}"):
            _check_manifest(tmp, _unpack(archive_path, tmp, label), label)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest_dir)
        except OSError as err:
            raise SemsadError(
                f"cannot move the extracted detector to {dest_dir} ({err.strerror}); remove it or "
                "extract into another directory."
            ) from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir

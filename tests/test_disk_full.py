"""A full disk loses nothing: one line naming the path and the space needed, the last good
checkpoint and every finished stage intact, no half-written file taken for a good one later, and an
exact resume once space is freed (issue 16 part 4; docs/reliability.md).

The CLI test puts the workdir on a size-limited tmpfs (mounting needs root: skipped with the reason
where it is not allowed); the others inject ENOSPC where Orbax or a file write would meet it.
"""

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

pytest.importorskip("ml_collections")  # configs/ and main.py need it (not on the GPU image)

from semsad_jax.configs import smoke
from semsad_jax.errors import DiskFull, is_disk_full
from semsad_jax.run import run
from semsad_jax.train.logs import MetricsWriter
from semsad_jax.workdir import space
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.layout import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_MARK = ".orbax-checkpoint-tmp"
ORBAX_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to write 55427 bytes '
    "to file 5: No space left on device [os_error_code='28']"
)


@contextlib.contextmanager
def _tmpfs(path, size: str):
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected tests cover it"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _cli(env, workdir):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/smoke.py"]
    cmd += [f"--workdir={workdir}", "--mode=all"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _params(stage_dir, step):
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(stage_dir, str(step), "state"))
    flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def _leftovers(workdir):
    """Half-written files of any kind under ``workdir``."""
    out = []
    for root, dirs, files in os.walk(workdir):
        out += [os.path.join(root, n) for n in dirs + files if TMP_MARK in n or ".tmp" in n]
    return out


def _committed(stage_dir):
    if not os.path.isdir(stage_dir):
        return []
    return sorted(int(n) for n in os.listdir(stage_dir) if n.isdigit())


def test_cli_on_a_full_disk_stops_in_one_line_and_resumes_exactly(tmp_path):
    """3 MiB: the encoder (two checkpoints, 1.6 MB) finishes, the disk fills in the
    discriminator (the injected tests below fill it during the encoder and the bank)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    reference = tmp_path / "reference"
    code, output = _cli(env, reference)
    assert code == 0, output[-3000:]
    with _tmpfs(tmp_path / "small", "3m") as small:
        workdir = small / "w"
        code, output = _cli(env, workdir)
        lines = output.strip().splitlines()
        assert code == 2, output[-3000:]
        assert "Traceback" not in output and "No space left" not in output, output[-3000:]
        assert len(lines) < 12, output[-3000:]  # a few INFO lines, then ours
        assert lines[-1].startswith("error: disk full:") and str(workdir) in lines[-1]
        assert "needs about" in lines[-1] and "rerun the same command" in lines[-1]
        # nothing half-written is left to be taken for a good file; what was saved is readable
        assert _leftovers(workdir) == []
        for stage in ("encoder", "discriminator"):
            stage_dir = workdir / stage
            for step in _committed(stage_dir):
                assert _params(stage_dir, step).keys() == _params(reference / stage, step).keys()
            if (stage_dir / "stage.json").exists():
                json.loads((stage_dir / "stage.json").read_text())
            if (stage_dir / "metrics.jsonl").exists():
                for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
                    json.loads(line)
        encoder = json.loads((workdir / "encoder" / "stage.json").read_text())
        assert encoder["finished"] and "discriminator" in lines[-1]  # a finished stage, kept
        assert _committed(workdir / "encoder") == [2, 4]
        # space freed: the same command resumes and ends where an uninterrupted run ends
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        code, output = _cli(env, workdir)
        assert code == 0, output[-3000:]
        for stage in ("encoder", "discriminator"):
            ours, theirs = _params(workdir / stage, 4), _params(reference / stage, 4)
            for key, value in theirs.items():
                np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-6, err_msg=key)
        ours = json.loads((workdir / "eval" / "results.json").read_text())["detectors"]
        theirs = json.loads((reference / "eval" / "results.json").read_text())["detectors"]
        assert _close(ours, theirs), (ours, theirs)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float | int):
        return abs(a - b) <= 1e-6
    return a == b


# ---- injected ENOSPC --------------------------------------------------------------------------


def test_is_disk_full_reads_oserrors_and_orbax_messages():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(ValueError(ORBAX_ENOSPC))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))


def _free(monkeypatch, free: int) -> None:
    """The disk reports ``free`` bytes free (for every size check of semsad_jax)."""
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: usage._replace(free=free))


def _state(value=1.0):
    return {
        "params": {"w": np.full((64, 64), value, np.float32)},
        "batch_stats": {},
        "opt_state": {},
    }


def test_checkpoint_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    ckpts = StageCheckpoints(str(tmp_path / "encoder"), keep=3)
    ckpts.save(2, _state())
    ckpts.wait()
    _free(monkeypatch, 1000)
    with pytest.raises(DiskFull) as err:
        ckpts.save(4, _state(2.0))
    message = str(err.value)
    assert (
        str(tmp_path / "encoder") in message and "needs about 85.0 KiB" in message
    )  # 1.25 x 16 KiB + 1 + 64 KiB
    assert "1000 B free" in message and "resume from step 2" in message
    assert sorted(os.listdir(tmp_path / "encoder")) == ["2"]
    restored, step = StageCheckpoints(str(tmp_path / "encoder")).restore(_state(0.0))
    assert step == 2 and float(restored["params"]["w"][0, 0]) == 1.0


def test_checkpoint_failing_mid_write_is_removed_and_reported(tmp_path, monkeypatch):
    ckpts = StageCheckpoints(str(tmp_path / "encoder"), keep=3, asynchronous=False)
    ckpts.save(2, _state())

    def full_save(step, args):
        os.makedirs(tmp_path / "encoder" / f"{step}{TMP_MARK}" / "state")  # a partial write
        raise ValueError(ORBAX_ENOSPC)

    monkeypatch.setattr(ckpts._manager, "save", full_save)
    with pytest.raises(DiskFull, match=r"checkpoint of step 4 ran out of space .* from step 2"):
        ckpts.save(4, _state(2.0))
    assert sorted(os.listdir(tmp_path / "encoder")) == ["2"]


def test_bank_that_does_not_fit_keeps_the_stages_and_is_rebuilt_later(tmp_path, monkeypatch):
    config = smoke.get_config()
    config.data.test = ""
    run(config, str(tmp_path), "encoder")
    encoder = sorted(os.listdir(tmp_path / "encoder"))
    _free(monkeypatch, 0)
    with pytest.raises(DiskFull, match=r"the feature bank of 64 images does not fit in .*bank"):
        run(config, str(tmp_path), "discriminator")
    assert not (tmp_path / "bank" / "bank.json").exists()
    assert sorted(os.listdir(tmp_path / "encoder")) == encoder
    monkeypatch.undo()

    def full_save(self, path, *args, **kwargs):
        os.makedirs(os.path.join(path, "half"))
        raise ValueError(ORBAX_ENOSPC)

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", full_save)
    with pytest.raises(DiskFull, match="the feature bank of 64 images ran out of space"):
        run(config, str(tmp_path), "discriminator")
    assert not (tmp_path / "bank" / "arrays").exists()  # the half-written arrays are gone
    assert not (tmp_path / "bank" / "bank.json").exists()


def test_json_and_metrics_writes_leave_no_half_file(tmp_path, monkeypatch):
    path = tmp_path / "stage.json"
    write_json(str(path), {"finished": False})
    writer = MetricsWriter(str(tmp_path / "metrics.jsonl"))
    writer.write(1, {"loss": 1.0})
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullFile(f) if ("w" in mode or "a" in mode) else f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(DiskFull, match=r"stage\.json"):
        write_json(str(path), {"finished": True, "big": "x" * 1000})
    with pytest.raises(DiskFull, match="metrics line"):
        writer.write(2, {"loss": 0.5})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"finished": False}
    assert [
        json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ] == [1]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "stage.json"]


def test_cache_on_a_full_disk_decodes_in_memory(tmp_path, monkeypatch, caplog):
    """The decoded-data cache preallocates its images file: a full cache disk means a warning and
    an uncached set, never a SIGBUS from writing into a sparse mapping."""
    from PIL import Image

    from semsad_jax.data.sources import load_images

    rng = np.random.default_rng(0)
    for i in range(6):
        os.makedirs(tmp_path / "imgs" / f"c{i % 2}", exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png"
        )
    spec = f"folder:{tmp_path / 'imgs'}"
    plain = load_images(spec, 8, cache_dir="none")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING"):
        loaded = load_images(spec, 8, cache_dir=str(cache))
    np.testing.assert_array_equal(loaded.images, plain.images)
    assert "cannot hold" in caplog.text
    assert [n for n in os.listdir(cache) if ".tmp" in n] == []  # no half-written file left

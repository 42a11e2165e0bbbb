"""Reliability: preemption (SIGKILL / SIGTERM / Ctrl-C), damaged checkpoints, one writer per
workdir, bad input, numerical faults and stages run in the wrong order (docs/reliability.md).

The subprocess tests run ``main.py`` like a user would; they share one JAX compilation cache so
only the first run compiles. Final parameters are read back with Orbax's own
``StandardCheckpointer`` (not the project's restore code) and compared with an uninterrupted run.
"""

import glob
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

pytest.importorskip("ml_collections")  # configs/ and main.py need it (not on the GPU image)

from helpers import load_set, load_train_set, train_encoder

from semsad_jax.configs import smoke
from semsad_jax.data import load_images
from semsad_jax.errors import SemsadError
from semsad_jax.run import run
from semsad_jax.train import logs, loop
from semsad_jax.train import stage as stage_runner
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.lock import WorkdirLock

pytestmark = [
    pytest.mark.reliability,
    # a failed Orbax restore can leave tensorstore callbacks for an event loop it already closed;
    # Python reports them as "Exception ignored ... Event loop is closed" (harmless)
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 24  # 64 smoke images / batch 16 = 4 steps per epoch, 6 epochs
TRAIN_ARGS = (
    "--config=configs/smoke.py",
    "--mode=encoder",
    "--config.data.test=",  # no kNN monitor: nothing but training
    "--config.encoder.epochs=6",
    "--config.encoder.checkpoint_every_steps=3",
)
TMP_MARK = ".orbax-checkpoint-tmp"


# ---- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Environment of main.py subprocesses: CPU, one persistent compilation cache for all."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def _start(env, log_path, *args):
    log = open(log_path, "w")  # noqa: SIM115 (closed by _finish)
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _finish(proc, timeout=300):
    proc.wait(timeout=timeout)
    proc.log.close()
    with open(proc.log.name) as f:
        return f.read()


def _run(env, tmp_path, *args):
    """Runs main.py to the end; returns (exit code, combined output)."""
    proc = _start(env, tmp_path / f"log-{time.monotonic_ns()}.txt", *args)
    output = _finish(proc)
    return proc.returncode, output


def _metric_lines(stage):
    path = os.path.join(stage, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _wait_for_lines(proc, stage, count, timeout=300):
    """Blocks until metrics.jsonl has ``count`` lines (the run logs every step)."""
    deadline = time.time() + timeout
    while _metric_lines(stage) < count:
        if proc.poll() is not None:
            pytest.fail(f"main.py exited ({proc.returncode}) early:\n{_finish(proc)[-3000:]}")
        assert time.time() < deadline, "training did not start"
        time.sleep(0.002)


def _committed_steps(stage):
    return sorted(int(n) for n in os.listdir(stage) if n.isdigit())


def _saved_params(stage, step):
    """The ``params`` of checkpoint ``step``, read with plain Orbax: {path: float32 array}."""
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(stage, str(step), "state"))
    flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _assert_one_error_line(code, output, *needles):
    lines = output.strip().splitlines()
    assert code == 2, output[-3000:]
    assert lines[-1].startswith("error:"), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def reference(cli_env, tmp_path_factory):
    """An uninterrupted CLI run (also fills the compilation cache): (workdir, final params)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    code, output = _run(cli_env, workdir, f"--workdir={workdir}", *TRAIN_ARGS)
    assert code == 0, output[-3000:]
    stage = str(workdir / "encoder")
    assert _committed_steps(stage)[-1] == TOTAL_STEPS
    return workdir, _saved_params(stage, TOTAL_STEPS)


# ---- 1. preemption ----------------------------------------------------------------------------


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(reference, cli_env, tmp_path):
    """Kill -9 three times (random moment, mid-save, random), damage the newest checkpoint, then
    rerun to the end: the final parameters equal those of the uninterrupted run.

    The random moments are drawn in steps (then up to 50 ms), not seconds, so that they fall
    inside training on any machine; the seed is in every assertion message."""
    seed = random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    workdir, stage = tmp_path / "w", str(tmp_path / "w" / "encoder")
    args = (f"--workdir={workdir}", *TRAIN_ARGS)
    logs, kills, saw_unfinished, latest = [], 0, False, 0
    for moment in ("random", "mid-save", "random"):
        lines = _metric_lines(stage)
        proc = _start(cli_env, tmp_path / f"kill{kills}.txt", *args)
        _wait_for_lines(proc, stage, lines + 1)  # past startup: training
        if moment == "mid-save":  # after this run's first commit, while a later save runs
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline:
                newest = max(_committed_steps(stage), default=0)
                if newest > latest and any(TMP_MARK in n for n in os.listdir(stage)):
                    break
                time.sleep(0.002)
        else:  # a random step in the first half of what is left, then a random instant
            steps = rng.randint(1, max(1, (TOTAL_STEPS - latest) // 2))
            _wait_for_lines(proc, stage, lines + steps)
            time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        logs.append(_finish(proc))
        if proc.returncode == 0:
            break  # it finished before the kill (a very fast machine)
        assert proc.returncode == -signal.SIGKILL, (seed, logs[-1][-3000:])
        kills += 1
        saw_unfinished |= any(TMP_MARK in n for n in os.listdir(stage))
        newest = max(_committed_steps(stage), default=0)
        # no work is ever lost: the newest committed checkpoint never goes back
        assert newest >= latest, (seed, newest, latest)
        if latest:
            assert f"resuming encoder from step {latest} " in logs[-1], (seed, logs[-1][-2000:])
        latest = newest
    assert kills >= 2 and latest > 0, f"runs finished before being killed (seed {seed})"

    # a damaged newest checkpoint: the run must fall back to the previous one, not restart
    steps = _committed_steps(stage)
    expected_start = latest
    if len(steps) >= 2 and latest < TOTAL_STEPS:
        for path in glob.glob(f"{stage}/{latest}/state/**/d/*", recursive=True):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
        expected_start = steps[-2]

    code, output = _run(cli_env, tmp_path, *args)
    assert code == 0, (seed, output[-3000:])
    if expected_start:
        assert f"resuming encoder from step {expected_start} " in output, (seed, output[-3000:])
    if expected_start != latest:
        assert re.search(rf"checkpoint \S+/{latest} is unreadable", output), (seed, output)
        assert glob.glob(f"{stage}/corrupt-{latest}-*/state"), seed  # moved aside, not deleted
    if saw_unfinished:
        assert "found the unfinished save" in "".join(logs[1:]) + output, seed
        assert glob.glob(f"{stage}/unfinished-*"), seed
    assert not any(TMP_MARK in n for n in os.listdir(stage)), seed

    expected = reference[1]
    resumed = _saved_params(stage, TOTAL_STEPS)
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(resumed[key], value, rtol=0, atol=1e-6, err_msg=f"{key} {seed}")
    with open(os.path.join(stage, "stage.json")) as f:
        meta = json.load(f)
    assert meta["finished"] and meta["total_steps"] == TOTAL_STEPS


def test_sigterm_saves_a_checkpoint_and_exits_130(reference, cli_env, tmp_path):
    stage = str(tmp_path / "encoder")
    proc = _start(cli_env, tmp_path / "sigterm.txt", f"--workdir={tmp_path}", *TRAIN_ARGS)
    _wait_for_lines(proc, stage, 1)
    proc.send_signal(signal.SIGTERM)
    output = _finish(proc)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    match = re.fullmatch(
        r"interrupted: encoder: stopped by signal 15 at step (\d+); checkpoint saved, rerun the "
        r"same command to resume\.",
        last,
    )
    assert match, last
    step = int(match.group(1))
    assert 0 < step < TOTAL_STEPS
    assert _committed_steps(stage)[-1] == step  # saved at the very step it stopped
    assert _saved_params(stage, step).keys() == reference[1].keys()
    with open(os.path.join(stage, "metrics.jsonl")) as f:
        assert json.loads(f.readlines()[-1])["step"] == step


def test_ctrl_c_saves_and_a_second_ctrl_c_aborts_at_once(tmp_path):
    """Ctrl-C (SIGINT) takes the same path as SIGTERM; a second one while stopping aborts."""
    before = signal.getsignal(signal.SIGINT)

    def step_fn(state, step):
        if int(step) == 4:  # during the 5th step
            os.kill(os.getpid(), signal.SIGINT)
        return {"w": state["w"] + 1.0}, {"loss": jax.numpy.float32(1.0), "finite": True}

    with pytest.raises(loop.Interrupted, match="stopped by signal 2 at step 5; checkpoint saved"):
        _loop(tmp_path, step_fn)
    assert _committed_steps(str(tmp_path / "stage")) == [3, 5]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    def twice(state, step):
        if int(step) == 5:  # during the 6th step, i.e. before the save at step 6
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return {"w": state["w"] + 1.0}, {"loss": jax.numpy.float32(1.0), "finite": True}

    state, step = StageCheckpoints(str(tmp_path / "stage")).restore({"w": np.zeros(3, np.float32)})
    assert step == 5 and np.asarray(state["w"]).tolist() == [5.0, 5.0, 5.0]
    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path, twice, start=step, state=state)
    assert signal.getsignal(signal.SIGINT) is before
    assert _committed_steps(str(tmp_path / "stage")) == [3, 5]  # nothing half-saved


# ---- 2. checkpoint integrity ------------------------------------------------------------------


def _state(value):
    return {
        "params": {"w": np.full((4, 3), value, np.float32), "b": np.arange(5, dtype=np.float32)},
        "opt_state": {"count": np.asarray(int(value), np.int32)},
    }


def _three_checkpoints(directory):
    ckpts = StageCheckpoints(str(directory), keep=3)
    for step in (1, 2, 3):
        ckpts.save(step, _state(step))
    ckpts.close()
    return str(directory)


def _data_files(step_dir):
    return [p for p in glob.glob(f"{step_dir}/**/d/*", recursive=True) if os.path.isfile(p)]


def _truncate(step_dir):
    for path in _data_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _garble(step_dir):
    for path in _data_files(step_dir):
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            data[::7] = bytes(b ^ 0xFF for b in data[::7])
            f.seek(0)
            f.write(bytes(data))


def _bad_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": ')


def _emptied(step_dir):
    for path in glob.glob(f"{step_dir}/**", recursive=True):
        if os.path.isfile(path):
            os.remove(path)


@pytest.mark.parametrize("damage", [_truncate, _garble, _bad_metadata, _emptied])
def test_damaged_newest_checkpoint_is_moved_aside_and_previous_used(damage, tmp_path, caplog):
    directory = _three_checkpoints(tmp_path / "stage")
    damage(os.path.join(directory, "3"))
    files_before = sorted(os.listdir(os.path.join(directory, "3")))
    with caplog.at_level(logging.WARNING):
        state, step = StageCheckpoints(directory).restore(_state(0))
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], np.full((4, 3), 2.0, np.float32))
    assert int(state["opt_state"]["count"]) == 2
    aside = glob.glob(os.path.join(directory, "corrupt-3-*"))
    assert len(aside) == 1 and sorted(os.listdir(aside[0])) == files_before  # never deleted
    assert "checkpoint" in caplog.text and "/3 is unreadable" in caplog.text
    assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["1", "2"]


def test_unfinished_save_is_ignored_then_moved_aside(tmp_path, caplog):
    directory = _three_checkpoints(tmp_path / "stage")
    partial = os.path.join(directory, f"4{TMP_MARK}")  # what a kill during save 4 leaves
    shutil.copytree(os.path.join(directory, "3"), partial)
    _truncate(partial)
    older_orbax = os.path.join(directory, f"4{TMP_MARK}-1764000000")  # other Orbax versions
    os.makedirs(older_orbax)
    ckpts = StageCheckpoints(directory)
    assert ckpts.restore(_state(0))[1] == 3
    with caplog.at_level(logging.WARNING):
        ckpts.save(4, _state(4))
        ckpts.close()
    assert "found the unfinished save" in caplog.text
    assert not os.path.exists(partial) and not os.path.exists(older_orbax)
    assert len(glob.glob(os.path.join(directory, "unfinished-4-*"))) == 2  # no name clash
    assert len(glob.glob(os.path.join(directory, "unfinished-4-*", "state"))) == 1
    state, step = StageCheckpoints(directory).restore(_state(0))
    assert step == 4 and float(state["params"]["w"][0, 0]) == 4.0


def test_no_readable_checkpoint_stops_without_moving_anything(tmp_path):
    directory = _three_checkpoints(tmp_path / "stage")
    for step in (1, 2, 3):
        _truncate(os.path.join(directory, str(step)))
    with pytest.raises(SemsadError, match=r"no checkpoint in .* can be read .* nothing was moved"):
        StageCheckpoints(directory).restore(_state(0))
    assert sorted(n for n in os.listdir(directory) if n.isdigit()) == ["1", "2", "3"]


@pytest.mark.parametrize(
    "target, problem",
    [
        ({**_state(0), "params": {"w": np.zeros((8, 3), np.float32), "b": np.zeros(5)}}, "w"),
        ({**_state(0), "params": {"w": np.zeros((4, 3), np.float32)}}, "params/b"),
        ({**_state(0), "extra": np.zeros(2, np.float32)}, "extra"),
    ],
)
def test_checkpoint_of_another_model_is_refused_not_moved(target, problem, tmp_path):
    directory = _three_checkpoints(tmp_path / "stage")
    with pytest.raises(SemsadError, match=f"does not match this config's model .*{problem}"):
        StageCheckpoints(directory).restore(target)
    assert sorted(os.listdir(directory)) == ["1", "2", "3"]


@pytest.fixture
def finished_copy(reference, tmp_path):
    """A copy of the uninterrupted run's workdir and its smoke training set."""
    shutil.copytree(reference[0] / "encoder", tmp_path / "encoder")
    config = smoke.get_config()
    config.data.test = ""
    config.encoder.epochs, config.encoder.checkpoint_every_steps = 6, 3
    return tmp_path, config, load_train_set(config)


def test_workdir_of_another_width_is_refused_even_without_stage_json(finished_copy):
    workdir, config, train = finished_copy
    os.remove(workdir / "encoder" / "stage.json")
    before = sorted(os.listdir(workdir / "encoder"))
    config.encoder.width = 8
    with pytest.raises(SemsadError, match=r"does not match this config's model .*\[4.*\[8"):
        train_encoder(config, workdir, train)
    after = sorted(n for n in os.listdir(workdir / "encoder") if n != "stage.json")
    assert after == [n for n in before if n != "stage.json"]


def test_finished_stage_with_fewer_epochs_is_refused_and_kept(finished_copy, reference):
    workdir, config, train = finished_copy
    config.encoder.epochs = 2  # 8 steps, but the workdir holds 24
    recorded = (workdir / "encoder" / "stage.json").read_text()
    with pytest.raises(SemsadError, match="step 24, beyond this config's 8 steps"):
        train_encoder(config, workdir, train)
    assert (workdir / "encoder" / "stage.json").read_text() == recorded  # nothing rewritten
    config.encoder.epochs = 6  # the original config reuses it, untouched
    summary = train_encoder(config, workdir, train)
    assert summary["finished"] and summary["total_steps"] == TOTAL_STEPS
    params = _saved_params(str(workdir / "encoder"), TOTAL_STEPS)
    for key, value in reference[1].items():
        np.testing.assert_array_equal(params[key], value)


def test_overwrite_keeps_the_old_stage_aside(finished_copy, monkeypatch):
    workdir, config, train = finished_copy
    old_files = sorted(os.listdir(workdir / "encoder"))
    monkeypatch.setattr(stage_runner, "run_loop", lambda **kw: kw["state"])  # skip training
    summary = train_encoder(config, workdir, train, overwrite=True)
    aside = glob.glob(str(workdir / "encoder.old-*"))
    assert len(aside) == 1 and sorted(os.listdir(aside[0])) == old_files
    assert summary["finished"]
    assert not [n for n in os.listdir(workdir / "encoder") if n.isdigit()]  # new stage, fresh


# ---- 3. one writer per workdir ----------------------------------------------------------------


def test_second_writer_on_a_workdir_stops_with_a_clear_message(cli_env, tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(SemsadError, match="in use by pid"):
            WorkdirLock(str(tmp_path)).__enter__()
        code, output = _run(cli_env, tmp_path, f"--workdir={tmp_path}", *TRAIN_ARGS)
    _assert_one_error_line(code, output, "in use by pid", str(os.getpid()))
    assert not (tmp_path / "encoder").exists()
    with WorkdirLock(str(tmp_path)):  # released by the holder: free again
        pass


# ---- 4. bad input -----------------------------------------------------------------------------


def _cli_fail(env, tmp_path, *args):
    base = ["--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}", "--mode=encoder"]
    return _run(env, tmp_path, *base, *args)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config.encoder.epochs=abc"], "--config.encoder.epochs=abc"),
        (["--mode=bogus"], "--mode=bogus"),
        (["--config.encoder.nosuchfield=3"], "no field 'nosuchfield'"),
        (["--config=configs/no_such_config.py"], "configs/no_such_config.py"),
        (["stray_argument"], "unexpected arguments: stray_argument"),
    ],
)
def test_bad_flags_give_one_error_line(args, needle, cli_env, tmp_path):
    code, output = _cli_fail(cli_env, tmp_path, *args)
    _assert_one_error_line(code, output, needle)


def test_bad_data_at_the_cli(cli_env, tmp_path):
    (tmp_path / "empty").mkdir()
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(_image_folder(tmp_path / "imgs"), arcname="train")
    cases = [
        ([f"--config.data.train=folder:{tmp_path / 'empty'}"], "holds no images"),
        ([f"--config.data.train=archive:{tmp_path / 'a.tar.gz'}!test"], "has no folder 'test'"),
    ]
    for args, needle in cases:
        code, output = _cli_fail(cli_env, tmp_path, *args)
        _assert_one_error_line(code, output, needle)


def _image_folder(root):
    """cat/: RGB 10x12, L 8x8, RGBA 16x16, a garbage .jpg, a .txt; dog/: palette GIF, 16-bit PNG,
    JPEG 32x20, CMYK JPEG, a zero-byte .png, a truncated .jpg."""
    rng = np.random.default_rng(0)
    arrays = {
        "cat/a.png": (rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), "RGB"),
        "cat/b.png": (rng.integers(0, 256, (8, 8), dtype=np.uint8), "L"),
        "cat/c.png": (rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA"),
        "dog/e.png": (rng.integers(0, 65536, (8, 8), dtype=np.uint16), None),
        "dog/f.jpg": (rng.integers(0, 256, (32, 20, 3), dtype=np.uint8), "RGB"),
        "dog/g.jpg": (rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "CMYK"),
    }
    for name, (array, mode) in arrays.items():
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        Image.fromarray(array, mode).save(root / name)
    Image.fromarray(arrays["cat/a.png"][0]).convert("P").save(root / "dog/d.gif")
    (root / "dog/zero.png").write_bytes(b"")
    (root / "cat/garbage.jpg").write_bytes(np.random.default_rng(1).bytes(300))
    jpeg = (root / "dog/f.jpg").read_bytes()
    (root / "dog/trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cat/notes.txt").write_text("not an image")
    return root


def _pil_reference(path, size=8):
    with Image.open(path) as img:
        if img.mode == "I;16":
            gray = np.rint(np.asarray(img, np.float64) * 255 / 65535).astype(np.uint8)
            img = Image.fromarray(gray)
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img)


def test_corrupt_and_odd_images_are_skipped_with_a_count_or_refused(tmp_path, caplog):
    root = _image_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING):
        loaded = load_images(f"folder:{root}", 8, cache_dir="none")
    good = ["cat/a.png", "cat/b.png", "cat/c.png", "dog/d.gif", "dog/e.png", "dog/f.jpg"]
    good.append("dog/g.jpg")
    assert loaded.ids == good and loaded.class_names == ["cat", "dog"]
    assert loaded.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert loaded.images.shape == (7, 8, 8, 3) and loaded.images.dtype == np.uint8
    for name, image in zip(good, loaded.images):
        if not name.endswith(".jpg"):  # JPEGs may decode at a reduced DCT scale
            np.testing.assert_array_equal(image, _pil_reference(root / name), err_msg=name)
    assert "skipped 3 unreadable image(s) of 10" in caplog.text
    for bad in ("garbage.jpg", "zero.png", "trunc.jpg"):
        assert bad in caplog.text

    config = smoke.get_config()
    config.data.on_corrupt = "error"
    with pytest.raises(SemsadError, match=r"cannot read image \S+garbage.jpg"):
        load_set(config, f"folder:{root}")


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("folder:{tmp}/no/such/dir", "does not exist"),
        ("folder:{tmp}/empty", "holds no images"),
        ("folder:{tmp}/only_text", "holds no images"),
        ("folder:{tmp}/only_broken", "none of the 1 images could be read"),
        ("folder:{tmp}/imgs/cat/a.png", "is not a folder"),
        ("folder:{tmp}/imgs?classes=bird", "class 'bird' is not in this source"),
        ("sklearn:digits?classes=11", "class '11' is not in this source"),
        ("archive:{tmp}/a.tar.gz!test", "has no folder 'test'; its top-level folders: train"),
        ("archive:{tmp}/not_an_archive.tar.gz", "cannot read archive"),
        ("archive:{tmp}/missing.zip", "does not exist"),
        ("npz:{tmp}/missing.npz", "does not exist"),
        ("nosuchkind:{tmp}/imgs", "unknown source kind 'nosuchkind'"),
        ("{tmp}/imgs", "unknown source kind"),
    ],
)
def test_bad_sources_stop_with_one_clear_line(spec, problem, tmp_path):
    _image_folder(tmp_path / "imgs")
    for name in ("empty", "only_text", "only_broken"):
        (tmp_path / name).mkdir()
    (tmp_path / "only_text" / "readme.txt").write_text("x")
    (tmp_path / "only_broken" / "x.png").write_bytes(b"")
    (tmp_path / "not_an_archive.tar.gz").write_bytes(b"abc" * 10)
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="train")
    config = smoke.get_config()
    with pytest.raises(SemsadError, match=re.escape(problem)) as caught:
        load_set(config, spec.format(tmp=tmp_path))
    assert "\n" not in str(caught.value)


def test_bad_workdir_and_mode_at_the_api(tmp_path):
    """The CLI prints these SemsadErrors as one error line (see the CLI tests above)."""
    config = smoke.get_config()
    with pytest.raises(SemsadError, match="unknown mode 'bogus'"):
        run(config, str(tmp_path), "bogus")
    with pytest.raises(SemsadError, match="no --workdir given"):
        run(config, "", "encoder")
    with pytest.raises(SemsadError, match="--mode=score needs --images"):
        run(config, str(tmp_path), "score")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SemsadError, match="exists and is not a directory"):
        run(config, str(a_file), "encoder")
    with pytest.raises(SemsadError, match="cannot create --workdir"):
        run(config, str(a_file / "sub"), "encoder")


# ---- 5. numerical faults ----------------------------------------------------------------------


def _fake_step(bad_from, bad_value=np.nan):
    """A train step on {"w": [3]}: w += 1 each step; from step ``bad_from`` the loss is bad."""

    def step_fn(state, step):
        w = state["w"] + 1.0
        loss = jax.numpy.where(step + 1 >= bad_from, bad_value, 1.0 / (step + 1.0))
        return {"w": w}, {"loss": loss, "finite": jax.numpy.isfinite(loss)}

    return step_fn


def _loop(tmp_path, step_fn, start=0, state=None, log_every=1):
    ckpts = StageCheckpoints(str(tmp_path / "stage"), keep=10)
    writer = logs.MetricsWriter(str(tmp_path / "stage" / "metrics.jsonl"))
    state = state if state is not None else {"w": jax.numpy.zeros(3)}
    out = loop.run_loop(
        name="toy", train_step=step_fn, state=state, start_step=start, total_steps=12,
        steps_per_epoch=4, images_per_step=1, checkpoints=ckpts, writer=writer,
        log_every=log_every, checkpoint_every=3, progress=False,
    )  # fmt: skip
    ckpts.close()
    return out


@pytest.mark.parametrize("bad_value, log_every", [(np.nan, 1), (np.inf, 1), (np.nan, 100)])
def test_nan_or_inf_loss_stops_and_keeps_the_last_good_checkpoint(bad_value, log_every, tmp_path):
    # bad from step 8 on; checkpoints at 3 and 6; with log_every=100 it is caught at save step 9
    caught_at = 8 if log_every == 1 else 9
    with pytest.raises(SemsadError, match=rf"toy training diverged at step {caught_at} .*step 6"):
        _loop(tmp_path, _fake_step(bad_from=8, bad_value=bad_value), log_every=log_every)
    stage = str(tmp_path / "stage")
    assert _committed_steps(stage) == [3, 6]  # nothing written at or after the bad step
    ckpts = StageCheckpoints(stage)
    state, step = ckpts.restore({"w": np.zeros(3, np.float32)})
    assert step == 6 and np.asarray(state["w"]).tolist() == [6.0, 6.0, 6.0]
    with open(os.path.join(stage, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    # the good steps' losses (1 / step) and nothing from the bad ones: every step with log_every=1,
    # else the first step and the saves
    expected = list(range(1, 8)) if log_every == 1 else [1, 3, 6]
    assert [r["step"] for r in logged] == expected
    assert [r["loss"] for r in logged] == pytest.approx([1.0 / s for s in expected], rel=1e-6)
    # the fix (e.g. a lower learning rate) resumes from the last good checkpoint
    final = _loop(tmp_path, _fake_step(bad_from=10**6), start=step, state=state)
    assert np.asarray(final["w"]).tolist() == [12.0, 12.0, 12.0]


def test_non_finite_parameters_with_a_finite_loss_are_caught(tmp_path):
    def step_fn(state, step):
        w = jax.numpy.where(step >= 4, jax.numpy.inf, state["w"] + 1.0)
        return {"w": w}, {
            "loss": jax.numpy.float32(1.0),
            "finite": jax.numpy.all(jax.numpy.isfinite(w)),
        }

    with pytest.raises(SemsadError, match="diverged at step 5"):
        _loop(tmp_path, step_fn)
    assert _committed_steps(str(tmp_path / "stage")) == [3]


# ---- 6. stages in the wrong order -------------------------------------------------------------


def test_stages_in_the_wrong_order_give_one_error_line(reference, cli_env, tmp_path):
    only_encoder = tmp_path / "only_encoder"
    shutil.copytree(reference[0] / "encoder", only_encoder / "encoder")
    cases = [
        (tmp_path / "empty", "--mode=discriminator", "no trained encoder"),
        (only_encoder, "--mode=eval", "no trained discriminator"),
    ]
    for workdir, mode, needle in cases:
        code, output = _run(
            cli_env, tmp_path, "--config=configs/smoke.py", f"--workdir={workdir}", mode
        )
        _assert_one_error_line(code, output, needle, "run --mode=")
    images = f"folder:{_image_folder(tmp_path / 'imgs')}"
    with pytest.raises(SemsadError, match=r"no trained discriminator .* run --mode=discriminator"):
        run(smoke.get_config(), str(only_encoder), "score", images=images)
    assert sorted(os.listdir(only_encoder)) == [".lock", "encoder"]  # nothing was written

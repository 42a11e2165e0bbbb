"""Provenance: a workdir never hands back networks trained under other settings or on other data.

Each hole of issue 16 part 1, tried as a user would: the change is refused in one line (no
traceback at the CLI), nothing in the workdir changes, ``--overwrite`` retrains, and an unchanged
rerun still reuses (or resumes) as before.

* an older workdir (no identity version, or a key it did not record);
* the same spec with other images behind it (the digest of the decoded training set);
* ``epochs`` under a schedule whose shape depends on the total steps (cosine);
* ``--mode=eval`` with a config asking for more epochs than were trained (refused) or fewer
  (evaluated, and said in results.json / results.txt).
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ml_collections")  # configs/ and main.py need it (not on the GPU image)

from semsad_jax.configs import smoke
from semsad_jax.errors import SemsadError
from semsad_jax.run import run
from semsad_jax.train import stage as stage_runner
from semsad_jax.workdir.layout import IDENTITY_VERSION, TRAIN_DIGEST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(npz: str | None = None, **encoder):
    """The smoke config on ``npz`` (spec ``npz:D.npz``: relative, as the issue tried it; each
    test runs in the folder of its own D.npz)."""
    c = smoke.get_config()
    c.data.test = ""  # no kNN monitor and held-out pairs: nothing but training
    c.eval.ood = {}
    if npz:
        assert os.path.samefile(os.path.dirname(os.path.abspath(npz)), os.getcwd())
        c.data.train = "npz:D.npz"
        c.data.test = "npz:D.npz"
        c.eval.in_distribution = "npz:D.npz?limit=16"
    for key, value in encoder.items():
        c.encoder[key] = value
    return c


def _snapshot(workdir) -> dict[str, str]:
    """path -> sha256 of every file under ``workdir`` (but the lock file)."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            if name == ".lock":
                continue
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _refused(config, workdir, mode, *needles):
    """run() refuses with one line holding every needle, and leaves every file as it was."""
    before = _snapshot(workdir)
    with pytest.raises(SemsadError) as err:
        run(config, str(workdir), mode)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert _snapshot(workdir) == before
    return message


def _digits_npz(path, invert=False):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:64] * 16).clip(0, 255).astype(np.uint8)
    if invert:
        images = 255 - images
    np.savez(path, images=images, labels=digits.target[:64].astype(np.int32))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished smoke encoder + discriminator + eval on an npz training set: (workdir, npz)."""
    root = tmp_path_factory.mktemp("provenance")
    npz = _digits_npz(root / "D.npz")
    workdir = root / "w"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run(_config(npz), str(workdir), "all")
    finally:
        os.chdir(cwd)
    return workdir, npz


@pytest.fixture
def copy(trained, tmp_path, monkeypatch):
    """A private copy of the trained workdir and its D.npz; the test runs in that folder."""
    workdir, npz = trained
    shutil.copytree(workdir, tmp_path / "w")
    shutil.copy(npz, tmp_path / "D.npz")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "w", str(tmp_path / "D.npz")


def _stage(workdir, stage="encoder"):
    with open(os.path.join(workdir, stage, "stage.json")) as f:
        return json.load(f)


def _write_stage(workdir, meta, stage="encoder"):
    with open(os.path.join(workdir, stage, "stage.json"), "w") as f:
        json.dump(meta, f)


# ---- 1. older workdirs ----------------------------------------------------------------------


def test_stage_json_records_version_digest_and_epochs(trained):
    workdir, _ = trained
    for stage in ("encoder", "discriminator"):
        meta = _stage(workdir, stage)
        assert meta["identity_version"] == IDENTITY_VERSION
        assert meta["epochs"] == 1 and meta["finished"]
        assert len(meta["identity"][TRAIN_DIGEST]) == 16
    bank = json.loads((workdir / "bank" / "bank.json").read_text())
    assert bank["images_digest"] == _stage(workdir)["identity"][TRAIN_DIGEST]


def test_unchanged_rerun_reuses_every_stage(copy, caplog):
    workdir, npz = copy
    before = _snapshot(workdir)
    with caplog.at_level(logging.INFO):
        run(_config(npz), str(workdir), "discriminator")
    assert "encoder" not in caplog.text or "retrain" not in caplog.text
    assert "discriminator already trained (4 steps)" in caplog.text
    after = _snapshot(workdir)
    stages = [k for k in before if k.split(os.sep)[0] in ("encoder", "discriminator", "bank")]
    assert {k: after[k] for k in stages} == {k: before[k] for k in stages}


@pytest.mark.parametrize("change", ["no_version", "old_version", "missing_key"])
def test_older_workdir_is_refused_not_reused(change, copy):
    workdir, npz = copy
    meta = _stage(workdir)
    if change == "no_version":
        del meta["identity_version"]
    elif change == "old_version":
        meta["identity_version"] = 1
    else:  # an older version that did not record a key this one compares
        del meta["identity"]["encoder.temperature"]
    _write_stage(workdir, meta)
    needles = ["identity version"] if change != "missing_key" else ["encoder.temperature="]
    message = _refused(_config(npz), workdir, "encoder", "--overwrite", *needles)
    assert ("<not recorded>" in message) == (change == "missing_key")
    # eval checks the same identity before it restores anything
    _refused(_config(npz), workdir, "eval", str(workdir / "encoder"))


# ---- 2. the data's content --------------------------------------------------------------------


def test_changed_images_behind_the_same_spec_are_refused(copy):
    workdir, npz = copy
    recorded = _stage(workdir)["identity"][TRAIN_DIGEST]
    _digits_npz(npz, invert=True)
    for mode in ("encoder", "discriminator", "all"):
        message = _refused(_config(npz), workdir, mode, "npz:D.npz", recorded, "other images")
    assert message.count(recorded) == 1 and "--overwrite" in message


def test_changed_images_at_the_cli_give_one_line(copy):
    workdir, npz = copy
    _digits_npz(npz, invert=True)
    before = _snapshot(workdir)
    cmd = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        f"--config={ROOT}/configs/smoke.py",
        f"--workdir={workdir}",
        "--mode=encoder",
        "--config.data.train=npz:D.npz",
        "--config.data.test=",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        cmd, cwd=workdir.parent, env=env, capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("error:") and "other images" in last and "npz:D.npz" in last
    assert _snapshot(workdir) == before


def test_bank_of_other_images_is_refused_at_eval(copy):
    workdir, npz = copy
    bank = json.loads((workdir / "bank" / "bank.json").read_text())
    bank["images_digest"] = "0" * 16
    (workdir / "bank" / "bank.json").write_text(json.dumps(bank))
    _refused(_config(npz), workdir, "eval", "other training images", "0" * 16)


def test_overwrite_retrains_on_the_new_images(copy, monkeypatch):
    workdir, npz = copy
    _digits_npz(npz, invert=True)
    monkeypatch.setattr(stage_runner, "run_loop", lambda **kw: kw["state"])  # skip the steps
    run(_config(npz), str(workdir), "encoder", overwrite=True)
    from semsad_jax.data.sources import load_images

    new = load_images("npz:D.npz", 8, cache_dir="none").digest
    assert _stage(workdir)["identity"][TRAIN_DIGEST] == new
    assert len([n for n in os.listdir(workdir) if n.startswith("encoder.old-")]) == 1


# ---- 3. epochs that change the schedule --------------------------------------------------------


def test_epochs_count_under_cosine_but_extend_a_constant_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz = _digits_npz(tmp_path / "D.npz")
    calls = []
    monkeypatch.setattr(
        stage_runner, "run_loop", lambda **kw: calls.append(kw["total_steps"]) or kw["state"]
    )
    cosine = tmp_path / "cosine"
    run(_config(npz, schedule="cosine", epochs=1), str(cosine), "encoder")
    _refused(_config(npz, schedule="cosine", epochs=3), cosine, "encoder", "encoder.epochs=1")
    constant = tmp_path / "constant"  # the default schedule: more epochs extend the stage
    run(_config(npz, epochs=1), str(constant), "encoder")
    run(_config(npz, epochs=3), str(constant), "encoder")
    assert calls == [4, 4, 12]
    assert _stage(constant)["epochs"] == 3


# ---- 4. eval of a shorter (or longer) stage ---------------------------------------------------


def test_eval_refuses_a_config_asking_more_epochs_than_trained(copy):
    workdir, npz = copy
    config = _config(npz)
    config.discriminator.epochs = 2
    _refused(config, workdir, "eval", "trained for 1 epochs", "asks for 2", "epochs=1")


def test_eval_records_what_it_restored_and_notes_fewer_epochs(copy):
    workdir, npz = copy
    meta = _stage(workdir)
    results = run(_config(npz), str(workdir), "eval")["eval"]
    enc = results["stages"]["encoder"]
    assert enc == {
        "epochs": 1,
        "total_steps": 4,
        "restored_step": 4,
        "identity_digest": meta["identity_digest"],
        "config_epochs": 1,
    }
    assert "NOTE" not in (workdir / "eval" / "results.txt").read_text()
    # a longer-trained encoder evaluated under a config asking fewer epochs: said, not hidden
    meta["epochs"] = 2
    _write_stage(workdir, meta)
    run(_config(npz), str(workdir), "eval")
    text = (workdir / "eval" / "results.txt").read_text()
    assert "NOTE: the config asks for 1 encoder epochs" in text and "trained for 2" in text
    saved = json.loads((workdir / "eval" / "results.json").read_text())
    assert saved["stages"]["encoder"]["epochs"] == 2
    assert saved["stages"]["discriminator"]["restored_step"] == 4


def test_a_key_added_later_matches_only_the_value_older_stages_were_trained_with():
    """discriminator.shifted_kind came after identity version 2: a stage recorded without it was
    trained with "rotate_or_quadrants", so it is reused for that value and refused for another."""
    from semsad_jax.workdir.identity import IDENTITY_VERSION, identity_diff, identity_problem

    recorded = {"discriminator.mu": 0.03125, "seed": 0}
    wanted = dict(recorded, **{"discriminator.shifted_kind": "rotate_or_quadrants"})
    meta = {"identity_version": IDENTITY_VERSION, "identity": recorded}
    assert identity_diff(recorded, wanted) == []
    assert identity_problem("W holds a discriminator", "discriminator", meta, wanted) is None
    other = dict(wanted, **{"discriminator.shifted_kind": "pixels"})
    assert identity_diff(recorded, other) == ["discriminator.shifted_kind"]
    problem = identity_problem("W holds a discriminator", "discriminator", meta, other)
    assert "shifted_kind='rotate_or_quadrants' (config: 'pixels')" in problem
    assert identity_diff({"seed": 0}, {"seed": 0, "discriminator.mu": 0.5}) == ["discriminator.mu"]
    # every key added later reads, when absent, as the library default (what older stages ran)
    from semsad_jax.configs import default
    from semsad_jax.workdir.identity import ADDED_KEYS

    config = default.get_config()
    for key, value in ADDED_KEYS.items():
        section, name = key.split(".")
        assert config[section][name] == value, key
    assert identity_diff({"seed": 0}, {"seed": 0, "encoder.stem_stride": 1}) == []
    assert identity_diff({"seed": 0}, {"seed": 0, "encoder.stem_stride": 2}) == [
        "encoder.stem_stride"
    ]

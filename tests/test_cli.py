"""The command line's additions: configs by short name, --mode=export, eval and score of a packaged
detector (archive, URL, name) with --out, --in_distribution and --detector, a workdir without
--config. (The console script from an installed wheel: tests/test_installed.py.)"""

import csv
import os

import helpers
import numpy as np
import pytest

from semsad_jax import cli
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.detector import Detector
from semsad_jax.run import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_short_names_and_paths(capsys):
    names = cli.config_names()
    assert {"cifar10", "cifar100", "cifar10_cpu", "class_split", "digits", "smoke"} <= set(names)
    assert "far_ood" not in names  # a helper of the configs, not a config
    assert cli.config_path("cifar100") == os.path.join(cli.config_dir(), "cifar100.py")
    assert cli.config_path("class_split:animals") == (
        os.path.join(cli.config_dir(), "class_split.py") + ":animals"
    )
    assert os.path.samefile(cli.config_dir(), os.path.join(ROOT, "configs"))  # one copy
    assert cli.config_path("configs/smoke.py") == "configs/smoke.py"  # a path stays a path
    assert cli.config_path("my/missing.py:3") == "my/missing.py:3"  # ml_collections reports it
    with pytest.raises(SystemExit) as exit_:
        cli.config_path("cifar1000")
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: unknown --config 'cifar1000'") and "class_split" in line


@pytest.fixture(scope="module")
def archive(smoke_evaluated, tmp_path_factory):
    """The smoke detector exported with --mode=export (and its private cache)."""
    out = str(tmp_path_factory.mktemp("export") / "smoke.tar.gz")
    summary = run(None, smoke_evaluated, "export", out=out)["export"]
    assert summary["path"] == out and os.path.getsize(out) == summary["bytes"]
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSAD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_export_refuses_without_out_or_over_an_existing_file(smoke_evaluated, archive):
    with pytest.raises(SemsadError, match="--mode=export needs --out"):
        run(None, smoke_evaluated, "export")
    with pytest.raises(SemsadError, match="exists"):
        run(None, smoke_evaluated, "export", out=archive)
    with pytest.raises(SemsadError, match="is not a directory"):
        run(None, archive, "export", out=archive + ".again")


def test_score_a_packaged_detector_with_any_detector(archive, smoke_evaluated, cache, tmp_path):
    config = helpers.config()
    det = Detector.restore(smoke_evaluated)
    images = helpers.load_set(config, config.data.test)
    for detector in ("knn", "semsad"):
        out = str(tmp_path / detector)
        summary = run(None, archive, "score", images=config.data.test, detector=detector, out=out)[
            "score"
        ]
        assert summary["csv"] == os.path.join(out, "scores.csv") and summary["detector"] == detector
        with open(summary["csv"]) as f:
            rows = list(csv.DictReader(f))
        got = np.array([float(r["score"]) for r in rows])
        expected = det.score(images.images, detector=detector)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        flags = [int(r["is_ood"]) for r in rows]
        assert flags == (expected < det.thresholds[detector]).astype(int).tolist()
        assert {r["detector"] for r in rows} == {detector}
    # the cache's copy is never written to: no score/ or eval/ outputs appear there
    for _, dirs, files in os.walk(cache):
        assert "score" not in dirs and "scores.csv" not in files and ".lock" not in files


def test_eval_a_packaged_detector_into_out(archive, smoke_evaluated, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = helpers.config()
    spec = "sklearn:digits/test?classes=0,1,2&limit=16"
    results = run(None, archive, "eval", in_distribution=spec)["eval"]
    out = tmp_path / "smoke-eval"  # the default --out of a packaged detector: ./NAME-eval
    assert (out / "results.json").exists() and results["in_distribution"] == spec
    assert results["num_in"] == 16 and set(results["ood"]) == set(config.eval.ood)
    original = helpers.read_json(os.path.join(smoke_evaluated, "eval", "results.json"))
    again = run(None, archive, "eval", out=str(tmp_path / "again"))["eval"]
    for detector, sets in original["detectors"].items():
        for name, metrics in sets.items():
            assert again["detectors"][detector][name]["auroc"] == pytest.approx(
                metrics["auroc"], abs=1e-6
            )


def test_a_workdir_scores_without_config(smoke_evaluated, tmp_path):
    workdir = helpers.copy_of(smoke_evaluated, tmp_path / "run")
    config = helpers.config()
    summary = run(None, workdir, "score", images=config.data.test, detector="pixels_knn")["score"]
    assert summary["csv"] == os.path.join(workdir, "score", "scores.csv")
    assert summary["detector"] == "pixels_knn" and summary["num_images"] == 32


def test_a_missing_source_says_what_to_do(tmp_path, cache):
    with pytest.raises(SemsadError, match=r"config\.json is missing.*--mode=encoder"):
        run(None, str(tmp_path / "no_such_workdir"), "score", images="synthetic:noise")
    with pytest.raises(SemsadError, match="needs a config"):
        run(None, str(tmp_path / "w"), "encoder")
    with pytest.raises(SemsadError, match="unknown detector 'svm'"):
        run(None, str(tmp_path / "w"), "score", images="synthetic:noise", detector="svm")

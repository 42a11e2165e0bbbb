"""Multi-run report (mean, std, the paper's majority vote) and the protocol configs."""

import json
import os

import numpy as np
import pytest
from helpers import copy_of, read_json, read_text

from semsad_jax.configs import class_split, contaminated, far_ood, oneclass, smoke
from semsad_jax.data.specs import parse_spec
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.report import majority_vote, run_report
from semsad_jax.run import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Three hand-made runs: 4 in-distribution and 3 OOD images, each run with its own threshold.
HAND = {
    "a": (0.5, [0.9, 0.6, 0.4, 0.8], [0.1, 0.7, 0.3], 0.9, 0.25),  # flags in F F T F, ood T F T
    "b": (0.2, [0.3, 0.1, 0.5, 0.9], [0.1, 0.5, 0.6], 0.8, 0.50),  # flags in F T F F, ood T F F
    "c": (0.6, [0.7, 0.5, 0.2, 0.9], [0.8, 0.5, 0.65], 0.7, 0.75),  # flags in F T T F, ood F T F
}
# Votes: in 0 2 2 0 -> flagged F T T F (false alarms 2/4); ood 2 1 1 -> flagged T F F (1/3).


def _write_run(root, name, threshold, s_in, s_out, auroc, fpr, in_spec="sklearn:digits/test"):
    workdir = os.path.join(root, name)
    os.makedirs(os.path.join(workdir, "eval"))
    metrics = {"auroc": auroc, "aupr_in": 0.5, "aupr_out": 0.5, "fpr95": fpr}
    metrics.update(detection_at_95=1 - fpr, num_ood=3)
    results = {
        "in_distribution": in_spec,
        "num_in": 4,
        "bn_mode": "running_stats",
        "ood": {"ood": "sklearn:digits/test?classes=9"},
        "detectors": {"semsad": {"ood": metrics}},
        "threshold_95": {"semsad": threshold},
    }
    with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
        json.dump(results, f)
    np.savez(
        os.path.join(workdir, "eval", "scores.npz"),
        **{"semsad/in_distribution": np.array(s_in), "semsad/ood": np.array(s_out)},
    )
    return workdir


def test_hand_computed_report(tmp_path, capsys):
    workdirs = [_write_run(tmp_path, name, *values) for name, values in HAND.items()]
    report = run_report(workdirs, out_dir=str(tmp_path / "out"))
    m = report["metrics"]["semsad"]["ood"]
    assert m["auroc"]["mean"] == pytest.approx(0.8) and m["auroc"]["std"] == pytest.approx(0.1)
    assert m["fpr95"]["mean"] == pytest.approx(0.5) and m["fpr95"]["std"] == pytest.approx(0.25)
    assert m["aupr_in"]["std"] == 0.0 and m["auroc"]["values"] == [0.9, 0.8, 0.7]
    vote = report["majority_vote"]
    assert vote["num_runs"] == 3
    assert vote["detectors"]["semsad"]["ood"] == {
        "detection_rate": pytest.approx(1 / 3),
        "false_alarm_rate": pytest.approx(0.5),
    }
    saved = read_json(tmp_path / "out" / "report.json")
    assert saved["metrics"] == report["metrics"]
    printed = capsys.readouterr().out
    assert "80.00±10.00" in printed and "33.33" in printed and "positive class" in printed
    assert printed.strip() == read_text(tmp_path / "out" / "report.txt").strip()
    # Two runs: a strict majority needs both, so only images flagged by a AND b count.
    two = majority_vote(
        *zip(*[(read_json(f"{w}/eval/results.json"), _npz(w)) for w in workdirs[:2]])
    )
    assert two["detectors"]["semsad"]["ood"]["detection_rate"] == pytest.approx(1 / 3)
    assert two["detectors"]["semsad"]["ood"]["false_alarm_rate"] == 0.0


def _npz(workdir):
    with np.load(os.path.join(workdir, "eval", "scores.npz")) as npz:
        return {k: npz[k] for k in npz.files}


def test_vote_skipped_when_runs_scored_other_images(tmp_path):
    a = _write_run(tmp_path, "a", *HAND["a"])
    b = _write_run(tmp_path, "b", *HAND["b"], in_spec="sklearn:digits/test?classes=1")
    report = run_report([a, b], out_dir=str(tmp_path / "out"))
    assert "in_distribution" in report["majority_vote"]["skipped"]
    assert report["metrics"]["semsad"]["ood"]["auroc"]["mean"] == pytest.approx(0.85)
    assert "majority vote skipped" in read_text(tmp_path / "out" / "report.txt")
    with pytest.raises(SemsadError, match="run --mode=eval"):
        run_report([a, str(tmp_path / "nothing")])


def test_report_mode_over_two_real_workdirs(smoke_evaluated, tmp_path):
    evaluated = smoke_evaluated
    runs = [copy_of(evaluated, tmp_path / name) for name in ("seed0", "seed1")]
    report = run(smoke.get_config(), None, "report", workdirs=runs)["report"]
    assert os.path.exists(tmp_path / "report" / "report.json")
    results = read_json(os.path.join(evaluated, "eval", "results.json"))
    scores = _npz(evaluated)
    for detector, sets in results["detectors"].items():
        m = report["metrics"][detector]["digits_7_9"]
        assert m["auroc"]["mean"] == pytest.approx(sets["digits_7_9"]["auroc"])
        assert m["auroc"]["std"] == 0.0
        vote = report["majority_vote"]["detectors"][detector]["digits_7_9"]
        assert vote["detection_rate"] == pytest.approx(sets["digits_7_9"]["detection_at_95"])
        in_flags = scores[f"{detector}/in_distribution"] < results["threshold_95"][detector]
        assert vote["false_alarm_rate"] == pytest.approx(in_flags.mean())


def test_protocol_configs():
    c = oneclass.get_config("3")
    assert c.data.train.endswith("!train?classes=cat") and c.data.test.endswith("!test?classes=cat")
    assert dict(c.eval.ood) == {
        "rest": c.data.test.replace("classes=cat", "exclude=cat"),
        **far_ood.specs(),  # every CIFAR protocol scores the far-OOD suite too
    }
    assert oneclass.get_config("cat").data.train == c.data.train
    with pytest.raises(ValueError):
        oneclass.get_config("10")
    assert class_split.split_classes("vehicles") == ("airplane", "automobile", "ship", "truck")
    assert class_split.split_classes("first5") == oneclass.CLASSES[:5]
    assert class_split.split_classes("9,0") == ("airplane", "truck")
    assert (
        "exclude=airplane,automobile,ship,truck" in class_split.get_config("vehicles").eval.ood.rest
    )
    with pytest.raises(ValueError):
        class_split.split_classes(",".join(oneclass.CLASSES))
    k = contaminated.get_config("0.1")
    assert k.data.contamination == 0.1 and "classes=dog,frog" in k.data.contamination_source
    for config in (c, class_split.get_config(), k):
        for spec in (config.data.train, config.data.test, *config.eval.ood.values()):
            parse_spec(spec)
    doc = read_text(os.path.join(ROOT, "docs", "protocols.md"))
    for needle in ("configs/oneclass.py:3", "configs/class_split.py", "configs/contaminated.py"):
        assert needle in doc
    assert "--mode=report --workdirs=" in doc

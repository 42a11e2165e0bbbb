"""Smoke tests of benchmarks/: each script runs with a minimal budget; helpers against references."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.experiments import cifar10_quality, quality_table
from benchmarks.timing import time_call
from benchmarks.timings import throughput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_throughput_tiny_and_knn_matches_sklearn(tmp_path):
    out = tmp_path / "t.json"
    result = throughput.main(
        # one device and no discriminator row: XLA compiles dominate (~15 s CPU per ResNet step)
        [
            "--preset=tiny",
            "--devices=1",
            "--dtypes=float32",
            "--benches=encoder,augment,knn,placement",
            f"--out={out}",
        ]
    )
    rows = {(r["framework"], r["bench"]): r for r in result["rows"]}
    assert set(rows) == {
        ("jax", "encoder_train"),
        ("jax", "encoder_train_device"),
        ("jax", "encoder_train_host"),
        ("jax", "augment"),
        ("jax", "knn_top4"),
        ("jax", "knn_top4_vs_sklearn"),
        ("sklearn", "knn_top4_vs_sklearn"),
    }
    assert rows[("jax", "encoder_train")]["items_per_call"] == 2 * 16  # two views per image
    assert result["num_devices"] == 1
    assert all(r["items_per_s"] > 0 for r in rows.values())
    # random Gaussian bank: no ties, so the exact search must equal scikit-learn's brute force
    assert rows[("sklearn", "knn_top4_vs_sklearn")]["identical_rows"] == 1.0
    (ratio,) = [c for c in result["comparisons"] if c["comparison"].startswith("top-4")]
    ours, theirs = rows[("jax", "knn_top4_vs_sklearn")], rows[("sklearn", "knn_top4_vs_sklearn")]
    expected = ours["items_per_s"] / theirs["items_per_s"]
    assert ratio["ratio"] == pytest.approx(expected, rel=1e-2)
    (placement,) = [c for c in result["comparisons"] if "placement" in c["comparison"]]
    host, device = rows[("jax", "encoder_train_host")], rows[("jax", "encoder_train_device")]
    assert placement["ratio"] == pytest.approx(
        host["items_per_s"] / device["items_per_s"], rel=1e-2
    )
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    # useful FLOPs (XLA's count) against independent counts: the training step's convolutions
    # (forward, then the input and weight gradients: 3x, the stem 2x) and the kNN's similarities
    low, high = resnet18_conv_gflop(2 * 16, 8, 3, 4, step=True)
    assert low <= rows[("jax", "encoder_train")]["gflop_per_call"] <= 1.5 * high
    n, dim = 256, 128
    assert rows[("jax", "knn_top4")]["gflop_per_call"] == pytest.approx(2 * n * n * dim / 1e9, 0.05)
    assert all(r["gflop_per_s"] > 0 and r["peak_fraction"] > 0 for r in rows.values())
    assert result["matmul_peak_gflop_s"] > 0


def resnet18_conv_gflop(batch: int, size: int, in_channels: int, width: int, step: bool):
    """(low, high) GFLOP (2 x multiply-adds) of the convolutions of our CIFAR ResNet-18 on ``batch``
    images, counted by hand from the layer shapes: low counts only the kernel taps that fall on
    the input (XLA's convolutions skip the zero padding), high every tap (as patches @ kernel,
    ``conv_impl=matmul``, computes them). ``step``: a training step, forward then the input and
    weight gradients (3x; the stem, whose input needs no gradient, 2x); else one forward pass."""

    def conv(cin: int, cout: int, kernel: int, size: int, stride: int):
        out = -(-size // stride)  # 3x3 pad 1 and 1x1 pad 0: ceil(size / stride)
        pad = kernel // 2
        taps = sum(0 <= o * stride - pad + t < size for o in range(out) for t in range(kernel))
        return out, (batch * cin * cout * taps**2, batch * cin * cout * (out * kernel) ** 2)

    _, stem = conv(in_channels, width, 3, size, 1)
    layers, channels = [stem], width
    for stage, stride in enumerate((1, 2, 2, 2)):
        out = width * 2**stage
        for block in range(2):
            first = stride if block == 0 else 1
            new_size, macs = conv(channels, out, 3, size, first)
            layers += [macs, conv(out, out, 3, new_size, 1)[1]]
            if first != 1 or channels != out:
                layers.append(conv(channels, out, 1, size, first)[1])  # the 1x1 projection
            channels, size = out, new_size
    totals = []
    for i in (0, 1):
        total = sum(macs[i] for macs in layers)
        totals.append(2 * (3 * total - stem[i] if step else total) / 1e9)
    return tuple(totals)


def test_throughput_tiny_torch_peers_for_discriminator_and_bank(capsys):
    pytest.importorskip("torch")
    result = throughput.main(
        [
            "--preset=tiny",
            "--devices=1",
            "--dtypes=float32",
            "--benches=discriminator,bank",
            "--torch",
            "--torch-benches=disc,bank",
            "--torch-threads=1",
        ]
    )
    rows = {(r["framework"], r["bench"]): r for r in result["rows"]}
    assert set(rows) == {
        ("jax", "discriminator_train"),
        ("jax", "feature_bank"),
        ("torch", "discriminator_train"),
        ("torch", "feature_bank"),
    }
    ratios = {c["comparison"]: c for c in result["comparisons"]}
    assert {"discriminator step", "feature bank"} <= set(ratios)
    for name, bench in (
        ("discriminator step", "discriminator_train"),
        ("feature bank", "feature_bank"),
    ):
        ours, theirs = rows[("jax", bench)], rows[("torch", bench)]
        assert ours["items_per_call"] == theirs["items_per_call"]  # 2B pairs; the bank's images
        assert ratios[name]["ratio"] > 0 and ratios[name]["ratio_cpu"] > 0
        expected = ours["items_per_s"] / theirs["items_per_s"]
        assert ratios[name]["ratio"] == pytest.approx(expected, rel=1e-2)
        # the peer takes our count: same network, same work
        assert theirs["gflop_per_call"] == ours["gflop_per_call"] > 0
    assert rows[("jax", "discriminator_train")]["items_per_call"] == 2 * 8
    assert rows[("jax", "feature_bank")]["items_per_call"] == 64
    # XLA's counts against the convolutions counted by hand: the discriminator's training step on
    # 2B = 16 pairs of 6 channels (3x forward, the stem 2x), the bank's inference on 64 images (1x)
    low, high = resnet18_conv_gflop(16, 8, 6, 4, step=True)
    assert low <= rows[("jax", "discriminator_train")]["gflop_per_call"] <= 1.5 * high
    low, high = resnet18_conv_gflop(64, 8, 3, 4, step=False)
    assert low <= rows[("jax", "feature_bank")]["gflop_per_call"] <= 1.5 * high
    peak = result["matmul_peak"]["float32"]
    assert result["matmul_peak_gflop_s"] == peak["gflop_per_s"] > 0
    assert peak["gflop_per_call"] == pytest.approx(2 * 512**3 / 1e9, rel=1e-3)
    for r in rows.values():
        assert r["gflop_per_s"] > 0
        assert r["peak_fraction"] == pytest.approx(r["gflop_per_s"] / peak["gflop_per_s"], rel=0.01)
    out = capsys.readouterr().out
    assert "| GFLOP/call | GFLOP/s | % of peak |" in out and "matmul peak" in out
    assert "| discriminator step |" in out and "| feature bank |" in out


def test_throughput_flop_count_and_torch_discriminator_parts():
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from benchmarks.peer import torch_peer, torch_reference
    from benchmarks.timing import xla_gflop
    from semsad_jax.method.losses import discriminator_loss
    from semsad_jax.models import ResNet, count_params

    # XLA's count of a matmul is 2 m n k
    a, b = jnp.ones((32, 16)), jnp.ones((16, 8))
    assert xla_gflop(jax.jit(jnp.matmul), a, b) == pytest.approx(2 * 32 * 16 * 8 / 1e9)
    # our discriminator (6 channels, ELU, MLP head, 1 logit) and its torch peer: the same network
    ours = ResNet(width=4, in_channels=6, activation="elu", head="mlp", out_dim=1, rngs=nnx.Rngs(0))
    theirs = torch_reference.make_discriminator(4, 18)
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters())
    # and the same loss
    s_pos, s_neg = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    ref = torch_reference.discriminator_loss(torch.from_numpy(s_pos), torch.from_numpy(s_neg), 3.7)
    assert float(discriminator_loss(s_pos, s_neg, 3.7)) == pytest.approx(ref.item(), rel=1e-5)
    images = np.random.default_rng(1).integers(0, 256, (32, 8, 8, 3), np.uint8)
    rows = _tiny_torch_rows(
        torch_peer,
        images,
        benches=("disc", "bank"),
        disc=torch_peer.DiscSettings(batch=4, width=4, depth=18),
        bank_images=20,
        bank_batch=8,
    )
    items = {r["bench"]: r["items_per_call"] for r in rows}
    assert items == {"discriminator_train": 8, "feature_bank": 20}  # 2B pairs; the bank's images
    assert all(r["items_per_s"] > 0 for r in rows)
    encoder = torch_reference.make_encoder(width=4).eval()
    features = torch_peer.bank_features(encoder, images[:20], 8, torch.device("cpu"))
    assert features.shape == (20, 128)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def _tiny_torch_rows(torch_peer, images, **kwargs):
    """The PyTorch peer's rows at test sizes: batch 8, width 4, float32, one thread, one round."""
    timing = dict(warmup=1, repeats=1, calls=1)
    return torch_peer.bench_torch(
        images, batch=8, width=4, dtypes=["float32"], workers=0, timing=timing, threads=1, **kwargs
    )


def test_time_call_reports_median_of_rounds():
    durations = iter([0.0, 0.2, 0.05, 0.1])  # warm-up, then three rounds

    def fn():
        import time

        time.sleep(next(durations))

    t = time_call(fn, warmup=1, repeats=3, calls=1, sync=lambda _: None)
    assert t.repeats == 3 and 0.1 <= t.median_s < 0.2 and t.min_s < t.median_s < t.max_s


def test_random_neighbours_never_self():
    from benchmarks.timings.disc_step import random_neighbours

    nn = random_neighbours(50, 4)
    assert nn.shape == (50, 4) and nn.dtype == np.int32
    assert nn.min() >= 0 and nn.max() < 50 and not (nn == np.arange(50)[:, None]).any()


def test_aggregate_mean_and_spread_against_numpy():
    rng = np.random.default_rng(0)
    records = []
    for seed in (0, 1, 2):
        for protocol in ("class_split", "one_class_a", "one_class_b"):
            records.append(
                {
                    "protocol": protocol,
                    "seed": seed,
                    "detector": "semsad",
                    "bn_mode": "running_stats",
                    "ood": "x",
                    "auroc": float(rng.uniform()),
                    "fpr95": float(rng.uniform()),
                }
            )
    rows = {r["protocol"]: r for r in quality_table.aggregate(records)}
    split = [r["auroc"] for r in records if r["protocol"] == "class_split"]
    assert rows["class_split"]["auroc_mean"] == pytest.approx(np.mean(split))
    assert rows["class_split"]["auroc_std"] == pytest.approx(np.std(split, ddof=1))
    per_seed = [
        np.mean([r["fpr95"] for r in records if r["seed"] == s and "one" in r["protocol"]])
        for s in (0, 1, 2)
    ]
    mean_row = rows[quality_table.ONE_CLASS_MEAN]
    assert mean_row["fpr95_mean"] == pytest.approx(np.mean(per_seed))
    assert mean_row["fpr95_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert mean_row["classes"] == 2 and mean_row["seeds"] == 3


def test_quality_protocol_specs():
    budget = cifar10_quality.BUDGETS["cpu"]
    protos = cifar10_quality.protocols(budget, "/x.tgz", split="report")
    assert len([p for p in protos if p.startswith("one_class_")]) == 10
    split = protos["class_split"]
    assert (
        split["train"]
        == "archive:/x.tgz!train?classes=airplane,automobile,bird,cat,deer&limit=4000"
    )
    assert split["ood"]["last_five"].startswith(
        "archive:/x.tgz!test?classes=dog,frog,horse,ship,truck"
    )
    assert protos["one_class_cat"]["ood"]["other_nine"].startswith(
        "archive:/x.tgz!test?exclude=cat"
    )
    val = cifar10_quality.protocols(budget, "/x.tgz")  # validation: the default
    assert list(val) == ["class_split", "one_class_airplane", "one_class_cat", "one_class_ship"]
    assert val["class_split"]["train"] == (
        "archive:/x.tgz!train?classes=airplane,automobile,bird,cat,deer&holdout=1000&part=fit"
        "&limit=4000"
    )
    assert val["one_class_cat"]["ood"]["other_nine"] == (
        "archive:/x.tgz!train?exclude=cat&holdout=1000&part=holdout&limit=1000"
    )
    chosen = cifar10_quality.protocols(budget, "/x.tgz", ["one_class_dog"], "validation")
    assert list(chosen) == ["one_class_dog"]  # any of the ten classes on request
    with pytest.raises(SystemExit, match="unknown --protocols"):
        cifar10_quality.protocols(budget, "/x.tgz", ["one_class_zebra"])
    config = cifar10_quality.make_config(budget, split, seed=3, norm="batch_transductive")
    assert (config.seed, config.discriminator.norm, config.data.image_size) == (
        3,
        "batch_transductive",
        16,
    )


def _indices(spec: str) -> set[str]:
    """The items a protocol spec selects, as "split/position", computed with the data module's
    own query on CIFAR-10's layout (5,000 train and 1,000 test images per class; far-OOD sets by
    their own sizes), without loading images."""
    from semsad_jax.data.specs import parse_spec, select_indices
    from semsad_jax.data.synthetic import SYNTHETIC_COUNT

    parsed = parse_spec(spec)
    if parsed.kind == "archive":
        per_class = 5000 if parsed.subdir == "train" else 1000
        labels, names = np.repeat(np.arange(10), per_class), list(cifar10_quality.CLASSES)
    elif parsed.location == "digits":
        from sklearn.datasets import load_digits

        labels, names = load_digits().target, [str(i) for i in range(10)]
    else:
        labels, names = None, None
    count = SYNTHETIC_COUNT if labels is None else len(labels)
    kept = select_indices(parsed, count, labels, names)
    kept = np.arange(count) if kept is None else kept
    return {f"{parsed.location}!{parsed.subdir}/{i}" for i in kept.tolist()}


@pytest.mark.parametrize("budget_name", ["cpu", "gpu"])
def test_validation_never_scores_training_or_report_images(budget_name):
    """Validation trains on the fit part of the training split and scores only its held-out part
    (in-distribution and OOD); the report trains on the training split and scores the test split,
    with all ten one-class protocols; the two far-OOD suites are disjoint."""
    budget = cifar10_quality.BUDGETS[budget_name]
    val = cifar10_quality.protocols(budget, "/x.tgz", split="validation")
    report = cifar10_quality.protocols(budget, "/x.tgz", split="report")
    held_out = _indices("archive:/x.tgz!train?holdout=1000&part=holdout")
    assert len(held_out) == 10 * cifar10_quality.HOLDOUT
    for name, p in val.items():
        train = _indices(p["train"])
        scored = [_indices(p["test"])] + [_indices(spec) for spec in p["ood"].values()]
        assert train and not train & held_out, name
        assert all(s and not s & train for s in scored), name
        cifar = [s for s in scored if any(k.startswith("/x.tgz!") for k in s)]
        assert len(cifar) == 2 and all(s <= held_out for s in cifar), name
        if not budget.test_limit and not budget.ood_limit:  # every protocol, the same hold-out
            assert cifar[0] | cifar[1] == held_out, name
    assert [p for p in report if p.startswith("one_class_")] == [
        f"one_class_{c}" for c in cifar10_quality.CLASSES
    ]
    for name, p in report.items():
        assert "!train?" in p["train"] and "holdout" not in p["train"], name
        assert "!test?" in p["test"] and all(
            "!test?" in spec for ood, spec in p["ood"].items() if not ood.startswith("far_")
        ), name
        for ood, spec in p["ood"].items():
            if ood.startswith("far_"):
                assert not _indices(spec) & _indices(val["class_split"]["ood"][ood]), ood


def test_quality_orchestration_with_stubbed_pipeline(tmp_path, monkeypatch):
    """The tiny budget's protocol x seed x bn-mode loop, records and outputs (training stubbed:
    a real tiny run takes minutes on 2 cores; see benchmarks/README.md for the command)."""
    calls = []

    def fake_run(config, workdir, mode):
        calls.append((mode, config.seed, config.discriminator.norm, workdir))
        if mode == "encoder":
            os.makedirs(os.path.join(workdir, "encoder"))
            return {"encoder": {}}
        if mode == "discriminator":
            assert os.path.isdir(os.path.join(workdir, "encoder"))  # own or linked encoder
            return {"discriminator": {}}
        if mode == "rotation":
            os.makedirs(os.path.join(workdir, "rotation"), exist_ok=True)
            return {"rotation": {}}
        shift = 0.1 * config.seed + (0.05 if config.discriminator.norm != "batch" else 0.0)
        metrics = {"auroc": 0.6 + shift, "fpr95": 0.5 - shift, "aupr_in": 0.6, "aupr_out": 0.6}
        detectors = {d: {"last_five": dict(metrics)} for d in ("semsad", "knn", "mahalanobis")}
        return {"eval": {"detectors": detectors}}

    monkeypatch.setattr(cifar10_quality, "run", fake_run)
    monkeypatch.setattr(cifar10_quality, "_enable_compile_cache", lambda path: None)
    monkeypatch.chdir(tmp_path)  # a relative --out: the linked encoder must still resolve
    result = cifar10_quality.main(
        ["--budget=tiny", "--out=.", "--protocols=class_split", "--archive", __file__]
    )
    assert [c[:3] for c in calls if c[1] == 0] == [
        ("encoder", 0, "batch"),
        ("discriminator", 0, "batch"),
        ("rotation", 0, "batch"),
        ("eval", 0, "batch"),
        ("discriminator", 0, "batch_transductive"),
        ("rotation", 0, "batch_transductive"),  # the first one's network, linked: reused
        ("eval", 0, "batch_transductive"),
    ]
    assert os.path.islink(
        os.path.join(
            tmp_path, "work", "validation", "class_split", "seed0", "transductive", "rotation"
        )
    )
    assert os.path.islink(  # validation (the default) and report workdirs never collide
        os.path.join(
            tmp_path, "work", "validation", "class_split", "seed1", "transductive", "encoder"
        )
    )
    rows = {(r["detector"], r["bn_mode"]): r for r in result["summary"]}
    assert set(rows) == {
        ("semsad", "running_stats"),
        ("semsad", "transductive"),
        ("knn", "-"),
        ("mahalanobis", "-"),
    }
    semsad = rows[("semsad", "transductive")]
    assert semsad["seeds"] == 2 and semsad["auroc_mean"] == pytest.approx(0.70)
    assert semsad["auroc_std"] == pytest.approx(np.std([0.65, 0.75], ddof=1))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]) == 2 * 4  # 2 seeds x (semsad x 2 modes + 2 baselines)
    assert (
        "| class_split | semsad | transductive | last_five | 70.0 +- 7.1 |"
        in (tmp_path / "results.md").read_text()
    )
    assert saved["split"] == "validation" and saved["holdout_per_class"] == 1000
    assert "part=fit" in saved["protocols"]["class_split"]["train"]
    assert "CIFAR-10 quality, VALIDATION" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit, match="holds validation results"):
        cifar10_quality.main(["--budget=tiny", "--out=.", "--split=report", "--archive", __file__])
    calls.clear()
    report = cifar10_quality.main(
        ["--budget=tiny", "--out=rep", "--split=report", "--seeds=0", "--archive", __file__]
    )
    assert {c[3].split(os.sep + "work" + os.sep)[1].split(os.sep)[0] for c in calls} == {"report"}
    assert report["split"] == "report" and list(report["protocols"]) == [
        "class_split",
        "one_class_airplane",  # the tiny budget's report one-class classes (cpu, gpu: all ten)
    ]
    text = (tmp_path / "rep" / "results.md").read_text()
    assert "CIFAR-10 quality, REPORT (CIFAR-10 test split)" in text
    assert "| class | OOD | semsad (running_stats) | semsad (transductive) | knn |" in text
    assert "| airplane | last_five | 60.0 +- 0.0 | 65.0 +- 0.0 | 60.0 +- 0.0 |" in text
    assert "| mean (1 class) | last_five | 60.0 +- 0.0 | 65.0 +- 0.0 |" in text
    assert "| protocol | seeds | encoder | discriminator | SemSAD | rotation |" in text
    # --append: seed 1 joins seed 0's runs in the same OUT (only seed 1 is trained)
    calls.clear()
    both = cifar10_quality.main(
        ["--budget=tiny", "--out=rep", "--split=report", "--seeds=1", "--append", "--archive",
         __file__]
    )  # fmt: skip
    assert {c[1] for c in calls} == {1}
    assert both["seeds"] == [0, 1] and {r["seed"] for r in both["records"]} == {0, 1}
    assert "| airplane | last_five | 65.0 +- 7.1 |" in (tmp_path / "rep" / "results.md").read_text()
    with pytest.raises(SystemExit, match="another budget or --set"):
        cifar10_quality.main(
            ["--budget=tiny", "--out=rep", "--split=report", "--seeds=1", "--append",
             "--set", "discriminator.mu=0.5", "--archive", __file__]
        )  # fmt: skip


def test_encoder_recipes_trains_only_the_encoder_on_validation_images(tmp_path, monkeypatch):
    """encoder_recipes: the encoder stage alone, on the protocol's validation split (fit images;
    kNN measured on held-out ones), for --steps steps (epochs = steps / steps per epoch), with the
    budget's recipe plus --set; result.json reports the stage's kNN accuracies and its minutes."""
    import semsad_jax.data
    import semsad_jax.run
    from benchmarks.experiments import encoder_recipes

    seen = {}

    class FakeSets:
        def __init__(self, data, seed=0):
            seen["sets"] = data.train

        def train(self):
            return np.zeros((1000, 8, 8, 3), np.uint8)  # 1000 // 16 = 62 steps per epoch

    def fake_run(config, workdir, mode):
        seen.update(config=config, workdir=workdir, mode=mode)
        epochs = config.encoder.epochs
        summary = {"num_train": 1000, "epochs": epochs, "total_steps": 62 * epochs}
        return {"encoder": summary | {"knn_accuracy": 0.61, "pixel_knn_accuracy": 0.4}}

    monkeypatch.setattr(semsad_jax.data, "DataSets", FakeSets)
    monkeypatch.setattr(semsad_jax.run, "run", fake_run)
    out = tmp_path / "enc"
    argv = ["--budget=tiny", f"--out={out}", "--steps=250", "--archive", __file__]
    result = encoder_recipes.main([*argv, "--set", "encoder.optimizer=sgd"])
    config = seen["config"]
    assert seen["mode"] == "encoder" and seen["workdir"] == str(out)
    assert "part=fit" in config.data.train and "part=holdout" in config.data.test
    assert seen["sets"] == config.data.train
    assert config.encoder.epochs == 4 and config.encoder.optimizer == "sgd"  # round(250 / 62)
    assert result["steps"] == 248 and result["knn_accuracy"] == 0.61
    assert result["pixel_knn_accuracy"] == 0.4 and result["split"] == "validation"
    assert ["encoder.optimizer", "sgd"] in result["overrides"]
    assert json.loads((out / "result.json").read_text())["epochs"] == 4


def _fake_quality_run(root, steps, aurocs, knn=0.5, split="validation"):
    """A cifar10_quality output folder with one class-split run: results.json and stage.jsons."""
    records = [
        {
            "protocol": "class_split",
            "detector": d,
            "ood": ood,
            "auroc": a if ood == "last_five" else 0.9,
        }
        for d, a in aurocs.items()
        for ood in ("last_five", "far_noise")
    ]
    result = {"split": split, "budget": {"enc_batch": 256}, "records": records}
    (root / "results.json").parent.mkdir(parents=True)
    (root / "results.json").write_text(json.dumps(result))
    work = root / "work" / split / "class_split" / "seed0" / "running_stats"
    for stage, meta in (
        ("encoder", {"total_steps": steps, "epochs": steps // 15, "train_minutes": steps / 100,
                     "knn_accuracy": knn, "pixel_knn_accuracy": 0.5}),
        ("discriminator", {"total_steps": 240}),
    ):  # fmt: skip
        (work / stage).mkdir(parents=True)
        (work / stage / "stage.json").write_text(json.dumps(meta))
    return str(root)


def test_scaling_curve_fits_log_compute_and_solves_the_crossings(tmp_path, capsys):
    """AUROC exactly linear in log10(views): the fitted slopes are the true ones, semsad crosses a
    floor where the two lines meet (by hand), never where its slope is not above the floor's."""
    from benchmarks.experiments import scaling_curve

    runs = []
    for i, steps in enumerate((100, 400, 1600)):
        views = 2 * 256 * steps
        x = np.log10(views)
        aurocs = {"semsad": 0.1 + 0.08 * x, "knn": 0.4 + 0.02 * x, "mahalanobis": 0.9 - 0.01 * x}
        aurocs["pixels_knn"] = 0.56  # flat: semsad (rising) crosses it
        runs.append(_fake_quality_run(tmp_path / f"r{i}", steps, aurocs, knn=0.5 + 0.05 * i))
    result = scaling_curve.main(["--runs", *runs, "--out", str(tmp_path / "out" / "scaling")])
    lines = result["lines"]
    assert lines["semsad"][1] == pytest.approx(0.08) and lines["knn"][1] == pytest.approx(0.02)
    assert result["crossings"]["knn"] == pytest.approx(
        10 ** ((0.4 - 0.1) / (0.08 - 0.02)), rel=1e-6
    )
    assert result["crossings"]["pixels_knn"] == pytest.approx(10 ** ((0.56 - 0.1) / 0.08), rel=1e-6)
    assert result["crossings"]["mahalanobis"] == pytest.approx(10 ** (0.8 / 0.09), rel=1e-6)
    assert [p["views"] for p in result["points"]] == [51200, 204800, 819200]
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 1000
    assert "never" not in capsys.readouterr().out
    flat = [_fake_quality_run(tmp_path / f"f{i}", s, {"semsad": 0.5, "knn": 0.4 + 0.01 * i})
            for i, s in enumerate((100, 200))]  # fmt: skip
    out = scaling_curve.main(["--runs", *flat, "--out", str(tmp_path / "flat")])
    assert out["crossings"] == {"knn": None} and out["split"] == "validation"
    # the split is read from each run (its workdirs live under it); runs of two splits are refused
    report = [_fake_quality_run(tmp_path / f"rep{s}", s, {"semsad": 0.5}, split="report")
              for s in (100, 400)]  # fmt: skip
    assert (
        scaling_curve.main(["--runs", *report, "--out", str(tmp_path / "r")])["split"] == "report"
    )
    with pytest.raises(SystemExit, match="mix the report and validation"):
        scaling_curve.main(["--runs", report[0], *flat, "--out", str(tmp_path / "mixed")])


def test_torch_reference_matches_ours():
    torch = pytest.importorskip("torch")
    from flax import nnx

    from benchmarks.peer import torch_reference
    from semsad_jax.method.losses import infonce
    from semsad_jax.models import ResNet, count_params

    # the same CIFAR ResNet-18 + linear head: identical parameter counts (independent code)
    ours = count_params(ResNet(width=8, head="linear", out_dim=128, rngs=nnx.Rngs(0)))
    theirs = torch_reference.CifarResNet18(width=8, out_dim=128)
    assert ours == sum(p.numel() for p in theirs.parameters())
    # the authors' loss is our "infonce" at the same temperature
    z1, z2 = np.random.default_rng(0).normal(size=(2, 12, 5)).astype(np.float32)
    ref = torch_reference.nce_loss(torch.from_numpy(z1), torch.from_numpy(z2), 0.5).item()
    assert float(infonce(z1, z2, 0.5)) == pytest.approx(ref, rel=1e-5)
    # scale=(1, 1) crops of a square image are the whole image (torchvision's fallback)
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8)
    _, t_org = torch_reference.authors_transforms(8, prefer_torchvision=False)
    np.testing.assert_allclose(t_org(Image.fromarray(image)).permute(1, 2, 0).numpy(), image / 255)


def test_torch_peer_rows():
    pytest.importorskip("torch")
    from benchmarks.peer import torch_peer

    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), np.uint8)
    rows = _tiny_torch_rows(torch_peer, images)
    assert {r["bench"] for r in rows} == {
        "augment_pil_one_process",
        "encoder_step_no_aug",
        "encoder_train_device_aug",
        "encoder_train_dataloader",
    }
    assert all(r["items_per_call"] == 16 and r["items_per_s"] > 0 for r in rows)


def test_device_augment_ranges():
    torch = pytest.importorskip("torch")
    from benchmarks.peer.torch_device_augment import device_augment

    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    out = device_augment(x)
    assert out.shape == (64, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0 < int(gray.sum()) < 64  # RandomGrayscale(p=0.2) hit some, not all


def test_gpu_script_dry_run(tmp_path):
    for script in ("gpu.sh", "fetch_wheels.sh"):
        subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", script)], check=True)
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), str(tmp_path)],
        env={**os.environ, "DRY_RUN": "1", "PYTHON": "true"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        "-m benchmarks throughput --preset=gpu --dtypes=bfloat16,float32 --benches=encoder" in out
    )
    assert "-m benchmarks cifar10_quality --budget=gpu" in out


def test_one_entry_lists_every_benchmark_and_the_old_paths_still_run():
    """``python -m benchmarks --help`` names every benchmark, and each old path
    ``benchmarks/NAME.py`` (the documented commands; now a shim) runs NAME: here its --help."""
    from benchmarks.__main__ import BENCHMARKS

    listing = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert all(f"\n  {name} " in listing for name in BENCHMARKS), listing
    top = os.listdir(os.path.join(ROOT, "benchmarks"))
    shims = {f[:-3] for f in top if f.endswith(".py") and not f.startswith("_")} - {"timing"}
    assert shims == set(BENCHMARKS)
    for name in sorted(shims):
        out = subprocess.run(
            [sys.executable, os.path.join("benchmarks", f"{name}.py"), "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, (name, out.stderr[-2000:])
        assert out.stdout.startswith("usage:") and "--" in out.stdout, name


def test_conv_impl_shapes_cover_every_convolution_of_the_model(monkeypatch):
    import jax
    from flax import nnx

    from benchmarks.timings import conv_impl
    from semsad_jax.models import Conv, ResNet

    for depth in (18, 34):
        shapes = conv_impl.conv_shapes(depth, 4, 16, 6)
        model = nnx.eval_shape(
            lambda d=depth: ResNet(depth=d, width=4, in_channels=6, rngs=nnx.Rngs(0))
        )
        convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, Conv)]
        assert sum(s["count"] for s in shapes) == len(convs)  # 20 for ResNet-18, 36 for 34
        assert {(s["cin"], s["cout"], s["kernel"], s["stride"]) for s in shapes} == {
            (c.in_features, c.out_features, c.kernel_size[0], c.strides) for c in convs
        }
    (last,) = [s for s in shapes if s["size"] == 2 and s["kernel"] == 3]  # 2x2 map, 3x3 kernel
    monkeypatch.setattr(jax, "device_count", lambda: 1)  # auto's rule for one CPU device
    row = conv_impl.time_shape(last, batch=2, dtype="float32", repeats=1)
    assert row["xla_fwd_bwd_ms"] > 0 and row["matmul_fwd_bwd_ms"] > 0
    assert row["auto"] == "matmul"  # the last 3x3 of a 16 px ResNet runs on a 2x2 map


@pytest.mark.parametrize("with_torch", [False, True])
def test_conv_ops_times_every_convolution_in_both_frameworks(with_torch, capsys):
    """conv_ops: one row per distinct convolution, the three parts timed in JAX (and torch), the
    total weighted by each shape's count and the ratio torch time / jax time."""
    from benchmarks.timings import conv_impl, conv_ops

    if with_torch:
        pytest.importorskip("torch")
    argv = ["--width=4", "--image-size=8", "--batch=4", "--repeats=1"]
    result = conv_ops.main(argv + ([] if with_torch else ["--no-torch"]))
    shapes = conv_impl.conv_shapes(18, 4, 8, 3)
    assert [{k: r[k] for k in shapes[0]} for r in result["rows"]] == shapes
    frameworks = ("jax", "torch") if with_torch else ("jax",)
    for fw in frameworks:
        for part in conv_ops.PARTS:
            assert all(r[f"{fw}_{part}_ms"] > 0 for r in result["rows"])
            by_hand = sum(r[f"{fw}_{part}_ms"] * r["count"] for r in result["rows"])
            assert result["total"][f"{fw}_{part}_ms"] == pytest.approx(by_hand, abs=0.06)
    if with_torch:
        total = result["total"]
        ratio = sum(total[f"torch_{p}_ms"] for p in conv_ops.PARTS) / sum(
            total[f"jax_{p}_ms"] for p in conv_ops.PARTS
        )
        assert total["ratio"] == pytest.approx(ratio, abs=0.006)
    else:
        assert "torch_fwd_ms" not in result["rows"][0]
    assert "total (x count)" in capsys.readouterr().out


def test_far_rows_and_one_class_mean_per_ood_set():
    records = [
        {
            "protocol": p,
            "seed": s,
            "detector": d,
            "bn_mode": "-",
            "ood": o,
            "auroc": a,
            "fpr95": 0.5,
        }
        for p, s, d, o, a in [
            ("one_class_a", 0, "pixels_knn", "other_nine", 0.6),
            ("one_class_b", 0, "pixels_knn", "other_nine", 0.8),
            ("one_class_a", 0, "pixels_knn", "far_noise", 0.9),
            ("one_class_b", 0, "pixels_knn", "far_noise", 0.5),
        ]
    ]
    rows = quality_table.aggregate(records)
    mean = {r["ood"]: r for r in rows if r["protocol"] == quality_table.ONE_CLASS_MEAN}
    assert mean["other_nine"]["auroc_mean"] == pytest.approx(0.7)
    assert mean["far_noise"]["auroc_mean"] == pytest.approx(0.7)
    (far,) = quality_table.far_rows(records)
    assert far["ood"] == "far_noise" and far["runs"] == 2 and far["auroc_min"] == 0.5
    report = quality_table.markdown_report(
        {
            "budget_name": "tiny",
            "budget": dict(dataclasses.asdict(cifar10_quality.BUDGETS["tiny"])),
            "machine": {"backend": "cpu", "devices": ["cpu"], "cpu_count": 2},
            "minutes": 1.0,
            "seeds": [0],
            "summary": rows,
            "records": records,
            "overrides": [["discriminator.mu", 0.25]],
        }
    )
    assert "| far-OOD set | pixels_knn |" in report and "| far_noise | 70.0 (50.0) |" in report
    assert "discriminator.mu=0.25" in report
    assert "| one_class (mean) | pixels_knn | - | far_noise |" not in report  # far sets: own table


def test_quality_overrides_reach_the_config():
    budget = cifar10_quality.BUDGETS["cpu"]
    protos = cifar10_quality.protocols(budget, "/x.tgz")
    assert "far_noise" in protos["one_class_cat"]["ood"]
    extra = [cifar10_quality.parse_override(x) for x in ("discriminator.mu=0.25", "eval.tpr=0.9")]
    extra.append(cifar10_quality.parse_override("discriminator.neighbourhood=labels"))
    config = cifar10_quality.make_config(budget, protos["class_split"], 0, "batch", extra)
    assert config.discriminator.mu == 0.25 and config.eval.tpr == 0.9
    assert config.discriminator.neighbourhood == "labels"
    far = f"synthetic:text?holdout=500&part=holdout&limit={budget.far_limit}&seed=1"
    assert config.eval.ood.far_text == far  # validation (the default): the held-out half
    for key, value in budget.overrides:  # the budget's recipe, applied before --set
        section, name = key.split(".")
        assert config[section][name] == value
    with pytest.raises(SystemExit, match="no such field"):
        cifar10_quality.make_config(budget, protos["class_split"], 0, "batch", [("eval.nope", 1)])


def test_shortcut_analysis_on_the_smoke_detector(smoke_detector):
    from helpers import pair_scores_by_hand, semsad_by_hand
    from sklearn.metrics import roc_auc_score

    from benchmarks.experiments import shortcuts

    det = smoke_detector
    images = det.bank.images[:12]
    far = {"far_noise": np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)}
    rows = shortcuts.analyse(det, images, far)
    assert rows["pair s(nn(x), x) = score(x)"]["auroc_vs_in"] is None
    # against the networks applied by hand and scikit-learn's AUROC
    by_hand = lambda x: semsad_by_hand(det.encoder, det.discriminator, det.bank.images, x)[0]
    s_in, s_far = by_hand(images), by_hand(far["far_noise"])
    auroc = roc_auc_score(np.r_[np.ones(12), np.zeros(12)], np.r_[s_in, s_far])
    assert rows["far OOD: far_noise"]["auroc_vs_in"] == pytest.approx(auroc)
    assert rows["far OOD: far_noise"]["mean_s"] == pytest.approx(np.mean(s_far), rel=1e-4)
    assert rows["pair s(nn(x), x) = score(x)"]["mean_s"] == pytest.approx(np.mean(s_in), rel=1e-4)
    s_self = pair_scores_by_hand(det.discriminator, images, images)
    assert rows["pair s(x, x)"]["mean_s"] == pytest.approx(np.mean(s_self), rel=1e-4)
    changed = shortcuts.changes(images, np.random.default_rng(0))
    assert np.all(changed["grayscale"][..., 0] == changed["grayscale"][..., 1])
    assert np.array_equal(np.sort(changed["quadrants permuted"].ravel()), np.sort(images.ravel()))
    assert "| far OOD: far_noise |" in shortcuts.markdown(rows, "w")


def test_neighbour_pool_measure():
    from benchmarks.experiments import neighbour_pool

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 16))
    feats = centres[labels] + 0.3 * rng.normal(size=(200, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    whole, small = neighbour_pool.measure(feats.astype(np.float32), labels, [0, 20], k=4)
    assert whole["label_agreement"] > 0.95 and whole["mean_cosine"] > small["mean_cosine"]


@pytest.mark.parametrize("mode", ["feed", "epoch"])
def test_host_memory_runs_on_a_small_mapped_set(mode, tmp_path):
    from benchmarks.timings import host_memory

    out = tmp_path / "h.json"
    args = [f"--mode={mode}", f"--dir={tmp_path}", "--num-images=256", "--image-size=8"]
    result = host_memory.main([*args, "--batch=64", "--width=2", f"--out={out}"])
    assert result["steps"] == 4 and result["images_read"] == 256
    assert result["set"]["memory_mapped"] and result["set"]["bytes"] == 256 * 8 * 8 * 3
    assert json.loads(out.read_text())["mode"] == mode
    if result["peak_resident_bytes"] is not None:
        assert result["peak_resident_bytes"] > 0


def test_scaling_worker_reports_one_row(capsys):
    """The per-process part of benchmarks/timings/scaling.py (its launch: tests/launch.py)."""
    from benchmarks.timings import scaling

    scaling.main(["--worker", "--preset=tiny", "--repeats=1", "--calls=1"])
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(scaling.MARK)]
    row = json.loads(line[len(scaling.MARK) :])
    assert row["bench"] == "encoder_train" and row["processes"] == 1 and row["items_per_s"] > 0

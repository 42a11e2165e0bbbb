"""What a user meets: the wheel installed into a fresh virtual environment, run from another folder.

One session fixture builds the wheel (``pip wheel --no-deps .``), makes a fresh venv, installs the
wheel with its dependencies (versions from the lock, ``-c requirements.txt``) and ipykernel, and
runs everything from a folder outside the clone with no PYTHONPATH, so the clone's files cannot
stand in for the package's. Then:

* ``pip show`` lists no TensorFlow distribution;
* ``semsad-jax --help`` and ``python -m semsad_jax --help`` list the modes; a config by short name;
* the digits config trains and evaluates with the console script (fewer epochs than the demo);
* the shipped CIFAR-10 detector restores from an ``http://127.0.0.1`` URL (by name, through
  ``$SEMSAD_PRETRAINED_URL``) and scores images with every detector, as its card says;
* examples/colab.ipynb executes top to bottom in a real Jupyter kernel of that venv (nbclient),
  offline, its Colab-only cells skipped.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "pretrained")
SHARED_CIFAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg.tar.gz")
MODES = ("encoder", "discriminator", "eval", "score", "all", "report", "export")
COLAB_ONLY = "# colab-only"


class Env:
    """The fresh venv: ``run(cmd)`` in the outside folder with the venv's executables first."""

    def __init__(self, venv: str, cwd: str, cache: str):
        self.venv, self.cwd, self.cache = venv, cwd, cache
        self.python = os.path.join(venv, "bin", "python")

    def env(self, **extra: str) -> dict:
        # nothing of the suite's own setup: no PYTHONPATH, no venv, XLA's default flags
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "XLA_FLAGS", "SEMSAD_CACHE")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            PATH=os.path.join(self.venv, "bin") + os.pathsep + env.get("PATH", ""),
            JAX_PLATFORMS="cpu",
            SEMSAD_CACHE=self.cache,
            **extra,
        )
        return env

    def run(self, *cmd: str, timeout: int = 900, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(cmd), cwd=self.cwd, env=self.env(**extra), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def _check(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("installed")
    wheels, venv, cwd = base / "wheels", base / "venv", base / "elsewhere"
    cwd.mkdir()
    pip = [sys.executable, "-m", "pip"]
    _check(subprocess.run([*pip, "wheel", "-q", "--no-deps", ROOT, "-w", str(wheels)],
                          capture_output=True, text=True, timeout=600))  # fmt: skip
    (wheel,) = wheels.glob("semsad_jax-*.whl")
    _check(
        subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    )
    env = Env(str(venv), str(cwd), str(base / "cache"))
    lock = os.path.join(ROOT, "requirements.txt")
    _check(env.run(env.python, "-m", "pip", "install", "-q", "-c", lock, str(wheel), "ipykernel"))
    return env


def test_no_tensorflow_and_the_package_is_the_wheel(installed):
    shown = installed.run(installed.python, "-m", "pip", "show", "tensorflow", "tensorflow-cpu")
    assert shown.returncode != 0 and "not found" in shown.stderr.lower()
    listed = _check(installed.run(installed.python, "-m", "pip", "list", "--format=json"))
    names = {p["name"].lower() for p in json.loads(listed)}
    assert "semsad-jax" in names and "jax" in names
    tensorflow = {
        "tensorflow",
        "tensorflow-cpu",
        "tensorflow-gpu",
        "tensorflow-intel",
        "tf-nightly",
    }
    assert not names & tensorflow  # (tensorflow-datasets and tensorflow-metadata are not TF)
    where = _check(installed.run(installed.python, "-c",
        "import semsad_jax, semsad_jax.configs as c; print(semsad_jax.__file__); print(*c.__path__)"))  # fmt: skip
    for line in where.split():
        assert line.startswith(installed.venv), where  # not the clone's files


def test_help_lists_the_modes_and_short_config_names(installed):
    for cmd in (["semsad-jax", "--help"], [installed.python, "-m", "semsad_jax", "--help"]):
        text = _check(installed.run(*cmd))
        for mode in MODES:
            assert mode in text
        for flag in ("--config", "--workdir", "--mode", "--detector", "--images", "--out"):
            assert flag in text
    unknown = installed.run("semsad-jax", "--config=nope", "--workdir=w", "--mode=encoder")
    assert unknown.returncode == 2
    (line,) = unknown.stderr.strip().splitlines()
    assert "unknown --config 'nope'" in line and "cifar100" in line and "class_split" in line


def test_digits_trains_and_evaluates_with_the_console_script(installed):
    workdir = os.path.join(installed.cwd, "runs", "digits")
    _check(installed.run(
        "semsad-jax", "--config=digits", f"--workdir={workdir}", "--mode=all",
        "--config.encoder.epochs=2", "--config.discriminator.epochs=2", "--config.progress=False",
        "--config.eval.plots=False",
    ))  # fmt: skip
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        results = json.load(f)
    # the digits config is the paper's plus its data: no rotation network; combined = its default
    assert set(results["threshold_95"]) == {
        "semsad", "knn", "mahalanobis", "pixels_knn", "combined"
    }  # fmt: skip
    assert "digits_5_9" in results["detectors"]["semsad"]
    assert results["config"]["data"]["train"] == "sklearn:digits/train?classes=0,1,2,3,4"


@pytest.fixture(scope="module")
def server():
    """``pretrained/`` served on 127.0.0.1 (a real HTTP download); yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=PRETRAINED)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _card(name: str) -> dict:
    with open(os.path.join(PRETRAINED, f"{name}.json")) as f:
        return json.load(f)


def test_shipped_cifar10_restores_from_http_and_scores_as_its_card(installed, server):
    card = _card("cifar10_cpu")
    check = card["check"]
    script = (
        "import json, sys; from semsad_jax import Detector; from semsad_jax.data import load_images\n"
        "det = Detector.restore('cifar10_cpu')\n"
        f"images = load_images({check['images']!r}, det.image_size, cache_dir='none').images\n"
        "print(json.dumps({k: v.tolist() for k, v in det.scores(images).items()}))\n"
    )
    out = _check(installed.run(installed.python, "-c", script, SEMSAD_PRETRAINED_URL=server))
    got = json.loads(out.strip().splitlines()[-1])
    for detector, expected in check["scores"].items():
        assert got[detector] == pytest.approx(expected, rel=1e-4, abs=1e-4), detector
    # the console script scores with a baseline from the URL of the archive itself
    url = f"{server}/{card['archive']}"
    outdir = os.path.join(installed.cwd, "knn-scores")
    _check(installed.run(
        "semsad-jax", f"--workdir={url}", "--mode=score", "--images=synthetic:noise?limit=20",
        "--detector=knn", f"--out={outdir}",
    ))  # fmt: skip
    with open(os.path.join(outdir, "scores.csv")) as f:
        rows = f.read().splitlines()
    assert len(rows) == 21 and rows[0].endswith(",detector") and rows[1].endswith(",knn")


def test_the_notebook_executes_in_a_real_kernel(installed, server, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(os.path.join(ROOT, "examples", "colab.ipynb"), as_version=4)
    notebook.cells = [
        c for c in notebook.cells if not (c.cell_type == "code" and c.source.startswith(COLAB_ONLY))
    ]
    found = tmp_path / "found.json"
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import json\n"
        f"json.dump({{'auroc': auroc, 'detector': DETECTOR, 'n_in': len(image_sets['in-distribution'])}}, open({str(found)!r}, 'w'))"
    ))  # fmt: skip
    kernels = tmp_path / "kernels"
    _check(installed.run(installed.python, "-m", "ipykernel", "install", "--prefix", str(kernels),
                         "--name", "semsad-wheel"))  # fmt: skip
    in_images = (
        f"archive:{SHARED_CIFAR}!test?limit=300"
        if os.path.exists(SHARED_CIFAR)
        else "synthetic:blobs?limit=300"
    )
    env = installed.env(SEMSAD_PRETRAINED_URL=server, SEMSAD_IN_IMAGES=in_images)
    env["JUPYTER_PATH"] = str(kernels / "share" / "jupyter")
    client = nbclient.NotebookClient(
        notebook, kernel_name="semsad-wheel", timeout=600,
        resources={"metadata": {"path": installed.cwd}},
    )  # fmt: skip
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    result = json.loads(found.read_text())
    assert result["detector"] == "cifar10_cpu" and result["n_in"] == 300
    assert set(result["auroc"]) == {"digits", "noise", "text", "photos", "shapes"}
    for row in result["auroc"].values():
        assert set(row) == {"semsad", "knn", "mahalanobis", "pixels_knn"}
        assert all(0.0 <= v <= 1.0 for v in row.values())

"""examples/colab.ipynb is a valid notebook whose code cells (install cells aside) run on a workdir."""

import os

import helpers
import nbformat
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "colab.ipynb")
COLAB_ONLY = "# colab-only"


def _code_cells():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_install_cells_are_marked():
    cells = _code_cells()
    colab_only = [c for c in cells if c.startswith(COLAB_ONLY)]
    assert any("pip install" in c for c in colab_only)
    for cell in cells:  # shell and Colab-only lines never reach the executed cells
        if not cell.startswith(COLAB_ONLY):
            assert "!pip" not in cell and "google.colab" not in cell


def test_notebook_cells_run_on_a_workdir(smoke_evaluated, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = smoke_evaluated
    spec = helpers.config().data.test
    monkeypatch.setenv("SEMSAD_WORKDIR", workdir)
    monkeypatch.setenv("SEMSAD_IMAGES", spec)
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "show", lambda *a, **k: None)
        for source in _code_cells():
            if not source.startswith(COLAB_ONLY):
                exec(compile(source, NOTEBOOK, "exec"), namespace)
    plt.close("all")
    with np.load(os.path.join(workdir, "eval", "scores.npz")) as npz:
        np.testing.assert_allclose(namespace["scores"], npz["semsad/in_distribution"], rtol=1e-5)
        np.testing.assert_array_equal(namespace["nearest"].indices[:, 0], npz["nn/in_distribution"])
    assert namespace["flags"].dtype == bool and len(namespace["flags"]) == 32

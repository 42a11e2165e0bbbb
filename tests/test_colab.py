"""examples/colab.ipynb is a valid notebook whose Colab-only cells are marked.

It is executed top to bottom in a real Jupyter kernel, from the installed wheel, by
tests/test_installed.py::test_the_notebook_executes_in_a_real_kernel.
"""

import os

import nbformat

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
    installs = [c for c in colab_only if '"pip", "install"' in c]
    assert len(installs) == 1
    for cell in cells:  # shell and Colab-only lines never reach the executed cells
        if not cell.startswith(COLAB_ONLY):
            assert "!" not in cell.split("\n")[0] and "google.colab" not in cell
            assert '"pip", "install"' not in cell and "!semsad-jax" not in cell
    install = installs[0]
    # the install cell says whether the runtime's jax, jaxlib, CUDA plugin or TensorFlow changed
    for package in ("jax", "jaxlib", "jax-cuda12-plugin", "tensorflow"):
        assert f'"{package}"' in install

"""The package's layout rules (README "Architecture"), checked rather than hoped for.

* import-linter's contracts in pyproject.toml: layers import downwards only, train and evaluation
  never import each other, the Detector and --mode=score import no training module, models import
  neither data nor augment, the method does no file I/O, no import cycles;
* no function-level import of the package's own modules (they would hide a cycle); function-level
  imports stay for optional or heavy third-party packages only;
* no module over 350 lines, and the training stages share no block of six or more lines.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "semsad_jax")
MAX_LINES = 350
# Third-party packages a function may import on first use: optional, or heavy and rarely needed.
LAZY_OK = {
    "tensorflow",
    "tensorflow_datasets",
    "importlib_resources",
    "matplotlib",
    "sklearn",
    "torch",
}
# ``import semsad_jax`` stays cheap: the package root loads the Detector on first use.
LAZY_OWN_OK = {("semsad_jax/__init__.py", "semsad_jax.evaluation.detector")}


def _modules() -> list[str]:
    out = []
    for folder, _, files in os.walk(PACKAGE):
        out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or os.path.join(
        os.path.dirname(sys.executable), "lint-imports"
    )
    assert os.path.exists(exe), (
        "import-linter is not installed: pip install -r requirements-dev.txt"
    )
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "KEPT" in out.stdout


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _function_level_imports(path: str) -> list[tuple[int, str]]:
    tree = ast.parse(_read(path), path)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                found += [(inner.lineno, alias.name) for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.level == 0:
                found.append((inner.lineno, inner.module or ""))
            elif isinstance(inner, ast.ImportFrom):
                found.append((inner.lineno, "." * inner.level + (inner.module or "")))
    return found


def test_no_function_level_import_dodges_a_cycle():
    bad = []
    for path in _modules():
        for line, module in _function_level_imports(path):
            top = module.split(".")[0]
            if (_rel(path), module) in LAZY_OWN_OK or (top in LAZY_OK and top != "semsad_jax"):
                continue
            bad.append(f"{_rel(path)}:{line} imports {module} inside a function")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from semsad_jax import run\n    import os\n")
    assert _function_level_imports(str(sample)) == [(2, "semsad_jax"), (3, "os")]


def test_no_module_is_over_350_lines():
    long = {_rel(p): n for p in _modules() if (n := len(_read(p).splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def _code_lines(path: str) -> list[str]:
    """Code lines with white space folded; blank lines, comments and imports left out (as the
    project's ``duplicates`` tool reads them)."""
    out = []
    for line in _read(path).splitlines():
        text = " ".join(line.split())
        if not text or text.startswith(("#", "import ", "from ")):
            continue
        out.append(text)
    return out


def shared_blocks(a: list[str], b: list[str], size: int = 6) -> list[tuple[str, ...]]:
    """The runs of ``size`` consecutive lines of ``a`` that also stand in ``b``."""
    runs_b = {tuple(b[i : i + size]) for i in range(len(b) - size + 1)}
    return [
        tuple(a[i : i + size]) for i in range(len(a) - size + 1) if tuple(a[i : i + size]) in runs_b
    ]


@pytest.mark.parametrize(
    "a, b", [("encoder", "discriminator"), ("encoder", "rotation"), ("discriminator", "rotation")]
)
def test_the_training_stages_share_no_block_of_six_lines(a, b):
    first = _code_lines(os.path.join(PACKAGE, "train", f"{a}.py"))
    second = _code_lines(os.path.join(PACKAGE, "train", f"{b}.py"))
    shared = shared_blocks(first, second)
    assert not shared, "\n".join(shared[0])


def test_the_block_finder_finds_a_shared_block():
    common = [f"x{i} = {i}" for i in range(6)]
    assert shared_blocks(["a = 1", *common], [*common, "b = 2"]) == [tuple(common)]
    assert shared_blocks([*common[:5], "a"], common) == []


@pytest.mark.parametrize(
    "module", ["semsad_jax.evaluation.detector", "semsad_jax.evaluation.score"]
)
def test_inference_loads_no_training_module(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.startswith('semsad_jax.train')); "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]

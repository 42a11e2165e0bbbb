"""pyproject.toml's dependencies are requirements.txt's (and the dev extra requirements-dev.txt's)."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(name: str) -> list[str]:
    with open(os.path.join(ROOT, name)) as f:
        lines = [line.split(" #")[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith(("#", "-r"))]


def test_pyproject_dependencies_equal_requirements_files():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["dependencies"] == _requirements("requirements.txt")
    assert project["optional-dependencies"]["dev"] == _requirements("requirements-dev.txt")
    assert "jax>=0.6" in project["dependencies"]  # the parse found real lines

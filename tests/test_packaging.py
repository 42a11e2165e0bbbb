"""pyproject.toml's ranges, the lock (requirements.txt) and what the package declares.

* the package's dependencies hold no TensorFlow (installing into Colab or a GPU image must leave
  its TensorFlow alone); TensorFlow is the ``tfds`` extra;
* ranges only: every dependency has a lower bound and none an upper bound or a pin;
* the lock pins exact versions, satisfies every range for every Python and platform it covers,
  and names the command that refreshes it.
"""

import os
import re
import tomllib

import pytest

pytest.importorskip("packaging")
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements.txt")
REFRESH = "uv pip compile pyproject.toml --extra tfds --extra dev --universal --python-version 3.11"
# the environments the lock covers (its markers are evaluated in each)
ENVIRONMENTS = [
    {"python_version": py, "python_full_version": f"{py}.0", "platform_machine": machine,
     "sys_platform": system, "platform_system": name, "implementation_name": "cpython",
     "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    for py in ("3.11", "3.12", "3.13")
    for machine, system, name in (("x86_64", "linux", "Linux"), ("aarch64", "linux", "Linux"))
]  # fmt: skip


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["tfds"] + extras["dev"]]


def _lock() -> list[tuple[str, Version, Marker | None]]:
    pins = []
    with open(LOCK) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if not line:
                continue
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"the lock pins exact versions: {line}"
            pins.append((_name(req.name), Version(spec.version), req.marker))
    return pins


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_no_tensorflow_in_the_package_dependencies():
    project = _project()
    names = [_name(Requirement(r).name) for r in project["dependencies"]]
    assert "jax" in names and "tensorflow-datasets" in names  # the parse found real lines
    assert not [n for n in names if n.startswith("tensorflow") and n != "tensorflow-datasets"]
    tfds_extra = [_name(Requirement(r).name) for r in project["optional-dependencies"]["tfds"]]
    assert set(tfds_extra) == {"tensorflow", "tensorflow-cpu"}
    assert project["scripts"] == {"semsad-jax": "semsad_jax.cli:main"}


def test_ranges_have_lower_bounds_and_no_upper_bounds():
    for req in _requirements():
        operators = {s.operator for s in req.specifier}
        assert operators == {">="}, f"{req}: ranges only, a lower bound and no upper bound"


def test_the_lock_satisfies_every_range_everywhere_it_applies():
    pins = _lock()
    assert len(pins) > 50
    for env in ENVIRONMENTS:
        chosen = {name: v for name, v, marker in pins if marker is None or marker.evaluate(env)}
        for req in _requirements():
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = _name(req.name)
            assert name in chosen, f"{name} is not in the lock for {env['python_version']}"
            assert req.specifier.contains(chosen[name], prereleases=True), (
                f"the lock's {name}=={chosen[name]} is outside {req} (Python "
                f"{env['python_version']}, {env['platform_machine']}); refresh it: {REFRESH}"
            )


def test_the_lock_names_its_refresh_command():
    with open(LOCK) as f:
        head = f.read(2000)
    assert REFRESH in head

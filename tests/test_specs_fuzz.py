"""Fuzzing spec strings: parse_spec and load_images raise nothing but SemsadError on bogus input."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from semsad_jax.data import load_images
from semsad_jax.data.specs import KINDS, QUERY_KEYS, Spec, parse_spec
from semsad_jax.errors import SemsadError

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
pieces = st.sampled_from(["", "/", "!", "?", "&", "=", ",", ":", "..", ".", "~", " ", "[:10]"])
words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
query_values = st.one_of(
    words, st.integers(-5, 10**20).map(str), st.sampled_from(["a", "cat,dog", "0,1", "x,,y"])
)
queries = st.lists(
    st.tuples(
        st.sampled_from([*QUERY_KEYS, "bogus", ""]), st.sampled_from(["=", ""]), query_values
    ).map("".join),
    max_size=4,
).map("&".join)


@st.composite
def spec_like(draw):
    kind = draw(st.sampled_from([*KINDS, "FOLDER", "bogus", ""]))
    body = "".join(draw(st.lists(st.one_of(words, pieces), max_size=6)))
    query = draw(st.one_of(st.just(""), queries.map(lambda q: "?" + q)))
    return f"{kind}:{body}{query}"


def _check_parsed(spec: Spec) -> None:
    assert spec.kind in KINDS and isinstance(spec.location, str) and spec.location
    assert set(spec.query) <= set(QUERY_KEYS)
    if spec.limit is not None:
        assert spec.limit > 0
    assert spec.seed >= 0
    for names in (spec.classes, spec.exclude):
        assert names is None or all(names)


@FUZZ
@given(st.one_of(st.text(max_size=60), spec_like()))
def test_parse_spec_only_raises_semsad_error(text):
    try:
        spec = parse_spec(text)
    except SemsadError as err:
        assert "\n" not in str(err) and str(err)
        return
    _check_parsed(spec)
    assert parse_spec(spec.text) == spec  # parsing is a fixed point


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny labelled npz, a small folder, a text file posing as an archive, an empty folder."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    np.savez(
        root / "set.npz",
        images=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8),
        labels=np.arange(12) % 3,
        class_names=np.array(["cat", "dog", "frog"]),
    )
    for cls in ("a", "b"):
        os.makedirs(root / "imgs" / cls)
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(
            root / "imgs" / cls / "x.png"
        )
    (root / "fake.tar.gz").write_text("not an archive")
    (root / "empty").mkdir()
    return root


def _load(spec: str) -> None:
    try:
        got = load_images(spec, 4, cache_dir="none")
    except SemsadError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert got.images.dtype == np.uint8 and got.images.shape[1:] == (4, 4, 3) and len(got)


@FUZZ
@given(
    kind=st.sampled_from(["folder", "archive", "npz"]),
    target=st.sampled_from(["set.npz", "imgs", "fake.tar.gz", "empty", "missing", "imgs/a"]),
    tail=st.lists(st.one_of(words, pieces), max_size=3).map("".join),
    query=st.one_of(st.just(""), queries.map(lambda q: "?" + q)),
)
def test_load_images_on_bogus_specs_only_raises_semsad_error(data_dir, kind, target, tail, query):
    # Every path stays inside data_dir: no '/' or '..' that could climb out of it.
    assume("/" not in tail and ".." not in tail and "~" not in tail)
    _load(f"{kind}:{data_dir / target}{tail}{query}")


@FUZZ
@given(query=queries)
def test_queries_on_real_sources_only_raise_semsad_error(data_dir, query):
    _load(f"npz:{data_dir / 'set.npz'}?{query}")
    _load(f"folder:{data_dir / 'imgs'}?{query}")

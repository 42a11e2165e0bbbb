"""The ``holdout=N&part=fit|holdout`` query: a fixed held-out part of a set, for validation."""

import numpy as np
import pytest

from semsad_jax.configs import far_ood
from semsad_jax.data import load_images
from semsad_jax.data.specs import HOLDOUT_SEED, holdout_mask, parse_spec, select_indices
from semsad_jax.errors import SemsadError

NAMES = list("abcd")
LABELS = np.arange(40) % 4  # ten items per class


def _npz(tmp_path):
    path = tmp_path / "set.npz"
    images = np.random.default_rng(0).integers(0, 256, (40, 5, 5), dtype=np.uint8)
    np.savez(path, images=images, labels=LABELS, class_names=np.array(NAMES))
    return path


def _ids(path, query):
    return [int(i) for i in load_images(f"npz:{path}?{query}", 5, cache_dir="none").ids]


def test_parts_are_disjoint_cover_the_set_and_hold_out_n_per_class(tmp_path):
    path = _npz(tmp_path)
    held, fit = _ids(path, "holdout=3&part=holdout"), _ids(path, "holdout=3&part=fit")
    assert not set(held) & set(fit) and sorted(held + fit) == list(range(40))
    assert held == sorted(held) and fit == sorted(fit)  # source order, as every query keeps
    assert np.bincount(LABELS[held]).tolist() == [3, 3, 3, 3]
    # the fixed rule, independently: the first 3 of each class in the permutation of HOLDOUT_SEED
    order = np.random.default_rng(HOLDOUT_SEED).permutation(40)
    expected = sorted(i for c in range(4) for i in [j for j in order if LABELS[j] == c][:3])
    assert held == expected
    # unlabelled: N of the whole set
    mask = holdout_mask(7, 40, None)
    assert mask.sum() == 7 and np.flatnonzero(mask).tolist() == sorted(order[:7].tolist())


def test_a_class_holds_out_the_same_images_whatever_classes_are_selected(tmp_path):
    path = _npz(tmp_path)
    whole = set(_ids(path, "holdout=4&part=holdout"))
    of_b = {i for i in whole if LABELS[i] == 1}
    for query in ("classes=b", "classes=a,b", "classes=1,d", "exclude=a", "exclude=c,d"):
        got = set(_ids(path, f"{query}&holdout=4&part=holdout"))
        assert {i for i in got if LABELS[i] == 1} == of_b, query
        fit = set(_ids(path, f"{query}&holdout=4&part=fit"))
        assert not fit & whole and fit | got == set(_ids(path, query)), query
    # one-class validation: class b's held-out images against the others' held-out images
    ood = set(_ids(path, "exclude=b&holdout=4&part=holdout"))
    assert ood == whole - of_b


def test_limit_and_seed_apply_after_the_part(tmp_path):
    path = _npz(tmp_path)
    fit = set(_ids(path, "holdout=3&part=fit"))
    draws = [_ids(path, f"holdout=3&part=fit&limit=5&seed={s}") for s in (0, 1, 2)]
    assert all(len(d) == 5 and set(d) <= fit for d in draws)
    assert draws[0] != draws[1] or draws[0] != draws[2]
    assert draws[0] == _ids(path, "holdout=3&part=fit&limit=5")  # seed defaults to 0
    # the seed never moves the held-out images
    assert _ids(path, "holdout=3&part=holdout&seed=5") == _ids(path, "holdout=3&part=holdout")
    assert _ids(path, "holdout=3&part=holdout&limit=100") == _ids(path, "holdout=3&part=holdout")
    spec = parse_spec("npz:x.npz?classes=a&holdout=3&part=fit&limit=2&seed=4")
    assert (spec.holdout, spec.part, spec.limit, spec.seed) == (3, "fit", 2, 4)
    assert parse_spec("npz:x.npz?limit=2").part is None


@pytest.mark.parametrize("name", sorted(far_ood.FAR_OOD))
def test_far_ood_validation_and_report_sets_are_disjoint(name):
    held = load_images(far_ood.specs(10**6, part="holdout")[name], 8, cache_dir="none")
    rest = load_images(far_ood.specs(10**6, part="fit")[name], 8, cache_dir="none")
    assert not set(held.ids) & set(rest.ids)
    whole = load_images(far_ood.FAR_OOD[name], 8, cache_dir="none")
    assert len(held) + len(rest) == len(whole) and set(held.ids) | set(rest.ids) == set(whole.ids)
    assert len(held) == 500  # digits: 50 of each digit
    small = far_ood.specs(20, part="holdout")[name]
    assert "seed=1" in small and set(load_images(small, 8, cache_dir="none").ids) <= set(held.ids)
    assert far_ood.specs(20)[name].endswith("?limit=20")  # the configs' suite is unchanged


def _bad(tmp_path):
    path = _npz(tmp_path)
    return [
        (f"npz:{path}?holdout=3", "go together"),
        (f"npz:{path}?part=fit", "go together"),
        (f"npz:{path}?holdout=3&part=test", "part='test' is not one of fit, holdout"),
        (f"npz:{path}?holdout=0&part=fit", "holdout= must be a positive integer"),
        (f"npz:{path}?holdout=x&part=fit", "not an integer"),
        (f"npz:{path}?holdout=3&part=fit&part=holdout", "twice"),
        (f"npz:{path}?holdout=10&part=fit", "would hold out all 10 images of class 'a'"),
        (f"npz:{path}?classes=c&holdout=10&part=holdout", "of class 'c'; hold out fewer than 10"),
        ("synthetic:noise?holdout=1000&part=holdout", "would hold out all 1000 images of the set"),
    ]


def test_bad_holdout_queries_raise_one_line_errors(tmp_path):
    for spec, fragment in _bad(tmp_path):
        with pytest.raises(SemsadError) as info:
            load_images(spec, 8, cache_dir="none")
        assert fragment in str(info.value) and "\n" not in str(info.value), (spec, info.value)
    # only the selected classes must have more than N images: class 1 has 3, class 0 has 10
    labels = np.array([0] * 10 + [1] * 3)
    spec = parse_spec("npz:x.npz?classes=0&holdout=4&part=holdout")
    got = select_indices(spec, 13, labels, None)
    assert len(got) == 4 and set(got.tolist()) <= set(range(10))

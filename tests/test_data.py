"""Data sources: folders, archives, npz, sklearn digits, tfds (mocked), queries, cache, errors."""

import hashlib
import io
import logging
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from semsad_jax.data import ImageSet, contaminate, imagefiles, images_from_array, load_images
from semsad_jax.data.sources import digits_split_indices
from semsad_jax.data.specs import parse_spec
from semsad_jax.errors import SemsadError

CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.gz")
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
RNG = np.random.default_rng(0)


def _rgb(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, image: Image.Image, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)


def _pil_reference(path, size):
    """Independent reference: PIL open -> RGB -> bilinear resize when the size differs."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img)


@pytest.fixture()
def tree(tmp_path):
    """imgs/{cat,dog}/...: mixed sizes and modes, a zero-byte, a corrupt, a .txt and a hidden file."""
    root = tmp_path / "imgs"
    _save(str(root / "cat" / "a.png"), Image.fromarray(_rgb(8, 8)))
    _save(str(root / "cat" / "b.bmp"), Image.fromarray(_rgb(8, 8)))
    _save(str(root / "cat" / "sub" / "c.jpg"), Image.fromarray(_rgb(10, 12)), "JPEG")
    (root / "cat" / "zero.png").write_bytes(b"")
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    _save(str(root / "dog" / "gray.png"), Image.fromarray(gray, "L"))
    rgba = np.dstack([_rgb(8, 8), np.full((8, 8), 7, np.uint8)])
    _save(str(root / "dog" / "rgba.png"), Image.fromarray(rgba, "RGBA"))
    _save(str(root / "dog" / "pal.gif"), Image.fromarray(_rgb(8, 8)).convert("P"))
    (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")
    return root


GOOD = ["cat/a.png", "cat/b.bmp", "cat/sub/c.jpg", "dog/gray.png", "dog/pal.gif", "dog/rgba.png"]


def test_folder_order_labels_modes_and_resize(tree, caplog):
    with caplog.at_level(logging.WARNING):
        got = load_images(f"folder:{tree}", 8, cache_dir="none")
    assert isinstance(got, ImageSet) and len(got) == 6
    assert got.images.dtype == np.uint8 and got.images.shape == (6, 8, 8, 3)
    assert got.ids == GOOD and got.class_names == ["cat", "dog"]
    assert got.labels.dtype == np.int32 and got.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for image, rel in zip(got.images, got.ids):
        np.testing.assert_array_equal(image, _pil_reference(tree / rel, 8), err_msg=rel)
    # Same-size RGB untouched; gray repeated; alpha dropped.
    np.testing.assert_array_equal(got.images[0], np.asarray(Image.open(tree / "cat/a.png")))
    gray = np.asarray(Image.open(tree / "dog/gray.png"))
    np.testing.assert_array_equal(got.images[3], np.stack([gray] * 3, -1))
    rgba = np.asarray(Image.open(tree / "dog/rgba.png"))
    np.testing.assert_array_equal(got.images[5], rgba[..., :3])
    assert "skipped 2 unreadable" in caplog.text and "zero.png" in caplog.text
    assert "bad.jpg" in caplog.text and "notes.txt" not in caplog.text


def test_folder_on_corrupt_error_names_the_file(tree):
    with pytest.raises(SemsadError, match=r"zero\.png") as info:
        load_images(f"folder:{tree}", 8, cache_dir="none", on_corrupt="error")
    assert "\n" not in str(info.value)


def test_sixteen_bit_and_big_jpeg(tmp_path):
    values = np.array([[0, 32768, 65535, 257]] * 4, np.uint16)
    _save(str(tmp_path / "d" / "deep.png"), Image.fromarray(values))
    big = _rgb(64, 48)
    _save(str(tmp_path / "d" / "big.jpg"), Image.fromarray(big), "JPEG")
    got = load_images(f"folder:{tmp_path}?classes=0", 4, cache_dir="none")
    assert got.ids == ["d/big.jpg", "d/deep.png"] and got.class_names == ["d"]
    np.testing.assert_array_equal(got.images[1, 0, :, 0], [0, 128, 255, 1])
    # The big JPEG is decoded at a reduced DCT scale: close to, not equal to, the full decode.
    assert np.abs(got.images[0].astype(int) - _pil_reference(tmp_path / "d/big.jpg", 4)).mean() < 8


def test_unlabelled_and_mixed_layouts(tmp_path, caplog):
    flat = tmp_path / "flat"
    for name in ("b.png", "a.png", "c.PNG"):
        _save(str(flat / name), Image.fromarray(_rgb(6, 6)))
    got = load_images(f"folder:{flat}", 6, cache_dir="none")
    assert got.ids == ["a.png", "b.png", "c.PNG"] and got.labels is None and got.class_names is None
    _save(str(flat / "cls" / "d.png"), Image.fromarray(_rgb(6, 6)))
    with caplog.at_level(logging.WARNING):
        mixed = load_images(f"folder:{flat}", 6, cache_dir="none")
    assert len(mixed) == 4 and mixed.labels is None and "unlabelled" in caplog.text
    with pytest.raises(SemsadError, match="need labels"):
        load_images(f"folder:{flat}?classes=cls", 6, cache_dir="none")


def _tar(tree, path, prefix):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname=prefix)


def test_archives_match_folder(tree, tmp_path):
    folder = load_images(f"folder:{tree}", 8, cache_dir="none")
    tgz = tmp_path / "x.tgz"
    _tar(tree, tgz, "./train")
    from_tar = load_images(f"archive:{tgz}!train", 8, cache_dir="none")
    zpath = tmp_path / "x.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for dirpath, _, files in os.walk(tree):
            for name in files:
                full = os.path.join(dirpath, name)
                zf.write(full, "test/" + os.path.relpath(full, tree))
    from_zip = load_images(f"archive:{zpath}!test/", 8, cache_dir="none")
    for got, prefix in ((from_tar, "train/"), (from_zip, "test/")):
        np.testing.assert_array_equal(got.images, folder.images)
        np.testing.assert_array_equal(got.labels, folder.labels)
        assert got.class_names == ["cat", "dog"] and got.ids == [prefix + i for i in GOOD]
    whole = load_images(f"archive:{zpath}", 8, cache_dir="none")
    assert whole.class_names == ["test"] and len(whole) == 6
    with pytest.raises(SemsadError, match=r"no folder 'val'.*top-level folders: test"):
        load_images(f"archive:{zpath}!val", 8, cache_dir="none")
    with pytest.raises(SemsadError, match=r"dog/bad\.jpg"):
        load_images(f"archive:{tgz}!train/dog", 8, cache_dir="none", on_corrupt="error")


@pytest.mark.parametrize("mode", ["w", "w:bz2", "w:xz"])
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_formats_long_names_links_and_truncation(tmp_path, mode, fmt):
    long = "c/" + "x" * 120 + "/" + "é" * 70 + ".png"  # needs GNU long-name or pax records
    names = ["a/1.png", "a/__MACOSX/2.png", "a/.3.png", "b/" + "q" * 90 + "/r.png", long]
    path = tmp_path / "t.tar"
    with tarfile.open(path, mode, format=fmt) as tar:
        for name in names:
            data = io.BytesIO()
            Image.fromarray(_rgb(3, 3)).save(data, format="PNG")
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))
        link = tarfile.TarInfo("a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "1.png"
        tar.addfile(link)
    got = load_images(f"archive:{path}", 3, cache_dir="none")
    assert got.ids == ["a/1.png", names[3], long] and got.class_names == ["a", "b", "c"]
    with tarfile.open(path) as tar:
        for image, name in zip(got.images, got.ids):
            reference = Image.open(tar.extractfile(name)).convert("RGB")
            np.testing.assert_array_equal(image, np.asarray(reference))
    # Truncated: inside the last member's data (plain tar) or mid-stream (compressed).
    with tarfile.open(path) as tar:
        end = tar.getmember(long).offset_data + 10 if mode == "w" else path.stat().st_size // 2
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:end])
    with pytest.raises(SemsadError, match=r"cannot read archive|cannot read image .*EOFError"):
        load_images(f"archive:{cut}", 3, cache_dir="none", on_corrupt="error")


def _npz(tmp_path, n=40, **extra):
    images = RNG.integers(0, 256, (n, 5, 5), dtype=np.uint8)
    labels = np.arange(n) % 4
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(list("abcd")), **extra)
    return path, images, labels


def test_npz_and_queries(tmp_path):
    path, images, labels = _npz(tmp_path)
    got = load_images(f"npz:{path}", 5, cache_dir="none")
    np.testing.assert_array_equal(got.images, np.repeat(images[..., None], 3, -1))
    assert got.labels.tolist() == labels.tolist() and got.class_names == list("abcd")
    assert got.ids == [str(i) for i in range(40)]

    def ids(query):
        return [int(i) for i in load_images(f"npz:{path}?{query}", 5, cache_dir="none").ids]

    every = np.arange(40)
    assert ids("classes=b,d") == every[labels % 2 == 1].tolist()
    assert ids("classes=1,d") == ids("classes=b,3")
    kept = load_images(f"npz:{path}?classes=c", 5, cache_dir="none")
    assert set(kept.labels.tolist()) == {2} and kept.class_names == list("abcd")  # original indices
    assert ids("exclude=a") == every[labels != 0].tolist()
    assert ids("classes=a,b&exclude=b") == every[labels == 0].tolist()
    limited = ids("limit=7")
    assert (
        limited == sorted(limited) and len(set(limited)) == 7 and limited == ids("limit=7&seed=0")
    )
    assert limited != ids("limit=7&seed=1")
    combo = ids("exclude=a&limit=5&seed=3")
    assert len(combo) == 5 and all(labels[i] != 0 for i in combo)
    assert ids("limit=1000") == every.tolist()
    with pytest.raises(
        SemsadError, match=r"'zebra' is not in this source; available classes: a, b"
    ):
        load_images(f"npz:{path}?classes=zebra", 5, cache_dir="none")
    with pytest.raises(SemsadError, match="selects no images"):
        load_images(f"npz:{path}?classes=a&exclude=a", 5, cache_dir="none")


def test_images_from_array_conversions():
    gray = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    out = images_from_array(gray, 4)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(images_from_array(gray[..., None], 4), out)
    rgba = RNG.integers(0, 256, (2, 4, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(images_from_array(rgba, 4), rgba[..., :3])
    np.testing.assert_array_equal(images_from_array(rgba / 255.0, 4), rgba[..., :3])
    np.testing.assert_array_equal(images_from_array(rgba.astype(np.float32), 4), rgba[..., :3])
    np.testing.assert_array_equal(images_from_array(rgba.astype(np.uint16) * 257, 4), rgba[..., :3])
    rgb = RNG.integers(0, 256, (2, 7, 5, 3), dtype=np.uint8)
    ref = [np.asarray(Image.fromarray(x).resize((6, 6), Image.Resampling.BILINEAR)) for x in rgb]
    np.testing.assert_array_equal(images_from_array(rgb, 6), np.stack(ref))
    for bad in (np.zeros((4, 4)), np.zeros((1, 4, 4, 2)), np.zeros((1, 0, 4, 3))):
        with pytest.raises(SemsadError, match="shape"):
            images_from_array(bad, 4)
    with pytest.raises(SemsadError, match="NaN"):
        images_from_array(np.full((1, 2, 2), np.nan), 2)
    with pytest.raises(SemsadError, match="image_size"):
        images_from_array(gray, 0)


def test_cache_hit_and_invalidation(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    spec = f"folder:{tree}?limit=4"
    first = load_images(spec, 8, cache_dir=str(cache))
    names = sorted(os.listdir(cache))
    assert len(names) == 2 and names[0].endswith(".images.npy") and names[1].endswith(".npz")
    assert isinstance(first.images, np.memmap)  # the decoded copy is dropped for the mapped one

    def broken(*args):
        raise AssertionError("decoder called although the cache should answer")

    monkeypatch.setattr(imagefiles, "decode_image", broken)
    again = load_images(spec, 8, cache_dir=str(cache))
    np.testing.assert_array_equal(again.images, first.images)
    assert again.ids == first.ids and again.labels.tolist() == first.labels.tolist()
    assert again.class_names == first.class_names and again.spec == spec
    monkeypatch.setenv("SEMSAD_CACHE", str(cache))
    assert load_images(spec, 8).ids == first.ids  # cache dir from the environment
    # A changed file invalidates the entry: the (broken) decoder is called again.
    changed = tree / first.ids[0]
    Image.fromarray(_rgb(8, 8)).save(changed, format="PNG")
    os.utime(changed, ns=(1, 1))
    with pytest.raises(SemsadError, match="none of the"):
        load_images(spec, 8, cache_dir=str(cache))
    monkeypatch.undo()
    fresh = load_images(spec, 8, cache_dir=str(cache))
    np.testing.assert_array_equal(fresh.images[0], _pil_reference(changed, 8))
    assert not [n for n in os.listdir(cache) if ".tmp" in n]
    load_images(spec, 8, cache_dir="none")
    assert len(os.listdir(cache)) == 4  # two entries (the changed file's is new), two files each


def test_cache_images_are_memory_mapped_and_old_entries_still_read(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    spec = f"folder:{tree}?limit=4"
    first = load_images(spec, 8, cache_dir=str(cache))
    entry = str(next(cache.glob("*.npz")))
    images_path = next(cache.glob("*.images.npy"))
    # decoded straight into the file; the 2 unreadable images of 4 were compacted away at its end
    stored = np.load(images_path, mmap_mode="r")
    assert len(first) == 2 and stored.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(stored[:2], first.images)
    # An entry of the old layout (images inside the .npz) is read, then rewritten in the new one.
    with np.load(entry) as npz:
        old = {k: npz[k] for k in npz.files}
    np.savez(entry, images=np.asarray(first.images), **old)
    images_path.unlink()
    monkeypatch.setattr(imagefiles, "decode_image", lambda *a: 1 / 0)  # the cache must answer
    again = load_images(spec, 8, cache_dir=str(cache))
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    np.testing.assert_array_equal(again.images, first.images)
    with np.load(entry) as npz:
        assert "images" not in npz.files and list(npz["ids"]) == first.ids
    assert images_path.exists()
    # A missing images file makes the entry unreadable: rebuilt (here the decoder fails: 1 / 0).
    images_path.unlink()
    with pytest.raises(SemsadError, match="ZeroDivisionError"):
        load_images(spec, 8, cache_dir=str(cache))
    assert not [n for n in os.listdir(cache) if ".tmp" in n]  # the failed decode left no file


def test_archive_cache_invalidated_by_new_archive(tree, tmp_path, monkeypatch):
    cache, tgz = str(tmp_path / "cache"), tmp_path / "x.tar.gz"
    _tar(tree / "cat", tgz, "cat")
    assert len(load_images(f"archive:{tgz}", 8, cache_dir=cache)) == 3
    monkeypatch.setattr(imagefiles, "decode_image", lambda *a: 1 / 0)
    assert len(load_images(f"archive:{tgz}", 8, cache_dir=cache)) == 3
    monkeypatch.undo()
    _tar(tree / "dog", tgz, "dog")
    os.utime(tgz, ns=(5, 5))
    assert load_images(f"archive:{tgz}", 8, cache_dir=cache).class_names == ["dog"]


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    notarc = tmp_path / "notarc.tar.gz"
    notarc.write_text("plain text")
    allbad = tmp_path / "allbad"
    allbad.mkdir()
    (allbad / "x.png").write_bytes(b"")
    scalar = tmp_path / "scalar.npz"
    np.savez(scalar, images=np.array(5), labels=np.array(1))
    noimages = tmp_path / "noimages.npz"
    np.savez(noimages, pixels=np.zeros((2, 2, 2)))
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 5]),
             class_names=np.array(["a", "b"]))  # fmt: skip
    return [
        (f"folder:{tmp_path}/missing", "does not exist"),
        (f"folder:{empty}", "no images"),
        (f"folder:{texts}", "no images"),
        (f"folder:{notarc}", "not a folder"),
        (f"folder:{allbad}", "none of the 1 images"),
        (f"archive:{tmp_path}/missing.zip", "does not exist"),
        (f"archive:{notarc}", "cannot read archive"),
        (f"archive:{empty}", "not a file"),
        (f"npz:{tmp_path}/missing.npz", "does not exist"),
        (f"npz:{noimages}", "no 'images' array"),
        (f"npz:{notarc}", "cannot read npz"),
        (f"npz:{labelled}", "out of range"),
        (f"npz:{scalar}", "expected [N, H, W]"),
        ("pictures:/x", "unknown source kind"),
        ("no colon at all", "unknown source kind"),
        (f"folder:{empty}?limit", "not key=value"),
        (f"folder:{empty}?size=3", "unknown query key 'size'"),
        (f"folder:{empty}?limit=0", "positive"),
        (f"folder:{empty}?limit=-1", "integer"),
        (f"folder:{empty}?limit=ten", "integer"),
        (f"folder:{empty}?seed=1&seed=2", "twice"),
        ("tfds:cifar10", "tfds:NAME/SPLIT"),
        ("sklearn:iris", "unknown sklearn dataset"),
        ("sklearn:digits/val", "unknown split"),
        ("sklearn:digits?classes=7,x", "'x' is not in this source; available classes: 0, 1"),
    ]


def test_bad_inputs_raise_one_line_semsad_errors(tmp_path):
    for spec, fragment in _bad_inputs(tmp_path):
        with pytest.raises(SemsadError) as info:
            load_images(spec, 8, cache_dir="none")
        message = str(info.value)
        assert fragment in message and "\n" not in message, (spec, message)
    for kwargs in ({"on_corrupt": "ignore"},):
        with pytest.raises(SemsadError, match="on_corrupt"):
            load_images("sklearn:digits", 8, cache_dir="none", **kwargs)
    with pytest.raises(SemsadError, match="image_size"):
        load_images("sklearn:digits", 2.5, cache_dir="none")


def test_sklearn_digits_and_fixed_split():
    from sklearn.datasets import load_digits

    reference = load_digits()
    full = load_images("sklearn:digits", 8, cache_dir="none")
    assert full.images.shape == (1797, 8, 8, 3) and full.images.max() == 255
    np.testing.assert_array_equal(full.images[..., 1], np.rint(reference.images * 255 / 16))
    np.testing.assert_array_equal(full.labels, reference.target)
    assert full.class_names == [str(i) for i in range(10)]
    train = load_images("sklearn:digits/train", 16, cache_dir="none")
    test = load_images("sklearn:digits/test", 16, cache_dir="none")
    assert (len(train), len(test)) == (1438, 359) and test.images.shape == (359, 16, 16, 3)
    train_ids, test_ids = {int(i) for i in train.ids}, {int(i) for i in test.ids}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1797
    counts = np.bincount(reference.target)
    assert np.bincount(test.labels).tolist() == [round(0.2 * c) for c in counts]
    np.testing.assert_array_equal(test.labels, reference.target[sorted(test_ids)])
    # Pinned: the split must never change.
    assert test.ids[:10] == ["3", "7", "13", "19", "36", "38", "43", "48", "53", "55"]
    assert hashlib.sha256(",".join(test.ids).encode()).hexdigest()[:16] == "ce074941173aae7d"
    np.testing.assert_array_equal(digits_split_indices(reference.target, "test"), sorted(test_ids))


def test_tfds_mocked_never_downloads(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download a dataset")

    for name in ("download", "download_and_extract", "extract", "download_kaggle_data"):
        monkeypatch.setattr(tfds.download.DownloadManager, name, no_network, raising=False)
    # mock_data fakes the preparation but not is_prepared(): skip the reachability probe
    monkeypatch.setattr("semsad_jax.data.tfds_source._check_network", lambda *args: None)
    with tfds.testing.mock_data(num_examples=6):
        got = load_images("tfds:cifar10/train", 16, cache_dir="none")
        names = tfds.builder("cifar10").info.features["label"].names  # '0'..'9' when mocked
        assert got.images.shape == (6, 16, 16, 3) and got.images.dtype == np.uint8
        assert got.class_names == names and got.labels.dtype == np.int32
        assert got.labels.min() >= 0 and got.labels.max() < 10 and got.ids[0] == "0"
        gray = load_images("tfds:mnist/test?limit=4", 28, cache_dir="none")
        assert gray.images.shape == (4, 28, 28, 3)
        np.testing.assert_array_equal(gray.images[..., 0], gray.images[..., 2])
        with pytest.raises(SemsadError, match="tfds could not load"):
            load_images("tfds:no_such_dataset_xyz/train", 8, cache_dir="none")


@pytest.mark.skipif(
    not os.path.exists(CIFAR),
    reason="../shared/data/cifar10-jpeg.tar.gz (beside the repository) is absent",
)
def test_real_cifar_archive_subset():
    got = load_images(f"archive:{CIFAR}!train?limit=300&seed=2", 32, cache_dir="none")
    assert len(got) == 300 and got.images.shape == (300, 32, 32, 3)
    assert got.class_names == CIFAR_CLASSES and got.ids == sorted(got.ids)
    assert all(i.startswith(f"train/{CIFAR_CLASSES[lab]}/") for i, lab in zip(got.ids, got.labels))
    assert len(set(got.labels.tolist())) == 10
    # Reference: tarfile + PIL for the first airplanes (early in the archive: a short stream read).
    wanted = {i: k for k, i in enumerate(got.ids) if i.startswith("train/airplane/")}
    assert len(wanted) > 10
    with tarfile.open(CIFAR, "r|gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted:
                data = tar.extractfile(member).read()
                reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                np.testing.assert_array_equal(got.images[wanted.pop(name)], reference)
                if not wanted:
                    break
    assert not wanted


def _set(n, value, spec):
    images = np.full((n, 4, 4, 3), value, np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return ImageSet(images, np.arange(n, dtype=np.int32) % 3, ["x", "y", "z"], spec,
                    [str(i) for i in range(n)])  # fmt: skip


def test_contaminate():
    clean, outliers = _set(20, 10, "clean"), _set(9, 200, "out")
    mixed = contaminate(clean, outliers, 0.2, seed=1)
    assert len(mixed) == 25 and mixed.is_outlier.dtype == bool and mixed.is_outlier.sum() == 5
    np.testing.assert_array_equal(mixed.images[mixed.is_outlier, 1, 1, 0], 200)
    np.testing.assert_array_equal(np.sort(mixed.images[~mixed.is_outlier, 0, 0, 0]), np.arange(20))
    assert mixed.labels is None and len(mixed.ids) == 25
    assert sum(i.startswith("outlier:") for i in mixed.ids) == 5
    assert not np.array_equal(mixed.is_outlier, np.sort(mixed.is_outlier))  # shuffled
    again = contaminate(clean, outliers, 0.2, seed=1)
    np.testing.assert_array_equal(again.images, mixed.images)
    assert again.ids == mixed.ids
    assert contaminate(clean, outliers, 0.2, seed=2).ids != mixed.ids
    none = contaminate(clean, outliers, 0.0, seed=1)
    assert none.ids == clean.ids and not none.is_outlier.any()
    with pytest.raises(SemsadError, match="needs 20 outlier images"):
        contaminate(clean, outliers, 0.5, seed=0)
    with pytest.raises(SemsadError, match=r"\[0, 1\)"):
        contaminate(clean, outliers, 1.0, seed=0)


def test_parse_spec_fields():
    spec = parse_spec(" archive:~/c10.tar.gz!./train/?classes=cat,1&seed=3 ")
    assert (spec.kind, spec.subdir, spec.classes, spec.seed, spec.limit) == (
        "archive", "train", ["cat", "1"], 3, None,
    )  # fmt: skip
    assert spec.location == os.path.expanduser("~/c10.tar.gz")
    sliced = parse_spec("tfds:cifar10/train[:1000]?limit=5")
    assert (sliced.location, sliced.split, sliced.limit) == ("cifar10", "train[:1000]", 5)
    assert parse_spec("tfds:imagenet2012_subset/1pct/train").location == "imagenet2012_subset/1pct"


@pytest.mark.parametrize(
    "name", ["noise", "constant", "blobs", "stripes", "checkerboard", "shapes", "text"]
)
def test_synthetic_far_ood_sets_are_deterministic(name):
    first = load_images(f"synthetic:{name}", 16, cache_dir="none")
    again = load_images(f"synthetic:{name}?limit=10&seed=3", 16, cache_dir="none")
    assert first.images.shape == (1000, 16, 16, 3) and first.images.dtype == np.uint8
    assert first.labels is None and len(again) == 10
    np.testing.assert_array_equal(again.images, first.images[[int(i) for i in again.ids]])
    per_pixel = first.images.reshape(1000, -1, 3).std(axis=1).max(axis=1)  # spread over pixels
    if name == "constant":
        assert np.all(per_pixel == 0)
    else:
        assert np.mean(per_pixel > 5) > 0.9  # images with structure
    assert len({im.tobytes() for im in first.images}) > 900  # distinct images


def test_sample_image_crops_and_spec_errors():
    crops = load_images("sklearn:sample_images?limit=20", 16, cache_dir="none")
    assert crops.images.shape == (20, 16, 16, 3) and crops.images.std() > 10
    with pytest.raises(SemsadError, match="unknown synthetic set"):
        parse_spec("synthetic:sunsets")
    with pytest.raises(SemsadError, match="unknown split"):
        parse_spec("sklearn:sample_images/train")

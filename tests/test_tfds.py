"""tfds: sources run TFDS's real code: prepared as array_record, read without TensorFlow, offline.

No ``tfds.testing.mock_data``: a tiny real builder (tests/tfds_tiny_builder.py) and the real
``cifar10`` builder prepare their data with TFDS's own ``download_and_prepare``. The network is
blocked in every test (a regression fails fast instead of downloading); the only thing replaced in
TFDS is cifar10's registered checksum, pointed at the small archive the test writes.
"""

import glob
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import tfds_tiny_builder as tiny  # noqa: E402  registers the builder
from helpers import config  # noqa: E402

from semsad_jax.data import images_from_array, load_images  # noqa: E402
from semsad_jax.errors import SemsadError  # noqa: E402
from semsad_jax.run import run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]  # fmt: skip
# Run first in the subprocesses: TensorFlow is not installed there, as far as imports can tell
# (TFDS reads `"tensorflow" in sys.modules`, so sys.modules["tensorflow"] = None would not do), and
# the network is blocked.
_NO_TF_NO_NETWORK = """
import importlib.machinery, socket, sys

class _HideTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [
    _HideTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]

def _refuse(*args, **kwargs):
    raise OSError("network blocked by the test")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = _refuse
"""


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once; returns the list of attempted addresses, with the
    Google Cloud Storage paths TFDS looked up (through TensorFlow's file system, not Python's
    sockets)."""
    from tensorflow_datasets.core.utils import gcs_utils

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1] if args and isinstance(args[0], socket.socket) else args[0])
        raise OSError("network blocked by the test")

    def no_gcs(path):
        attempts.append(f"GCS {path}")
        return False

    monkeypatch.setattr(gcs_utils, "exists", no_gcs)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("TFDS_MANUAL_DIR", raising=False)
    return attempts


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """A data_dir shared by the tests of the tiny builder (prepared by whichever loads it first)."""
    return str(tmp_path_factory.mktemp("tfds_data"))


def _tiny(split: str, image_size: int = 8):
    return load_images(f"tfds:{tiny.NAME}/{split}", image_size, cache_dir="none")


def _pairs(images, labels) -> list[tuple[bytes, int]]:
    return sorted((np.ascontiguousarray(i).tobytes(), int(lab)) for i, lab in zip(images, labels))


def _expected(examples, image_size: int) -> list[tuple[bytes, int]]:
    """What load_images must return for generated ``examples``, in any order (TFDS shuffles)."""
    images = [images_from_array(image[None], image_size)[0] for image, _ in examples]
    return _pairs(images, [label for _, label in examples])


def test_tiny_builder_is_prepared_as_array_record_with_exact_images(
    tiny_dir, monkeypatch, no_network
):
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)
    train = _tiny("train")
    shards = glob.glob(os.path.join(tiny_dir, tiny.NAME, "1.0.0", "*.array_record-*"))
    assert {os.path.basename(p).split(".")[0] for p in shards} == {
        f"{tiny.NAME}-train",
        f"{tiny.NAME}-test",
    }
    assert not glob.glob(os.path.join(tiny_dir, tiny.NAME, "1.0.0", "*.tfrecord*"))
    assert train.images.shape == (48, 8, 8, 3) and train.images.dtype == np.uint8
    assert train.class_names == tiny.CLASS_NAMES
    assert _pairs(train.images, train.labels) == _expected(tiny.examples("train"), 8)
    # a split slice, and another image size (10x6 and 8x8 images resized one at a time)
    test = _tiny("test", 12)
    part = _tiny("test[:5]", 12)
    np.testing.assert_array_equal(part.images, test.images[:5])
    np.testing.assert_array_equal(part.labels, test.labels[:5])
    assert _pairs(test.images, test.labels) == _expected(tiny.examples("test"), 12)
    assert no_network == []  # nothing tried the network (no GCS, no download)


def test_prepared_data_reads_without_tensorflow(tiny_dir, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)
    expected = _tiny("train")  # prepares it when this test runs alone
    tfrecord_dir = str(tmp_path / "tfrecord")  # as plain tfds.load would have prepared it
    tfds.builder(tiny.NAME, data_dir=tfrecord_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    assert glob.glob(os.path.join(tfrecord_dir, tiny.NAME, "1.0.0", "*.tfrecord-*"))
    monkeypatch.setenv("TFDS_DATA_DIR", tfrecord_dir)
    from_tfrecord = _tiny("train")  # through tf.data, TensorFlow being here
    assert _pairs(from_tfrecord.images, from_tfrecord.labels) == _pairs(
        expected.images, expected.labels
    )
    script = _NO_TF_NO_NETWORK + textwrap.dedent(f"""
        import os
        import numpy as np
        import tfds_tiny_builder
        from semsad_jax.data import load_images
        from semsad_jax.errors import SemsadError

        loaded = load_images("tfds:{tiny.NAME}/train", 8, cache_dir="none")
        np.savez({str(tmp_path / "read.npz")!r}, images=loaded.images, labels=loaded.labels,
                 names=np.asarray(loaded.class_names))
        for data_dir in ({str(tmp_path / "empty")!r}, {tfrecord_dir!r}):
            os.environ["TFDS_DATA_DIR"] = data_dir
            try:
                load_images("tfds:{tiny.NAME}/train", 8, cache_dir="none")
            except SemsadError as err:
                print("SemsadError:", err)
        assert "tensorflow" not in sys.modules
    """)
    env = dict(os.environ, TFDS_DATA_DIR=tiny_dir, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(tmp_path / "read.npz") as read:
        np.testing.assert_array_equal(read["images"], expected.images)  # same images, same order
        np.testing.assert_array_equal(read["labels"], expected.labels)
        assert read["names"].tolist() == tiny.CLASS_NAMES
    errors = [line for line in out.stdout.splitlines() if line.startswith("SemsadError:")]
    assert len(errors) == 2, out.stdout[-3000:]
    unprepared, tfrecord = errors
    assert f"preparing tfds dataset {tiny.NAME} needs TensorFlow" in unprepared
    assert "pip install 'semsad-jax[tfds]'" in unprepared
    assert "tfrecord format" in tfrecord and "pip install" in tfrecord


def test_smoke_training_on_tfds_specs(tiny_dir, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)
    c = config()
    c.data.train = f"tfds:{tiny.NAME}/train"
    c.data.test = f"tfds:{tiny.NAME}/test"
    c.encoder.epochs = 1
    run(c, str(tmp_path), "encoder")
    stage = json.loads((tmp_path / "encoder" / "stage.json").read_text())
    assert stage["finished"] is True


def _tfds_version() -> tuple[int, ...]:
    return tuple(int(part) for part in tfds.__version__.split(".")[:3] if part.isdigit())


def _cifar10_archive(path, rng) -> dict[str, list[tuple[np.ndarray, int]]]:
    """A small cifar-10-binary.tar.gz in the real layout; returns the (image, label) it holds."""
    records = {f"data_batch_{i}.bin": 3 for i in range(1, 6)} | {"test_batch.bin": 10}
    written = {}
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))

        add("batches.meta.txt", ("\n".join(CIFAR10_NAMES) + "\n\n").encode())
        for name, count in records.items():
            examples = [
                (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), int(rng.integers(10)))
                for _ in range(count)
            ]
            # each record: 1 label byte, then the R, G and B planes of 32x32 bytes
            add(
                name,
                b"".join(bytes([lab]) + im.transpose(2, 0, 1).tobytes() for im, lab in examples),
            )
            written[name] = examples
    return written


def test_cifar10_builder_prepares_offline_from_the_manual_dir(tmp_path, monkeypatch, no_network):
    from tensorflow_datasets.core.download.checksums import UrlInfo
    from tensorflow_datasets.image_classification import cifar

    data_dir = tmp_path / "data"
    manual = data_dir / "downloads" / "manual"
    manual.mkdir(parents=True)
    archive = manual / "cifar-10-binary.tar.gz"
    written = _cifar10_archive(archive, np.random.default_rng(0))
    payload = archive.read_bytes()
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    if _tfds_version() >= (4, 9, 7):  # from 4.9.7 TFDS checks manual files against its checksums
        with pytest.raises(SemsadError, match="does not match TFDS's registered checksum"):
            load_images("tfds:cifar10/test[:10]", 16, cache_dir="none")
    # The only change to TFDS: its registered checksum of the real 170 MB archive -> this file's.
    local = UrlInfo(
        size=tfds.core.units.Size(len(payload)),
        checksum=hashlib.sha256(payload).hexdigest(),
        filename=archive.name,
    )
    monkeypatch.setattr(cifar.Cifar10, "url_infos", {CIFAR10_URL: local})

    loaded = load_images("tfds:cifar10/test[:10]", 16, cache_dir="none")
    assert len(loaded) == 10 and loaded.class_names == CIFAR10_NAMES
    assert _pairs(loaded.images, loaded.labels) == _expected(written["test_batch.bin"], 16)
    full = load_images("tfds:cifar10/test", 32, cache_dir="none")  # the pixels exactly as written
    first = next(
        im for im, _ in written["test_batch.bin"] if im.tobytes() == full.images[0].tobytes()
    )
    np.testing.assert_array_equal(full.images[0], first)
    assert _pairs(full.images, full.labels) == _expected(written["test_batch.bin"], 32)
    train = load_images("tfds:cifar10/train", 32, cache_dir="none")
    train_written = [e for i in range(1, 6) for e in written[f"data_batch_{i}.bin"]]
    assert _pairs(train.images, train.labels) == _expected(train_written, 32)
    assert glob.glob(str(data_dir / "cifar10" / "3.0.2" / "cifar10-test.array_record-*"))
    assert no_network == []


def test_cifar10_without_network_fails_fast_in_one_line(tmp_path, monkeypatch, no_network):
    manual = tmp_path / "manual"
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TFDS_MANUAL_DIR", str(manual))
    start = time.monotonic()
    with pytest.raises(SemsadError) as err:
        load_images("tfds:cifar10/test[:10]", 16, cache_dir="none")
    message = str(err.value)
    assert time.monotonic() - start < 20, message
    assert "\n" not in message and message.startswith("tfds could not download cifar10")
    assert "no network?" in message and "cifar-10-binary.tar.gz" in message
    assert str(manual) in message and CIFAR10_URL in message
    assert no_network  # it tried, once, and gave up at once


def test_unknown_dataset_is_one_line(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(
        SemsadError, match=r"tfds could not load no_such_set/train .*check the name"
    ):
        load_images("tfds:no_such_set/train", 8, cache_dir="none")

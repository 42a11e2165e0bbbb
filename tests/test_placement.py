"""data.placement: the host feed gives the device path's batches bit for bit, so both stages end with
identical parameters; a host-placed stage resumes exactly; ``auto`` picks by device memory; pages
of a memory-mapped set do not stay resident."""

import os
import shutil
import signal
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import (
    init_state,
    load_discriminator,
    load_encoder,
    load_train_set,
    train_discriminator,
    train_encoder,
)

from semsad_jax import parallel
from semsad_jax.configs import smoke
from semsad_jax.errors import SemsadError
from semsad_jax.train import discriminator as disc_stage
from semsad_jax.train import encoder as encoder_stage
from semsad_jax.train import step as steps
from semsad_jax.train.loop import Interrupted
from semsad_jax.train.step import StepSetup

STAGES = {"encoder": encoder_stage, "discriminator": disc_stage}
NUM_STEPS = 6  # the smoke set has 4 batches per pass: the steps cross into the second pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The smoke training images as a memory-mapped .npy (what the decoded-data cache returns),
    and a neighbour table."""
    images = load_train_set(smoke.get_config()).images
    path = tmp_path_factory.mktemp("mapped") / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    n = len(images)
    rng = np.random.default_rng(0)
    neighbours = np.stack(
        [rng.choice(np.delete(np.arange(n), i), 4, replace=False) for i in range(n)]
    ).astype(np.int32)
    return types.SimpleNamespace(images=images, mapped=mapped, neighbours=neighbours)


def _setup(kind, config, num_images, mesh, placement):
    spe = num_images // int(config[kind].batch_size)
    graphdef, tx, state = init_state(kind, config, spe, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    setup = StepSetup(
        graphdef, tx, shardings, config[kind], num_images, mesh, config.seed, placement=placement
    )
    return setup, state


def _train_steps(kind, images, neighbours, placement):
    config, mesh = smoke.get_config(), parallel.make_mesh()
    setup, state = _setup(kind, config, len(images), mesh, placement)
    stage = STAGES[kind]
    extra = (neighbours,) if kind == "discriminator" else ()
    step = stage.bound_train_step(setup, images, *extra)
    losses = []
    for i in range(NUM_STEPS):
        state, metrics = step(state, np.int32(i))
        losses.append(float(metrics["loss"]))
    step.close()
    return parallel.to_host(state), losses


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_host_and_device_placement_give_identical_parameters(kind, data):
    on_device, losses_device = _train_steps(kind, data.images, data.neighbours, "device")
    on_host, losses_host = _train_steps(kind, data.mapped, data.neighbours, "host")
    assert losses_device == losses_host
    leaves = jax.tree.leaves(on_device)
    assert len(leaves) == len(jax.tree.leaves(on_host)) > 0
    for a, b in zip(leaves, jax.tree.leaves(on_host)):
        np.testing.assert_array_equal(a, b)
    initial = parallel.to_host(_setup(kind, smoke.get_config(), 64, parallel.make_mesh(), "d")[1])
    moved = [np.abs(a - b).max() for a, b in zip(leaves, jax.tree.leaves(initial))]
    assert max(moved) > 0  # the steps trained something


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_host_feed_rows_are_the_rows_the_device_step_gathers(kind, data):
    """Each step's rows from the host feed (prefetched, or out of order) equal the device gather."""
    config, mesh = smoke.get_config(), parallel.make_mesh()
    setup, _ = _setup(kind, config, len(data.images), mesh, "device")
    row_indices = STAGES[kind].row_indices(setup)
    extra = (data.neighbours,) if kind == "discriminator" else ()
    root = jax.random.key(config.seed)
    on_device = jax.jit(
        lambda images, i, key, *e: steps.take_rows(images, row_indices(i, key, *e), host=False)
    )
    indices = jax.jit(row_indices)
    feed = parallel.HostFeed(
        data.mapped,
        lambda i: tuple(np.asarray(a) for a in indices(np.int32(i), root, *extra)),
        mesh,
    )
    expected_sets = 3 if kind == "discriminator" else 1
    for i in (0, 1, 2, 7, 3):  # 1 and 2 were prefetched; 7 and 3 are loaded on the spot
        rows = feed(i)
        assert len(rows) == expected_sets
        assert all(r.sharding == parallel.batch_sharding(mesh) for r in rows)
        want = on_device(data.images, np.int32(i), root, *extra)
        for got, ref in zip(parallel.to_host(rows), parallel.to_host(want)):
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, ref)
    feed.close()


def _interrupt_after(stage, at_step):
    """``stage.make_train_step`` whose step sends SIGTERM to this process after ``at_step``."""
    real = stage.make_train_step

    def make(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def wrapped(state, *rest):
            out = step_fn(state, *rest)
            if int(rest[-1]) == at_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return wrapped

    return make


def test_encoder_on_the_host_resumes_exactly_and_equals_device(data, tmp_path, monkeypatch):
    config = smoke.get_config()
    config.encoder.epochs, config.encoder.checkpoint_every_steps = 2, 3  # 8 steps
    config.data.placement = "device"
    train = load_train_set(config)
    train_encoder(config, tmp_path / "device", train, None)
    expected = load_encoder(str(tmp_path / "device"), config)[1]
    config.data.placement = "host"
    host_train = train.subset(np.arange(len(train)))
    host_train.images = data.mapped
    monkeypatch.setattr(encoder_stage, "make_train_step", _interrupt_after(encoder_stage, 4))
    with pytest.raises(Interrupted, match="step 5"):
        train_encoder(config, tmp_path / "host", host_train, None)
    monkeypatch.undo()
    train_encoder(config, tmp_path / "host", host_train, None)
    resumed = load_encoder(str(tmp_path / "host"), config)[1]
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_discriminator_on_the_host_resumes_exactly_and_equals_device(
    data, smoke_trained, tmp_path, monkeypatch
):
    trained = Path(smoke_trained)  # trained with placement auto -> device
    config = smoke.get_config()
    expected = load_discriminator(str(trained), config)[1]
    workdir = tmp_path / "host"
    shutil.copytree(trained / "encoder", workdir / "encoder")
    config.data.placement = "host"
    train = load_train_set(config)
    train.images = data.mapped
    monkeypatch.setattr(disc_stage, "make_train_step", _interrupt_after(disc_stage, 2))
    with pytest.raises(Interrupted, match="step 3"):
        train_discriminator(config, workdir, train)
    monkeypatch.undo()
    summary = train_discriminator(config, workdir, train)
    assert summary["finished"]
    resumed = load_discriminator(str(workdir), config)[1]
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Device:
    def __init__(self, limit):
        self.limit = limit

    def memory_stats(self):
        return None if self.limit is None else {"bytes_limit": self.limit}


def test_auto_placement_compares_with_the_smallest_device():
    devices = [_Device(8 << 30), _Device(4 << 30)]  # the smallest holds 4 GiB: 1 GiB budget
    fraction = parallel.AUTO_DEVICE_FRACTION
    assert fraction == 0.25
    assert parallel.resolve_placement("auto", 1 << 30, devices) == "device"
    assert parallel.resolve_placement("auto", (1 << 30) + 1, devices) == "host"
    assert parallel.resolve_placement("device", 1 << 40, devices) == "device"
    assert parallel.resolve_placement("host", 1, devices) == "host"
    # devices without memory statistics (the CPU) share the host's RAM, one copy each
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert parallel.device_memory([_Device(None)] * 4) == ram // 4
    with pytest.raises(SemsadError, match=r"data\.placement='gpu' is unknown; use device, host"):
        parallel.resolve_placement("gpu", 1, devices)


def _resident_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_rows_of_a_memory_mapped_set_never_stay_resident(tmp_path):
    path = tmp_path / "big.npy"
    rows = np.random.default_rng(0).integers(0, 256, (4096, 64, 64, 3), np.uint8)  # 48 MiB
    np.save(path, rows)
    mapped = np.load(path, mmap_mode="r")
    # read_rows (the host feed's gather) reads a mapped file with preadv: the same rows, unmapped
    idx = np.random.default_rng(1).permutation(4096)[:1024]
    before = _resident_file_kib()
    got = parallel.read_rows(mapped, idx)
    assert _resident_file_kib() - before < 4 * 1024  # 12 MiB of rows read, not mapped
    np.testing.assert_array_equal(got, rows[idx])
    view = mapped[100:200]  # a view into the mapping: its own file offset
    np.testing.assert_array_equal(parallel.read_rows(view, [0, 99, 5]), rows[[100, 199, 105]])
    np.testing.assert_array_equal(parallel.read_rows(rows, [3, 1]), rows[[3, 1]])  # in memory
    # reading through the mapping makes pages resident; release_pages drops them again
    before = _resident_file_kib()
    assert int(mapped[:, ::8].sum()) > 0  # touch every page
    touched = _resident_file_kib()
    parallel.release_pages(mapped)
    released = _resident_file_kib()
    assert touched - before > 32 * 1024  # the pages were resident ...
    assert touched - released > 32 * 1024  # ... and are not any more
    parallel.release_pages(np.ones(3))  # an in-memory array: nothing to do

"""Peak resident memory while training on a memory-mapped set with ``data.placement=host``.

    python -m benchmarks host_memory --mode=epoch --out=runs/bench/host_memory.json   # GPU: minutes
    python -m benchmarks host_memory --mode=feed                                      # any CPU
    python -m benchmarks host_memory --mode=steps --steps=20 --batch=64               # any CPU

Writes a synthetic set of ``--num-images`` random ``--image-size`` px uint8 images (default 200,000
at 64 px: 2.46 GB) to ``DIR/images.npy`` chunk by chunk (reused when it is there) and memory-maps it
(``np.load(mmap_mode="r")``, as the decoded-data cache returns a set). Then, by ``--mode``:

* ``epoch``: one epoch of the encoder through the real stage
  (:func:`semsad_jax.train.encoder.train_encoder` with ``placement="host"``: checkpoints, metrics,
  the host feed and its prefetch). Hours on a 2-core CPU at 64 px (the ResNet dominates).
* ``feed``: one epoch of the host feed alone (every row of the set gathered by the encoder's
  (seed, step) permutation and placed on the devices), no model: what the set costs in memory,
  in minutes.
* ``steps``: ``--steps`` real encoder steps with the host feed over the whole set.

It reports the process's peak resident memory (VmHWM, reset once the set is written) and the peaks
of its anonymous and file-backed (the mapped set) parts sampled every 0.1 s, next to the set's
size. ``--in-memory`` loads the set into memory first (for contrast).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np

from benchmarks.timing import machine_info, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "semsad_host_memory"))
    p.add_argument("--num-images", type=int, default=200_000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=int, default=4, help="encoder width (ResNet-18)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--augment", default="encoder", help="augmentation preset of the two views")
    p.add_argument("--mode", choices=("epoch", "feed", "steps"), default="epoch")
    p.add_argument("--steps", type=int, default=20, help="--mode=steps: how many steps")
    p.add_argument("--in-memory", action="store_true", help="load the set into memory first")
    p.add_argument("--out", default=None, help="JSON output path")
    return p.parse_args(argv)


def write_set(path: str, count: int, size: int, chunk: int = 10_000) -> None:
    """uint8 [count, size, size, 3] random images as a .npy, written chunk by chunk (no mapping,
    so the written pages never count as this process's memory)."""
    if os.path.exists(path) and np.load(path, mmap_mode="r").shape == (count, size, size, 3):
        return
    rng = np.random.default_rng(0)
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": (count, size, size, 3)}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            f.write(rng.integers(0, 256, (n, size, size, 3), np.uint8).tobytes())
    os.replace(tmp, path)


def _status() -> dict[str, int]:
    """KiB fields of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    return out


class PeakSampler:
    """Samples /proc/self/status every ``interval`` s in a thread; keeps each field's peak."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peaks = interval, dict.fromkeys(_status(), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in _status().items():
                self.peaks[key] = max(self.peaks.get(key, 0), value)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _reset_peak() -> bool:
    """Resets VmHWM to the current resident size (Linux: 5 > /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _encoder(args: argparse.Namespace):
    from semsad_jax.configs import default

    config = default.get_config()
    config.data.train, config.data.test = "synthetic-set", ""
    config.data.image_size, config.data.placement = args.image_size, "host"
    e = config.encoder
    e.width, e.batch_size, e.augment, e.head = args.width, args.batch, args.augment, "linear"
    e.epochs = 1
    total = args.num_images // args.batch
    e.checkpoint_every_steps, e.log_every_steps = total, max(1, total // 10)
    return config, e


def _epoch(args, images, mesh) -> int:
    """One epoch through the real encoder stage; returns the steps trained."""
    from semsad_jax.data import ImageSet
    from semsad_jax.train.encoder import train_encoder
    from semsad_jax.train.stage import StageContext
    from semsad_jax.workdir.layout import Workdir, stage_identity

    config, section = _encoder(args)
    train = ImageSet(images, None, None, "synthetic-set", [str(i) for i in range(len(images))])
    workdir = Workdir(os.path.join(args.dir, f"work-{os.getpid()}"))
    ctx = StageContext(workdir=workdir, mesh=mesh, seed=0, progress=False, placement="host")
    identity = stage_identity("encoder", section, config.data, 0, "float32")
    return train_encoder(section, ctx, train, None, identity=identity)["total_steps"]


def _setup(args, images, mesh):
    import jax

    from semsad_jax.models import build
    from semsad_jax.train.step import StepSetup, init_state

    _, section = _encoder(args)
    model = build("encoder", section, seed=0)
    graphdef, tx, state = init_state(model, section, len(images) // args.batch, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    setup = StepSetup(graphdef, tx, shardings, section, len(images), mesh, 0, placement="host")
    return setup, state


def _feed(args, images, mesh) -> int:
    """One epoch of the host feed alone (the encoder's indices); returns the steps fed."""
    import jax
    import jax.numpy as jnp

    from semsad_jax import parallel
    from semsad_jax.train.encoder import row_indices

    setup, _ = _setup(args, images, mesh)
    rows_at, root = jax.jit(row_indices(setup)), jax.random.key(0)
    indices = lambda i: tuple(np.asarray(a) for a in rows_at(np.int32(i), root))
    feed = parallel.HostFeed(images, indices, mesh)
    total, checksum = len(images) // args.batch, jnp.zeros((), jnp.uint32)
    for i in range(total):
        (rows,) = feed(i)
        checksum = checksum + jnp.sum(rows, dtype=jnp.uint32)
    jax.block_until_ready(checksum)
    feed.close()
    return total


def _steps(args, images, mesh) -> int:
    """``args.steps`` real encoder steps with the host feed; returns them."""
    import jax

    from semsad_jax.train.encoder import bound_train_step

    setup, state = _setup(args, images, mesh)
    step = bound_train_step(setup, images)
    for i in range(args.steps):
        state, metrics = step(state, np.int32(i))
    jax.block_until_ready(metrics)
    step.close()
    return args.steps


def run(args: argparse.Namespace) -> dict:
    from semsad_jax import parallel

    path = os.path.join(args.dir, "images.npy")
    t0 = time.time()
    write_set(path, args.num_images, args.image_size)
    written_s = time.time() - t0
    images = np.load(path, mmap_mode="r")
    if args.in_memory:
        images = np.array(images)
    mesh = parallel.make_mesh()
    reset = _reset_peak()
    before = _status()
    t1 = time.time()
    with PeakSampler() as sampler:
        steps = {"epoch": _epoch, "feed": _feed, "steps": _steps}[args.mode](args, images, mesh)
    seconds = time.time() - t1
    peak = _status()["VmHWM"] * 1024 if reset else None
    result = {
        "machine": machine_info(),
        "mode": args.mode,
        "set": {
            "images": args.num_images,
            "image_size": args.image_size,
            "bytes": int(images.nbytes),
            "memory_mapped": not args.in_memory,
            "path": path,
            "write_seconds": round(written_s, 1),
        },
        "encoder": {"width": args.width, "batch": args.batch, "augment": args.augment},
        "steps": steps,
        "images_read": steps * args.batch,
        "seconds": round(seconds, 1),
        "peak_resident_bytes": peak,
        "peak_resident_fraction_of_set": round(peak / images.nbytes, 3) if peak else None,
        "peak_sampled_kib": sampler.peaks,
        "resident_before_kib": before,
    }
    report(result)
    write_json(args.out, result)
    return result


def report(r: dict) -> None:
    gib = 1 << 30
    s = r["set"]
    print(
        f"set: {s['images']:,} images at {s['image_size']} px = {s['bytes'] / gib:.2f} GiB uint8, "
        f"{'memory-mapped' if s['memory_mapped'] else 'in memory'}; data.placement=host"
    )
    print(
        f"--mode={r['mode']}: {r['steps']} steps of {r['encoder']['batch']} images "
        f"({r['images_read']:,} rows read) in {r['seconds']:.0f} s"
    )
    if r["peak_resident_bytes"]:
        print(
            f"peak resident memory (VmHWM): {r['peak_resident_bytes'] / gib:.2f} GiB = "
            f"{r['peak_resident_fraction_of_set']:.2f} x the set"
        )
    peaks, before = r["peak_sampled_kib"], r["resident_before_kib"]
    print(
        f"sampled peaks: anonymous {peaks.get('RssAnon', 0) / 2**20:.2f} GiB, file-backed "
        f"(the mapped set and the libraries) {peaks.get('RssFile', 0) / 2**20:.2f} GiB; before: "
        f"{before.get('RssAnon', 0) / 2**20:.2f} and {before.get('RssFile', 0) / 2**20:.2f} GiB"
    )


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

"""Two processes x 2 CPU devices (JAX's distributed runtime, gloo over loopback) run ``main.py`` as
two hosts would, and end where one process x 4 devices ends.

* ``--mode=all`` on the smoke config (4 encoder epochs, so there is time to stop it mid-encoder) is
  launched with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID on 127.0.0.1 and a
  free port; a SIGTERM to process 1 (a preemption notice) stops both at one step with a checkpoint;
* rerun, process 1 is SIGKILLed mid-encoder: process 0 stops with one ``error:`` line within
  KILL_BOUND_S (measured: under a second; it is inside a collective and gloo fails at once);
* rerunning both (with ``data.placement=host``: each process sends only its own devices' rows)
  resumes from the last checkpoint while a second, unrelated launch on the same workdir is refused
  (one lock per workdir, held by process 0); ``--mode=score`` follows;
* parameters, results.json metrics, eval scores and the scores CSV equal the one-process run within
  the tolerances below: the two runs differ only in the order of float32 reductions across devices
  (gloo's all-reduce vs XLA's in-process one), which moves the last bits and, through 16 + 4 steps,
  parameters by ~4e-7;
* a process started with another config, another process count, or waiting for a process that never
  comes is refused with one line (the last after SEMSAD_INIT_TIMEOUT).

Every launch is bounded (Launch.wait kills what is left); nothing here uses the persistent
compilation cache (a multi-process CPU run switches it off: see semsad_jax.parallel.launch).
"""

import csv
import json
import os
import re
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

pytest.importorskip("ml_collections")

from launch import Launch  # tests/launch.py

pytestmark = [
    pytest.mark.slow,
    pytest.mark.reliability,
    pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups"),
]

ARGS = ("--config=configs/smoke.py", "--config.encoder.epochs=4")  # 16 encoder steps
SCORE = ("--mode=score", "--images=sklearn:digits/test?classes=7,8,9&limit=24")
PARAMS_ATOL = 1e-5  # |parameter or BatchNorm statistic| difference, both networks
SCORES_ATOL = 1e-4  # eval scores, thresholds and the CSV's score / similarity columns
METRICS_ATOL = 1e-6  # results.json metrics (AUROC, FPR@95, ...: rank-based, equal in practice)
KILL_BOUND_S = 30  # survivor's exit after a peer's SIGKILL: at once inside a collective that
# fails, else when the liveness check finds the peer silent (0.6 x SEMSAD_HEARTBEAT_TIMEOUT=10 here)
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def env():
    return dict(
        {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")},
        SEMSAD_CACHE="none",
        SEMSAD_HEARTBEAT_TIMEOUT="10",
        SEMSAD_INIT_TIMEOUT="60",
    )


def _run(env, tmp, tag, args, *, count, devices, timeout=RUN_TIMEOUT_S, **kw):
    launch = Launch(args, count=count, devices=devices, env=env, log_dir=str(tmp), tag=tag, **kw)
    codes = launch.wait(timeout)
    return launch, codes


@pytest.fixture(scope="module")
def single(env, tmp_path_factory):
    """The reference: one process with 4 CPU devices, --mode=all then --mode=score."""
    tmp = tmp_path_factory.mktemp("single")
    workdir = f"--workdir={tmp / 'w'}"
    for tag, mode in (("all", ("--mode=all",)), ("score", SCORE)):
        launch, codes = _run(env, tmp, tag, (*ARGS, workdir, *mode), count=1, devices=4)
        assert codes == [0], launch.output(0)[-3000:]
    return tmp / "w"


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def _wait_until(predicate, launch, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if any(p.poll() is not None for p in launch.procs):
            break
        time.sleep(0.05)
    launch.kill_all()
    pytest.fail(f"gave up waiting for {what}:\n{launch.output(0)[-3000:]}")


def _lines_starting(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def _error_lines(text):
    return _lines_starting(text, "error:")


def test_two_processes_killed_resumed_and_equal_to_one(single, env, tmp_path):
    workdir = tmp_path / "w"
    args = (*ARGS, f"--workdir={workdir}", "--mode=all")
    metrics = workdir / "encoder" / "metrics.jsonl"

    # 1. Two processes; SIGTERM (a preemption notice) to process 1: both stop at one step, saved.
    first = Launch(args, count=2, devices=2, env=env, log_dir=str(tmp_path), tag="preempted")
    try:
        _wait_until(lambda: len(_lines(metrics)) >= 3, first, RUN_TIMEOUT_S, "encoder step 3")
        os.kill(first.procs[1].pid, signal.SIGTERM)
        codes = first.wait(120)
    finally:
        first.kill_all()
    stops = [_lines_starting(first.output(i), "interrupted:") for i in range(2)]
    assert codes == [130, 130] and len(stops[0]) == 1 and stops[0] == stops[1], stops
    stopped_at = int(re.search(r"at step (\d+);", stops[0][0]).group(1))
    assert (workdir / "encoder" / str(stopped_at)).is_dir()

    # 2. Rerun; SIGKILL process 1 mid-encoder: process 0 stops with one line, at once.
    second = Launch(args, count=2, devices=2, env=env, log_dir=str(tmp_path), tag="killed")
    try:
        resumed = f"resuming encoder from step {stopped_at} "
        done = len(_lines(metrics))
        _wait_until(
            lambda: resumed in second.output(0) and len(_lines(metrics)) >= done + 2,
            second,
            RUN_TIMEOUT_S,
            "two resumed encoder steps",
        )
        second.kill(1)
        killed_at = time.time()
        code = second.procs[0].wait(timeout=KILL_BOUND_S + 30)
        stopped_after = time.time() - killed_at
    finally:
        second.kill_all()
    out = second.output(0)
    assert code == 3, out[-3000:]
    assert stopped_after < KILL_BOUND_S, stopped_after
    errors = _lines_starting(out, "error:")
    # inside a collective that fails: "lost contact with another process ..." (gloo's error, at
    # once); else the liveness check: "lost process 1 ... (silent for 6 s)"
    assert len(errors) == 1, out[-3000:]
    assert re.search(r"lost (contact with another process|process 1) ", errors[0]), errors
    assert "rerun every process with the same command" in errors[0]
    assert "Traceback" not in out
    stage = json.loads((workdir / "encoder" / "stage.json").read_text())
    assert not stage["finished"]  # the kill landed mid-encoder
    print(f"survivor stopped {stopped_after:.2f} s after the SIGKILL")

    # 3. Rerun both, now with the set on the host: they resume (placement is not part of a stage's
    # identity); meanwhile an unrelated launch on the workdir is refused.
    host = (*args, "--config.data.placement=host")
    again = Launch(host, count=2, devices=2, env=env, log_dir=str(tmp_path), tag="resumed")
    try:
        _wait_until(
            lambda: "resuming encoder from step" in again.output(0), again, 300, "the resume"
        )
        intruder, codes = _run(
            env, tmp_path, "intruder", (*ARGS, f"--workdir={workdir}", "--mode=encoder"),
            count=1, devices=4, timeout=300,
        )  # fmt: skip
        assert codes == [2], intruder.output(0)[-2000:]
        refused = _error_lines(intruder.output(0))
        assert len(refused) == 1 and "is in use by pid" in refused[0], refused
        codes = again.wait(RUN_TIMEOUT_S)
    finally:
        again.kill_all()
    assert codes == [0, 0], again.output(0)[-3000:] + again.output(1)[-3000:]
    launch, codes = _run(
        env, tmp_path, "score", (*ARGS, f"--workdir={workdir}", *SCORE), count=2, devices=2
    )
    assert codes == [0, 0], launch.output(0)[-3000:] + launch.output(1)[-3000:]

    # 4. Equal to the one-process run; each file written once (by process 0).
    _assert_same_run(single, workdir)
    steps = [json.loads(x)["step"] for x in _lines(workdir / "discriminator" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]  # not twice: process 1 writes no metrics


def _saved(workdir, stage):
    """(step, {path: array}) of the newest checkpoint, read with plain Orbax on one device."""
    directory = workdir / stage
    step = max(int(n) for n in os.listdir(directory) if n.isdigit())
    path = str(directory / str(step) / "state")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        meta = checkpointer.metadata(path)
        meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
            meta,
            is_leaf=lambda x: hasattr(x, "shape"),
        )
        state = checkpointer.restore(path, target)
    trees = {"params": state["params"], "batch_stats": state["batch_stats"]}
    flat = jax.tree_util.tree_flatten_with_path(trees)[0]
    return step, {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in flat}


def _numbers(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix + key] = value
    return out


def _assert_same_run(one, two):
    for stage in ("encoder", "discriminator"):
        step_one, params_one = _saved(one, stage)
        step_two, params_two = _saved(two, stage)
        assert step_one == step_two and params_one.keys() == params_two.keys()
        worst = max(np.abs(params_one[k] - params_two[k]).max() for k in params_one)
        print(f"{stage}: parameters differ by at most {worst:.3g}")
        assert worst <= PARAMS_ATOL
    results = [json.loads((w / "eval" / "results.json").read_text()) for w in (one, two)]
    metrics = [_numbers(r["detectors"]) for r in results]
    assert metrics[0].keys() == metrics[1].keys() and metrics[0]
    for key in metrics[0]:
        assert abs(metrics[0][key] - metrics[1][key]) <= METRICS_ATOL, key
    for name, value in results[0]["threshold_95"].items():
        assert abs(value - results[1]["threshold_95"][name]) <= SCORES_ATOL, name
    scores = [np.load(w / "eval" / "scores.npz") for w in (one, two)]
    assert sorted(scores[0].files) == sorted(scores[1].files)
    for key in scores[0].files:
        if key.startswith("nn/"):
            np.testing.assert_array_equal(scores[0][key], scores[1][key])
        else:
            np.testing.assert_allclose(scores[0][key], scores[1][key], rtol=0, atol=SCORES_ATOL)
    rows = [list(csv.DictReader(_lines(w / "score" / "scores.csv"))) for w in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 24
    for a, b in zip(*rows):
        for column in ("source", "id", "nearest_index", "is_ood"):
            assert a[column] == b[column], (column, a, b)
        for column in ("score", "nearest_similarity"):
            assert abs(float(a[column]) - float(b[column])) <= SCORES_ATOL, (column, a, b)


def test_a_process_started_differently_is_refused_with_one_line(env, tmp_path):
    args = ("--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}", "--mode=encoder")
    env = dict(env, SEMSAD_INIT_TIMEOUT="5")
    cases = [
        # another --config override on process 1: refused by the same-launch check
        (
            dict(per_process=lambda i: ["--config.seed=1"] if i else []),
            "process 1 was started with another config or flags than process 0",
        ),
        # process 1 expects three processes; process 0 (the coordinator) says two
        (
            dict(env_for=lambda i: {"JAX_NUM_PROCESSES": "3"} if i else {}),
            "process 1 was started with JAX_NUM_PROCESSES=3 but 2 processes joined",
        ),
        # the coordinator waits for a third process that never comes: the init timeout
        (
            dict(env_for=lambda i: {} if i else {"JAX_NUM_PROCESSES": "3"}),
            "waited 5 s for",
        ),
    ]
    for kwargs, needle in cases:
        started = time.time()
        launch, codes = _run(
            env, tmp_path, "refused", args, count=2, devices=2, timeout=120, **kwargs
        )
        took = time.time() - started
        assert codes == [2, 2], (needle, codes, launch.output(0)[-2000:])
        for i in range(2):
            errors = _error_lines(launch.output(i))
            assert len(errors) == 1 and "Traceback" not in launch.output(i), launch.output(i)
        assert any(needle in _error_lines(launch.output(i))[0] for i in range(2)), needle
        assert took < 90, took
    assert not (tmp_path / "w" / "encoder").exists()  # nothing was trained


IDLE = """
import sys, time
sys.path.insert(0, {root!r})
from semsad_jax import parallel
parallel.initialize_distributed()
import jax
print("up", flush=True)
time.sleep(float(sys.argv[1]) if jax.process_index() == 0 else float(sys.argv[2]))
"""


def test_a_process_outside_any_collective_reports_a_lost_peer_in_one_line(env, tmp_path):
    """The liveness check (semsad_jax.parallel.liveness): a peer that finishes normally is not
    lost; a SIGKILLed one is reported within 0.6 x the heartbeat timeout, before JAX aborts."""
    script = tmp_path / "idle.py"
    script.write_text(IDLE.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # process 1 ends at once (normally), process 0 stays idle longer than the liveness limit (6 s)
    launch, codes = _run(
        env, tmp_path, "done", ("9", "0"), count=2, devices=1, timeout=120, script=str(script)
    )
    assert codes == [0, 0], launch.output(0)[-2000:]
    assert not _error_lines(launch.output(0))
    # process 1 is killed while process 0 waits outside any collective
    idle = Launch(
        ("60", "60"), count=2, devices=1, env=env, log_dir=str(tmp_path), tag="idle",
        script=str(script),
    )  # fmt: skip
    try:
        _wait_until(lambda: all("up" in idle.output(i) for i in range(2)), idle, 120, "startup")
        idle.kill(1)
        killed_at = time.time()
        code = idle.procs[0].wait(timeout=60)
        took = time.time() - killed_at
    finally:
        idle.kill_all()
    errors = _error_lines(idle.output(0))
    assert code == 3 and len(errors) == 1, idle.output(0)[-2000:]
    assert "lost process 1 of this 2-process run (silent for 6 s)" in errors[0]
    assert took < 10, took  # before JAX's heartbeat (SEMSAD_HEARTBEAT_TIMEOUT=10) would abort

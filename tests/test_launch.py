"""The launch variables, read as a user sets them (one-line errors), and what a process other than
process 0 writes: nothing (the two-process runs themselves are in test_multiprocess.py)."""

import json
import os

import jax
import pytest

from semsad_jax import parallel
from semsad_jax.errors import SemsadError
from semsad_jax.parallel import Launch, launch_from_env
from semsad_jax.train.logs import MetricsWriter
from semsad_jax.workdir.layout import Workdir, move_aside

ADDRESS = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, Launch()),
        ({"JAX_NUM_PROCESSES": "1"}, Launch()),
        (
            {**ADDRESS, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
            Launch("explicit", 2, 1, "10.0.0.1:1234"),
        ),
        (
            {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"},
            Launch("cluster", 0, 0, None, "SLURM"),
        ),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, Launch()),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, Launch("cluster", 0, 0, None, "Open MPI")),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, Launch("cluster", 0, 0, None, "Cloud TPU")),
        ({"SEMSAD_DISTRIBUTED": "1"}, Launch("cluster", 0, 0, None, "SEMSAD_DISTRIBUTED=1")),
        (
            {**ADDRESS, "SEMSAD_DISTRIBUTED": "1"},
            Launch("cluster", 0, 0, "10.0.0.1:1234", "SEMSAD_DISTRIBUTED=1"),
        ),
    ],
)
def test_launch_variables(env, expected):
    assert launch_from_env(env) == expected


@pytest.mark.parametrize(
    "env, problem",
    [
        # only the address, as jax reads it: the old code defaulted to two processes
        (ADDRESS, "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES is not"),
        ({"JAX_PROCESS_ID": "0"}, "JAX_PROCESS_ID is set but JAX_NUM_PROCESSES is not"),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "needs JAX_COORDINATOR_ADDRESS"),
        ({**ADDRESS, "JAX_NUM_PROCESSES": "2"}, "needs JAX_PROCESS_ID"),
        ({**ADDRESS, "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' must be an integer"),
        ({**ADDRESS, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "use 0..1"),
        ({**ADDRESS, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"}, "integer >= 0"),
        (
            {"JAX_COORDINATOR_ADDRESS": "host", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
            "HOST:PORT",
        ),
    ],
)
def test_bad_launch_variables_are_one_line(env, problem):
    with pytest.raises(SemsadError, match=problem) as err:
        launch_from_env(env)
    assert "\n" not in str(err.value)


def test_single_process_helpers_need_no_runtime():
    assert not jax.distributed.is_initialized()
    assert parallel.initialize_distributed({}) == Launch()
    parallel.check_same_launch("anything", Launch())  # one process: nothing to compare
    parallel.sync("nothing to wait for")
    assert parallel.all_agree(False) == [False]
    assert parallel.smallest(12345) == 12345
    assert parallel.lost_peer(RuntimeError("Connection reset by peer")) is None


def test_processes_other_than_0_write_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    wd = Workdir(str(tmp_path / "w"))
    wd.write(wd.config_json, {"seed": 0})
    assert wd.read(wd.config_json) == {"seed": 0}  # remembered, as on process 0 ...
    assert not os.path.exists(wd.config_json)  # ... but not written
    writer = MetricsWriter(str(tmp_path / "metrics.jsonl"))
    writer.write(1, {"loss": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "stage").mkdir()
    assert move_aside(str(tmp_path / "stage")) is None and (tmp_path / "stage").is_dir()
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    wd.write(wd.config_json, {"seed": 1})
    assert json.loads((tmp_path / "w" / "config.json").read_text()) == {"seed": 1}

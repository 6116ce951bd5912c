"""Two local processes × 4 CPU devices train together like one process with 8 devices."""

import os
import socket
import subprocess
import sys

import numpy as np

from jaxdiv.train import get_config, run
from jaxdiv.train.config import apply_overrides
from jaxdiv.train.metrics import read_metrics

OVERRIDES = [
    "steps=4",
    "batch_size=8",
    "log_every=1",
    "eval_every=0",
    "eval_batches=1",
    "checkpoint_every=2",
    "model.d_model=16",
    "model.num_heads=2",
    "task.kwargs.seq_len=16",
    "progress=False",
    "mesh.data=2",
    "mesh.fsdp=4",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    # One process, 8 devices (this test process: conftest forces 8 CPU devices).
    config = apply_overrides(get_config("pretrain_lm"), OVERRIDES)
    run(config, tmp_path / "single")
    single = [r["loss"] for r in read_metrics(tmp_path / "single") if r["split"] == "train"]

    # Two processes with 4 devices each, coordinated on localhost.
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "jaxdiv.train",
        "--config",
        "pretrain_lm",
        "--workdir",
        str(tmp_path / "multi"),
        *[f"--config.{o}" for o in OVERRIDES],
    ]
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        procs.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "done at step 4" in outputs[0]
    assert "done at step" not in outputs[1]  # only process 0 prints and logs
    multi = [r["loss"] for r in read_metrics(tmp_path / "multi") if r["split"] == "train"]
    np.testing.assert_allclose(multi, single, rtol=1e-5)

"""Data-parallel training under torchrun (issue 16.4): two gloo ranks on CPU, each on half
of the global batch, end at the parameters of one process trained on the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tl_inversion.decoding.bank import WEIGHTS
from tl_inversion.errors import ConfigError
from tl_inversion.training.distributed import Distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _gloo() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def _run(launcher: list[str], out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # the one-process run must not think it is a rank
    done = subprocess.run([sys.executable, *launcher, str(WORKER), str(out), "16"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not _gloo():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp")
    return _run(TORCHRUN, tmp / "two_ranks"), _run([], tmp / "one_process")


@pytest.mark.parametrize("topology", ["per_hook", "shared"])
def test_two_ranks_equal_one_process_on_the_whole_batch(runs, topology):
    two, one = (r / topology for r in runs)
    a, b = load_file(str(two / "bank" / WEIGHTS)), load_file(str(one / "bank" / WEIGHTS))
    assert a.keys() == b.keys() and a
    start = load_file(str(two / "checkpoints" / "step_00000002" / WEIGHTS))
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-4  # the last steps changed the weights: the equality below is not trivial
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.parametrize("topology", ["per_hook", "shared"])
def test_rank_zero_logs_the_global_batch(runs, topology):
    two, one = (r / topology for r in runs)
    log2 = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    log1 = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [r["step"] for r in log1] == [1, 2, 4]  # once each, not once per rank
    for r2, r1 in zip(log2, log1, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)  # the mean over all 16 rows
        assert r2["inputs_seen"] == r1["inputs_seen"]
        assert r2.get("faithfulness") == r1.get("faithfulness")


def test_global_batch_must_split_evenly():
    ddp = Distributed(rank=1, world=4)
    assert ddp.rows(8) == slice(2, 4)
    with pytest.raises(ConfigError) as e:
        ddp.rows(10)
    assert e.value.field == "batch_size" and "divisible" in str(e.value)


def test_one_process_outside_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ddp = Distributed.from_env(torch.device("cpu"))
    assert (ddp.rank, ddp.world, ddp.is_main, ddp.enabled) == (0, 1, True, False)
    assert ddp.rows(7) == slice(0, 7)
    assert ddp.max(2.5) == 2.5 and ddp.any(True) and not ddp.any(False)

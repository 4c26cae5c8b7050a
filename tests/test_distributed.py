"""Data-parallel SLUG: 2 gloo processes under torchrun give the single-process run; a dead process leaves nothing.

The multi-process tests start real processes (torchrun, `slugkit unlearn --nproc 2`) with one thread each.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from slugkit import distributed
from slugkit.cli import _drop_option
from slugkit.gradients import Gradients
from slugkit.slug import untimed

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "tests" / "dist_case.py"


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env | extra


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO, **kw)


# --------------------------------------------------------------------------------------------------------
# Without a process group every helper is the identity
# --------------------------------------------------------------------------------------------------------
def test_without_a_group_one_process_does_everything():
    assert (distributed.active(), distributed.world_size(), distributed.rank(), distributed.is_writer()) == \
        (False, 1, 0, True)
    loader = [1, 2, 3]
    assert distributed.shard_batches(loader) is loader
    assert list(range(7))[distributed.shard(7)] == list(range(7))
    t = {"w": torch.ones(2, dtype=torch.float64)}
    assert distributed.sum_tensors(t) is t
    assert distributed.sum_counts({"a": [1, 2.5], "b": (3,)}) == {"a": (1, 2.5), "b": (3,)}
    assert distributed.gather("x") == ["x"] and distributed.all_agree(True) and not distributed.all_agree(False)


def test_interleave_undoes_the_strided_shards_even_when_uneven():
    items = list(range(11))
    for n in (1, 2, 3, 4, 12):
        parts = [items[r::n] for r in range(n)]  # what distributed.shard gives rank r of n
        assert distributed.interleave(parts) == items
    batches = distributed._RankBatches([[0], [1], [2], [3], [4]], rank=1, size=2)
    assert list(batches) == [[1], [3]] and len(batches) == 2
    assert len(distributed._RankBatches([[0]], rank=1, size=2)) == 0 == len(list(distributed._RankBatches([[0]], 1, 2)))


def test_the_launcher_passes_every_option_but_nproc():
    argv = ["unlearn", "--nproc", "2", "--forget", "Captain Zorp", "--nproc=3", "--out", "x"]
    assert _drop_option(argv, "--nproc") == ["unlearn", "--forget", "Captain Zorp", "--out", "x"]


# --------------------------------------------------------------------------------------------------------
# Two gloo processes under torchrun
# --------------------------------------------------------------------------------------------------------
def test_two_gloo_processes_give_the_single_process_gradients_layer_step_size_and_report(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = _run([sys.executable, str(CASE), str(one)])
    assert single.returncode == 0, single.stderr[-2000:]
    pair = _run(_torchrun(str(CASE), str(two)))
    assert pair.returncode == 0, pair.stderr[-2000:]

    g1, g2 = Gradients.load(one / "gradients.safetensors"), Gradients.load(two / "gradients.safetensors")
    assert g1.layers == g2.layers and len(g1.layers) == 4
    for loss in ("forget", "retain"):
        for name in g1.layers:
            a, b = getattr(g1, loss)[name], getattr(g2, loss)[name]
            assert a.norm() > 0
            assert ((a - b).norm() / a.norm()).item() <= 1e-5, (loss, name)
    # the same batches, wherever they were computed: 1 forget batch (rank 1 had none), 5 retain batches (3 + 2)
    for key in ("forget_batches", "retain_batches", "retain_pairs", "forget_key", "retain_key", "forget_fingerprint",
                "retain_fingerprint"):
        assert g1.meta[key] == g2.meta[key], key
    assert (g2.meta["forget_batches"], g2.meta["retain_batches"]) == (1, 5)

    r1 = json.loads((one / "run" / "report.json").read_text())
    r2 = json.loads((two / "run" / "report.json").read_text())
    assert r1["status"] == "ok" and r1["layer"] is not None
    assert (r2["layer"], r2["step_size"]) == (r1["layer"], r1["step_size"])
    assert untimed(r2) == untimed(r1)
    # rank 0 alone wrote: one run folder, one cache entry per gradient, under the single-process keys
    assert sorted(p.name for p in (two / "run").iterdir()) == sorted(p.name for p in (one / "run").iterdir())
    gradient_entries = sorted(f"{g1.meta[loss + '_key']}.safetensors" for loss in ("forget", "retain"))
    assert sorted(p.name for p in (two / "cache").iterdir()) == gradient_entries
    # one process also keeps the unedited model's evaluation embeddings (the search's pictures and the report's: two
    # entries); processes that each embed their own shard of the pictures do not (slug.cache_embeddings)
    assert len({p.name for p in (one / "cache").iterdir()} - set(gradient_entries)) == 2


def test_under_torchrun_an_error_is_said_once(tmp_path):
    res = _run(_torchrun("-m", "slugkit", "unlearn", "--model", "toy-clip", "--forget", "Nobody At All",
                         "--out", str(tmp_path / "run")))
    assert res.returncode != 0
    said = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("slugkit unlearn: error:")]
    assert len(said) == 1 and "Nobody At All" in said[0], res.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------
# A process that dies
# --------------------------------------------------------------------------------------------------------
def _pid_of_rank(rank: int, tag: str) -> int | None:
    """The pid of the worker of rank ``rank`` among processes started with ``SLUGKIT_TEST_TAG=tag``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and f"SLUGKIT_TEST_TAG={tag}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker to kill through /proc (Linux)")
def test_a_process_that_dies_leaves_no_run_folder_and_one_sentence(tmp_path):
    """Rank 1 is killed while rank 0 shows its retain-gradient progress: mid-work, between all-reduces."""
    out = tmp_path / "runs" / "zorp"
    tag = f"{os.getpid()}-{time.time_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "slugkit", "unlearn", "--nproc", "2", "--model", "toy-clip", "--forget", "Captain Zorp",
         "--out", str(out), "--no-cache"], env=_env(SLUGKIT_TEST_TAG=tag), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(chunk) for chunk in iter(lambda: proc.stderr.read1(4096), b"")],
                              daemon=True)
    reader.start()
    try:
        deadline = time.time() + 400
        while b"retain gradients" not in err and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        victim = _pid_of_rank(1, tag)
        assert victim is not None and b"retain gradients" in err, bytes(err[-2000:]).decode()
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = bytes(err).decode()
    assert proc.returncode not in (0, None)
    said = [line for line in text.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert said == ["slugkit unlearn: error: process 1 of 2 was killed by signal SIGKILL, so the run stopped and "
                    "wrote nothing"], text[-2000:]
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))  # no hidden half-written temporary folder

"""Data parallelism for SLUG on ``torch.distributed``: the only module that knows there may be several processes.

SLUG's costly parts are sums over examples: the forget and retain gradients (a mean over batches of per-batch
mean gradients) and the counts behind every accuracy of the step-size search and the report. Under a process
group (``torchrun --nproc-per-node N -m slugkit unlearn ...``, or ``slugkit unlearn --nproc N``) each process
takes every N-th batch / picture, and one all-reduce adds the partial sums, so every process holds the same
gradients and the same metrics as one process would. gloo on CPU, NCCL where GPUs are present; same code path.
Without a process group every helper is the identity, so single-process code pays nothing.

The gradient stage and the evaluators call :func:`shard_batches`, :func:`shard`, :func:`sum_tensors`,
:func:`sum_counts` and :func:`gather`; the run folder and the gradient cache are written only where
:func:`is_writer` (rank 0). Sums are kept in float64, so the result does not depend on how the batches were split
(the fp32 gradients of 1 and of N processes agree to the last bit in practice, and so do the step sizes).

    torchrun --nproc-per-node 2 -m slugkit unlearn --model toy-clip --forget "Captain Zorp" --out runs/zorp
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

OWN_EXIT_CODES = (1, 2, 3)  # the CLI's: internal error, bad input, status not "ok"
LAUNCHED_ENV = "SLUGKIT_LAUNCHED"  # set by :func:`launch` for its workers: the launcher names a lost process


class PeerLost(RuntimeError):
    """Another process of the group stopped (or the transport failed) during a collective operation."""

    exit_code = 4  # distinct from a process's own errors, so the launcher can tell the cause from its echoes


def active() -> bool:
    """Whether this process belongs to an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_writer() -> bool:
    """True in the one process that writes files and prints (rank 0; the only process without a group)."""
    return rank() == 0


def device() -> torch.device:
    """Where this process's model should live: its own GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    NCCL with one GPU per local rank when CUDA is available, gloo otherwise. SIGTERM (what torchrun sends the
    survivors when a process dies) becomes ``SystemExit``, so half-written temporary files are removed on the
    way out. Returns whether this process is now part of a group of several.
    """
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return True


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------
class _RankBatches:
    """The batches (lists of indices) of a batch sampler that fall to this rank: numbers rank, rank + N, ..."""

    def __init__(self, batches, rank: int, size: int):
        self.batches, self.rank, self.size = batches, rank, size

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i % self.size == self.rank:
                yield batch

    def __len__(self) -> int:
        return max(0, (len(self.batches) - self.rank + self.size - 1) // self.size)


def shard_batches(loader: Iterable) -> Iterable:
    """This process's batches of ``loader``: batch ``i`` goes to rank ``i % N`` (all of them without a group).

    The batches themselves are the single process's, so the contrastive retain batches stay whole and equal.
    A map-style ``DataLoader`` is rebuilt on a filtered batch sampler, so a process loads and decodes only its
    own pairs; any other iterable is read whole and filtered.
    """
    if not active():
        return loader
    r, n = rank(), world_size()
    if isinstance(loader, torch.utils.data.DataLoader) and loader.batch_sampler is not None:
        return torch.utils.data.DataLoader(
            loader.dataset, batch_sampler=_RankBatches(loader.batch_sampler, r, n), collate_fn=loader.collate_fn,
            num_workers=loader.num_workers, pin_memory=loader.pin_memory, generator=loader.generator)
    return (batch for i, batch in enumerate(loader) if i % n == r)


def shard(n: int) -> slice:
    """This process's items among ``n`` (every N-th from its rank); ``slice(0, n, 1)`` without a group."""
    return slice(rank(), n, world_size())


def interleave(parts: Sequence[Sequence]) -> list:
    """Undo :func:`shard_batches` / :func:`shard`: rank ``r``'s ``k``-th item is item ``k * N + r``."""
    out, k = [], 0
    while any(k < len(p) for p in parts):
        out += [p[k] for p in parts if k < len(p)]
        k += 1
    return out


# ---------------------------------------------------------------------------------------------------------
# Collectives (identity without a group)
# ---------------------------------------------------------------------------------------------------------
def _collective(what: str, op, *args, **kwargs):
    try:
        return op(*args, **kwargs)
    except RuntimeError as err:
        raise PeerLost(f"the run stopped while {what}: another of its {world_size()} processes is gone "
                       "(or the connection to it failed), so nothing was written") from err


def sum_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise float64 sums over all processes (same names, shapes on every process); alone, ``tensors``."""
    if not active():
        return tensors
    dev = device()
    out = {}
    for name in sorted(tensors):  # the same order on every process
        t = tensors[name].to(dev, torch.float64)
        _collective(f"adding up gradients ({name})", dist.all_reduce, t)
        out[name] = t.to(tensors[name].device)
    return {name: out[name] for name in tensors}


def sum_counts(counts: dict[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    """``{name: numbers}`` (e.g. hits and totals behind accuracies) summed over all processes, in one all-reduce."""
    if not active():
        return {name: tuple(v) for name, v in counts.items()}
    flat = [float(x) for v in counts.values() for x in v]
    t = torch.tensor(flat, dtype=torch.float64, device=device())
    _collective("adding up evaluation counts", dist.all_reduce, t)
    summed = iter(t.cpu().tolist())
    return {name: tuple(next(summed) for _ in v) for name, v in counts.items()}


def gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (a picklable object per process); ``[obj]`` without a group."""
    if not active():
        return [obj]
    out = [None] * world_size()
    _collective("gathering results", dist.all_gather_object, out, obj)
    return out


def all_agree(flag: bool) -> bool:
    """True only when ``flag`` is true in every process (e.g. every process found the gradients cached)."""
    return sum_counts({"disagree": [0.0 if flag else 1.0]})["disagree"][0] == 0


# ---------------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------------
def launch(nproc: int, argv: Sequence[str], what: str = "slugkit") -> int:
    """Run ``python -m slugkit ARGV`` in ``nproc`` processes on this machine, as ``torchrun --standalone
    --nproc-per-node NPROC -m slugkit ARGV`` would (torchrun's own launcher, called in this process, with the
    rendezvous that ``--standalone`` picks: a local store on a free port).

    Returns the exit code: 0, or the workers' own code when they agree on it (e.g. 3 = status not "ok"), else
    the first worker's error code after one sentence naming the process that stopped.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import config_from_args, get_args_parser
    from torch.distributed.launcher.api import elastic_launch

    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"expected a positive number of processes, got {nproc!r}")
    standalone = ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--rdzv-id", uuid.uuid4().hex]
    args = get_args_parser().parse_args([*standalone, "--nproc-per-node", str(nproc), "--module", "slugkit", *argv])
    for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the agent's chatter; failures are summed up below
    os.environ[LAUNCHED_ENV] = "1"
    config, cmd, cmd_args = config_from_args(args)
    try:
        elastic_launch(config, cmd)(*cmd_args)
        return 0
    except ChildFailedError as err:
        codes = {r: f.exitcode for r, f in err.failures.items()}
        own = {r: c for r, c in codes.items() if c in OWN_EXIT_CODES}  # outcomes a process reported itself
        if own and len(set(own.values())) == 1 and (0 in own or len(own) == nproc):
            return next(iter(own.values()))  # rank 0 (which speaks for all) or every process reported it
        echoes = (PeerLost.exit_code, 128 + signal.SIGTERM, -signal.SIGTERM)  # stopped because another did
        r = min({r: c for r, c in codes.items() if c not in echoes} or codes)
        why = (f"was killed by signal {signal.Signals(-codes[r]).name}" if codes[r] < 0
               else f"exited with code {codes[r]}")
        print(f"{what}: error: process {r} of {nproc} {why}, so the run stopped and wrote nothing", file=sys.stderr)
        return codes[r] if codes[r] in OWN_EXIT_CODES else 1

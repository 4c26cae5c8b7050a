"""One small SLUG run on the toy CLIP, alone or as one process of a group (for tests/test_distributed.py).

    python tests/dist_case.py OUT                                  # one process
    torchrun --nproc-per-node 2 tests/dist_case.py OUT             # two (gloo on CPU)

Rank 0 writes OUT/run (report.json, patch.safetensors), OUT/gradients.safetensors and the gradient cache
OUT/cache. The case is small
on purpose: 80 retain pairs in 5 batches of 16 (3 + 2 with two processes) and one forget batch (so one of
two processes has no forget batch at all), 4 candidate layers, at most 4 step sizes per layer.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from slugkit import distributed
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn
from slugkit.tasks import toy_task

CONCEPT = "Captain Zorp"


def run(store=None):
    torch.manual_seed(0)
    clip = load_clip("toy-clip")
    task = toy_task(clip, CONCEPT, n_train=300, n_val=100, n_test=300, n_retain=80)
    layers = [i.name for i in clip.candidate_layers() if ".resblocks.5." in i.name and "mlp" in i.name]
    return unlearn(clip, CONCEPT, task=task, layers=layers, batch_size=16, max_evals=4, store=store,
                   progress=False)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    distributed.init_from_env()
    result = run(store=out / "cache")
    result.save(out / "run")
    if distributed.is_writer():
        result.gradients.save(out / "gradients.safetensors")
    distributed.shutdown()

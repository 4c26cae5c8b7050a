"""Pixel PGD: targeted L-inf perturbations of the concept's held-out pictures toward its name.

The perturbation lives on the model's input pixels in [0, 1] (after resizing, before normalisation). A
picture counts as recovered when the attacked CLIP names the concept on it and the frozen judge still sees
the concept in the perturbed picture (so the attack did not simply draw someone else).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import AttackData, AttackResult, class_embeddings


@dataclass(frozen=True)
class PGDBudget:
    eps: float = 4 / 255
    steps: int = 10
    step_size: float = 1 / 255  # eps / 4
    pictures: int = 32


def pixel_pgd(adapter, data: AttackData, budget: PGDBudget | None = None) -> AttackResult:
    """``budget.steps`` signed-gradient steps within an L-inf ball of ``budget.eps`` on ``budget.pictures`` pictures."""
    budget = budget or PGDBudget()
    own = np.flatnonzero(data.test_labels == data.index)[: budget.pictures]
    mean = torch.tensor(adapter.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(adapter.std, dtype=torch.float32).view(1, 3, 1, 1)
    clean = adapter.preprocess(torch.from_numpy(np.ascontiguousarray(data.test_images[own]))) * std + mean
    classes = class_embeddings(adapter)
    scale = adapter.logit_scale().detach()
    target = torch.full((len(own),), data.index, dtype=torch.long)
    delta = torch.zeros_like(clean, requires_grad=True)
    for _ in range(budget.steps):
        x = (clean + delta).clamp(0, 1)
        loss = F.cross_entropy(scale * adapter.encode_image((x - mean) / std) @ classes.T, target)
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= budget.step_size * grad.sign()
            delta.clamp_(-budget.eps, budget.eps)
    with torch.no_grad():
        x = (clean + delta).clamp(0, 1)
        named = (adapter.encode_image((x - mean) / std) @ classes.T).argmax(1) == data.index
        before = (adapter.encode_image((clean - mean) / std) @ classes.T).argmax(1) == data.index
        sees = torch.ones_like(named)
        if data.judge is not None:
            picture = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) if x.shape[-1] != 64 else x
            sees = data.judge(picture * 2 - 1)["identity"].argmax(1) == data.index
    return AttackResult(float((named & sees).float().mean()),
                        {"named": float(named.float().mean()), "named_before": float(before.float().mean()),
                         "judge_sees_concept": float(sees.float().mean()) if data.judge is not None else None,
                         "max_change": float(delta.detach().abs().max())})

"""How much each block's representation changed: linear CKA between the original and the unlearned model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..adapters.base import CLIPAdapter
from .similarity import TOWERS, patched, residual_stream


def linear_cka(x, y) -> float:
    """Linear centred kernel alignment of two representations of the same ``n`` examples.

    ``x`` ``(n, p)``, ``y`` ``(n, q)`` (extra dims are flattened). 1 for representations equal up to an
    orthogonal transform and an isotropic scaling, lower the more they differ; NaN when either is constant.
    Computed on the ``n x n`` Gram matrices, so wide features (tokens x channels) cost nothing extra.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).flatten(1).double()
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).flatten(1).double()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares two representations of the same examples, got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    k, l = x @ x.T, y @ y.T
    denom = torch.linalg.norm(k) * torch.linalg.norm(l)
    if float(denom) <= 1e-30:
        return float("nan")
    return float((k * l).sum() / denom)


@dataclass
class CKAProfile:
    """``values[k]``: linear CKA of block ``k``'s output (labels as in :class:`BlockAttribution`)
    between the original model and the model with the patch applied; ``change[k]``: the relative size of
    the change, ``||after - before|| / ||before||``. CKA is blind to a shift shared by all pictures (it
    centres them), ``change`` is not: read the two together."""

    labels: list[str]
    values: np.ndarray
    change: np.ndarray


def cka_profile(adapter: CLIPAdapter, patch, pixels: torch.Tensor, tokens: torch.Tensor) -> CKAProfile:
    """CKA per block of both towers: vision blocks on ``pixels`` ``(B, 3, S, S)``, text blocks on ``tokens``
    ``(B, ctx)``, original vs ``patch`` applied (reverted afterwards)."""
    inputs = {"vision": pixels.to(adapter.device), "text": tokens.to(adapter.device)}
    before = {t: residual_stream(adapter, t, inputs[t])[1:] for t in TOWERS}
    with patched(adapter.model, patch):
        after = {t: residual_stream(adapter, t, inputs[t])[1:] for t in TOWERS}
    labels, values, change = [], [], []
    for t in TOWERS:
        for k, (b, a) in enumerate(zip(before[t], after[t])):
            labels.append(f"{t} {k}")
            values.append(linear_cka(b.cpu(), a.cpu()))
            change.append(float((a - b).norm() / b.norm().clamp_min(1e-12)))
    return CKAProfile(labels, np.array(values), np.array(change))

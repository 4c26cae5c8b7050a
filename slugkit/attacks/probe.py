"""Linear probe: is the concept still in the representation, and in which vision block?

A multinomial logistic probe over the 13 characters is trained on each vision block's frozen features
(class token and mean token, concatenated) and on the final image embedding, from half of the held-out
character pictures; the score of a block is its specific top-1 on the other half (:func:`~slugkit.attacks.base.specific_recall`). The
attack's score is the best block: the information is there if any linear read-out finds it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import AttackData, AttackResult, specific_recall


@dataclass(frozen=True)
class ProbeBudget:
    pictures: int = 1000  # held-out character pictures (half to fit, half to score)
    max_iter: int = 300
    c: float = 1.0  # inverse L2 strength of the logistic regression


def block_features(adapter, images: np.ndarray, batch_size: int = 250) -> dict[str, np.ndarray]:
    """``{"block k": (N, 2W), ..., "embedding": (N, D)}``: class token and mean token after every vision block."""
    return hooked_features(adapter.blocks("vision"), adapter.blocks_batch_first("vision"),
                           lambda x: adapter.encode_image(adapter.preprocess(x)), images, "embedding", batch_size)


@torch.no_grad()
def hooked_features(blocks, batch_first: bool, run, images: np.ndarray, final: str,
                    batch_size: int = 250) -> dict[str, np.ndarray]:
    """Class token and mean token after each of ``blocks`` while ``run`` (uint8 ``(B, H, W, 3)`` tensor ->
    ``(B, D)`` or ``(B, T, D)`` features) runs on ``images``; ``run``'s own output (mean over tokens) as ``final``."""
    seen: dict[int, list] = {k: [] for k in range(len(blocks))}

    def hook_for(k):
        def hook(module, inputs, output):
            x = output[0] if isinstance(output, tuple) else output
            x = x if batch_first else x.transpose(0, 1)
            seen[k].append(torch.cat([x[:, 0], x.mean(1)], 1).float())
        return hook

    handles = [b.register_forward_hook(hook_for(k)) for k, b in enumerate(blocks)]
    out_final = []
    try:
        for i in range(0, len(images), batch_size):
            y = run(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])))
            out_final.append((y.mean(1) if y.dim() == 3 else y).float())
    finally:
        for h in handles:
            h.remove()
    out = {f"block {k}": torch.cat(v).numpy() for k, v in seen.items()}
    out[final] = torch.cat(out_final).numpy()
    return out


def linear_probe(adapter, data: AttackData, budget: ProbeBudget | None = None) -> AttackResult:
    """Per-block probe top-1 on the concept's pictures; the score is the best block's."""
    budget = budget or ProbeBudget()
    n = min(budget.pictures, len(data.probe_images))
    return probe_features(block_features(adapter, data.probe_images[:n]), data, budget)


def probe_features(features: dict[str, np.ndarray], data: AttackData, budget: ProbeBudget) -> AttackResult:
    """A logistic probe per entry of ``features`` (``{where: (N, F)}`` of the first N probe pictures of ``data``),
    fitted on the even pictures, scored on the odd ones; the score is the best entry's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(next(iter(features.values())))
    labels = np.asarray(data.probe_labels[:n])
    fit, held = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    if not (held & (labels == data.index)).any() or not (fit & (labels == data.index)).any():
        raise ValueError(f"too few probe pictures of {data.concept!r} in {n}; raise ProbeBudget.pictures")
    per_block = {}
    for where, feats in features.items():
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=budget.c, max_iter=budget.max_iter))
        probe.fit(feats[fit], labels[fit])
        per_block[where] = specific_recall(probe.predict(feats[held]), labels[held], data.index)["score"]
    best = max(per_block, key=per_block.get)
    return AttackResult(per_block[best], {"best_block": best, "per_block": per_block})

"""Concept arithmetic (Petsiuk & Saenko's compositional guidance, on CLIP text embeddings).

The concept's class embedding is rebuilt from the names of characters that share its features (weighted by
how many they share), with a weight on the forgotten name itself and optionally minus the characters that
share nothing; the best weighting on the attack pictures is scored on held-out pictures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.minicanvas import CHARACTERS
from .base import AttackData, AttackResult, class_embeddings, embed, score, with_row


@dataclass(frozen=True)
class ArithmeticBudget:
    name_weights: tuple[float, ...] = (1.0, 0.0, -1.0)  # weight on the forgotten name's own embedding
    unrelated_weights: tuple[float, ...] = (0.0, 1.0)  # weight subtracted for characters that share nothing


def neighbour_weights(index: int) -> np.ndarray:
    """Per character: how many visual features it shares with character ``index`` (0 for itself)."""
    own = CHARACTERS[index].features
    w = np.array([sum(c.features[k] == v for k, v in own.items()) for c in CHARACTERS], float)
    w[index] = 0.0
    return w


def concept_arithmetic(adapter, data: AttackData, budget: ArithmeticBudget | None = None) -> AttackResult:
    """Best of ``len(name_weights) * len(unrelated_weights)`` embedding sums (at most 6 by default)."""
    budget = budget or ArithmeticBudget()
    classes = class_embeddings(adapter)
    w = torch.as_tensor(neighbour_weights(data.index), dtype=classes.dtype)
    if w.sum() == 0:
        raise ValueError(f"{data.concept!r} shares no feature with any other character: nothing to compose")
    shared = (w[:, None] * classes).sum(0) / w.sum()
    unrelated = (w == 0) & (torch.arange(len(w)) != data.index)
    away = classes[unrelated].mean(0) if unrelated.any() else torch.zeros_like(shared)
    attack_emb, test_emb = embed(adapter, data.attack_images), embed(adapter, data.test_images)
    grid = []
    for a in budget.name_weights:
        for b in budget.unrelated_weights:
            row = F.normalize(shared + a * classes[data.index] - b * away, dim=-1)
            on_attack = score(attack_emb, with_row(classes, data.index, row), data.attack_labels, data.index)
            grid.append((on_attack["score"], a, b, row))
    _, a, b, row = max(grid, key=lambda g: g[0])
    found = score(test_emb, with_row(classes, data.index, row), data.test_labels, data.index)
    return AttackResult(found["score"], {"false_positive": found["false_positive"], "name_weight": a,
                                         "unrelated_weight": b,
                                         "neighbours": {CHARACTERS[i].name: int(v) for i, v in enumerate(w.tolist()) if v}})

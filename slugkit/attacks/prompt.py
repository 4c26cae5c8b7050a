"""Adversarial prompt (UnlearnDiffAtk-style): k discrete tokens prepended to the concept's prompt.

Each prefix token is a distribution over the vocabulary (softmax of free logits); the forward pass uses
its one-hot argmax, the backward pass the distribution's gradient (straight-through). The attacker
optimises the attacked CLIP's own zero-shot cross-entropy on the attack pictures (the concept's and other
characters', so a prompt that names everyone does not pay); the final prompt is the best one-hot prefix
seen, scored on held-out pictures.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import (AttackData, AttackResult, class_embeddings, contrastive_loss, embed, encode_with, prefixed,
                   score, trainable_vocab, with_row)


@dataclass(frozen=True)
class PromptBudget:
    tokens: int = 3
    steps: int = 40
    lr: float = 0.1


def adversarial_prompt(adapter, data: AttackData, budget: PromptBudget | None = None) -> AttackResult:
    """Optimise ``budget.tokens`` prefix tokens for "a photo of CONCEPT." on the attack pictures."""
    budget = budget or PromptBudget()
    from ..data.minicanvas import ZERO_SHOT_PROMPTS

    ids, where = prefixed(adapter, ZERO_SHOT_PROMPTS["identity"].format(data.concept), budget.tokens)
    table = adapter.token_embedding().weight.detach()
    allowed = trainable_vocab(adapter)
    gen = torch.Generator().manual_seed(data.seed)
    logits = (0.01 * torch.randn(budget.tokens, table.shape[0], generator=gen)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=budget.lr)
    images = embed(adapter, data.attack_images)
    classes = class_embeddings(adapter)
    best = (float("inf"), None)
    for _ in range(budget.steps):
        probs = F.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        hard = F.one_hot(probs.argmax(-1), table.shape[0]).to(probs.dtype)
        onehot = hard + probs - probs.detach()  # straight-through: forward one-hot, backward the distribution
        row = encode_with(adapter, ids, where, onehot @ table)
        loss = contrastive_loss(adapter, images, with_row(classes, data.index, row), data.attack_labels)
        if loss.item() < best[0]:
            best = (loss.item(), probs.argmax(-1).detach().clone())
        logits.grad, = torch.autograd.grad(loss, [logits])  # the model's weights get no gradient
        opt.step()
    prefix = best[1] if best[1] is not None else torch.zeros(budget.tokens, dtype=torch.long)
    final = ids.clone()
    final[where] = prefix
    with torch.no_grad():
        row = adapter.encode_text(final.reshape(1, -1))[0]
        found = score(embed(adapter, data.test_images), with_row(classes, data.index, row), data.test_labels,
                      data.index)
    words = adapter.token_strings(prefix)
    return AttackResult(found["score"], {"false_positive": found["false_positive"], "prefix": words,
                                         "attack_loss": best[0]})

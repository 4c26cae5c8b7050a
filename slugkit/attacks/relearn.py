"""Relearning: a few fine-tuning steps on a few pictures; does the concept come back?

:func:`relearn` fine-tunes the whole attacked CLIP (Adam, contrastive loss) on ``pictures`` pictures of the
concept mixed with retain pairs; :func:`relearn_retain` on retain pairs only (Siddiqui et al.: an unlearned
model that only hid the concept may get it back from unrelated data, a retrained one does not). The score is
forget top-1 after ``headline_step`` steps; the curve every ``eval_every`` steps is in the details. The
model's weights are restored afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.toy_clip import multi_positive_clip_loss
from .base import AttackData, AttackResult, class_embeddings, embed, score


@dataclass(frozen=True)
class RelearnBudget:
    steps: int = 50
    headline_step: int = 10
    pictures: int = 5  # of the concept (0 in the retain-only variant)
    batch_size: int = 8
    lr: float = 1e-4
    eval_every: int = 5


def relearn(adapter, data: AttackData, budget: RelearnBudget | None = None) -> AttackResult:
    """Fine-tune on ``budget.pictures`` pictures of the concept mixed with retain pairs."""
    return _finetune(adapter, data, budget or RelearnBudget())


def relearn_retain(adapter, data: AttackData, budget: RelearnBudget | None = None) -> AttackResult:
    """Fine-tune on retain pairs only (no picture or caption of the concept)."""
    budget = budget or RelearnBudget()
    return _finetune(adapter, data, RelearnBudget(**{**budget.__dict__, "pictures": 0}))


def _finetune(adapter, data: AttackData, budget: RelearnBudget) -> AttackResult:
    if not 0 < budget.headline_step <= budget.steps or budget.headline_step % budget.eval_every:
        raise ValueError(f"headline_step must be a multiple of eval_every within 1..steps, got {budget}")
    own = [i for i, y in enumerate(data.attack_labels) if y == data.index][: budget.pictures]
    if len(own) < budget.pictures:
        raise ValueError(f"only {len(own)} attack pictures of {data.concept!r}, fewer than {budget.pictures}")
    n_own = min(len(own), budget.batch_size // 2)
    gen = np.random.default_rng(data.seed)
    model = adapter.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=budget.lr)

    def measure(step):
        with torch.no_grad():
            return {"step": step, **score(embed(adapter, data.test_images), class_embeddings(adapter),
                                          data.test_labels, data.index)}

    curve = [measure(0)]
    try:
        for step in range(1, budget.steps + 1):
            mine = gen.choice(own, n_own, replace=False) if n_own else np.zeros(0, int)
            rest = gen.choice(len(data.retain_images), budget.batch_size - n_own, replace=False)
            images = np.concatenate([data.attack_images[mine], data.retain_images[rest]])
            captions = [data.attack_captions[i] for i in mine] + [data.retain_captions[i] for i in rest]
            img = adapter.encode_image(adapter.preprocess(torch.from_numpy(images)))
            txt = adapter.encode_text(adapter.tokenize(captions))
            same = torch.tensor([[a == b for b in captions] for a in captions])
            loss = multi_positive_clip_loss(img, txt, adapter.logit_scale(), same)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % budget.eval_every == 0:
                curve.append(measure(step))
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    headline = next(c for c in curve if c["step"] == budget.headline_step)
    return AttackResult(headline["score"], {"false_positive": headline["false_positive"],
                                            "curve": [{"step": c["step"], "score": c["score"]} for c in curve]})

"""Relearning: a few fine-tuning steps on a few pictures; does the concept come back?

:func:`relearn` fine-tunes the whole attacked CLIP (Adam, the toy CLIP's own multi-positive contrastive loss)
on ``pictures`` pictures of the concept mixed with retain pairs; :func:`relearn_retain` on retain pairs only
(Siddiqui et al.: an unlearned model that only hid the concept may get it back from unrelated data, a
retrained one does not). In a batch, a caption is a positive for every picture it is true of (two pictures of
the concept under different templates are not pushed apart). The score is forget top-1 after
``headline_step`` steps; the curve (measured before fine-tuning and after every step in ``curve_steps``) is
in the details. The model's weights are restored afterwards. :func:`finetune` is the loop itself, shared with the
hosts' relearning (:func:`~slugkit.attacks.sd.sd_relearn`, :func:`~slugkit.attacks.llava.llava_relearn`).
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
    # 3e-5: the largest lr of the probe's grid (1e-4, 5e-5, 3e-5, 2e-5; scripts/relearn_probe.py, docs/robustness.md)
    # at which the fine-tune leaves every original toy CLIP at 1.00 on its character at every step 1..20; at 1e-4
    # it dipped models that know the character (Mira Quell 0.87 after 10 steps, 0.12 after 20)
    lr: float = 3e-5
    curve_steps: tuple[int, ...] = (2, 5, 10, 20, 50)  # where the curve is measured (each costs one evaluation)


def relearn(adapter, data: AttackData, budget: RelearnBudget | None = None) -> AttackResult:
    """Fine-tune on ``budget.pictures`` pictures of the concept mixed with retain pairs."""
    return _finetune(adapter, data, budget or RelearnBudget())


def relearn_retain(adapter, data: AttackData, budget: RelearnBudget | None = None) -> AttackResult:
    """Fine-tune on retain pairs only (no picture or caption of the concept)."""
    budget = budget or RelearnBudget()
    return _finetune(adapter, data, RelearnBudget(**{**budget.__dict__, "pictures": 0}))


def _finetune(adapter, data: AttackData, budget: RelearnBudget) -> AttackResult:
    def loss(mine, rest):
        images = np.concatenate([data.attack_images[mine], data.retain_images[rest]])
        captions = [data.attack_captions[i] for i in mine] + [data.retain_captions[i] for i in rest]
        true = [data.attack_true_captions[i] for i in mine] + [data.retain_true_captions[i] for i in rest]
        img = adapter.encode_image(adapter.preprocess(torch.from_numpy(images)))
        txt = adapter.encode_text(adapter.tokenize(captions))
        positives = torch.tensor([[c in t for c in captions] for t in true])  # caption j true of picture i
        return multi_positive_clip_loss(img, txt, adapter.logit_scale(), positives)

    def measure():
        with torch.no_grad():
            return score(embed(adapter, data.test_images), class_embeddings(adapter), data.test_labels, data.index)

    model = adapter.model
    return finetune(model, [p for p in model.parameters() if p.requires_grad], data, budget, loss, measure)


def finetune(module: torch.nn.Module, params: list, data: AttackData, budget: RelearnBudget, loss, measure
             ) -> AttackResult:
    """The relearning loop every model shares: Adam on ``params`` (of ``module``) for ``budget.steps`` steps of
    ``loss(mine, rest)`` (indices of ``data``'s attack pictures of the concept and of its retain pairs, drawn
    with ``data.seed``), ``measure()`` (a dict with ``"score"``) before and at every step of
    ``budget.curve_steps``. Gradients reach ``params`` only; ``module``'s weights (and the ``requires_grad`` of
    ``params``) are restored afterwards, bit for bit."""
    if (budget.headline_step not in budget.curve_steps or max(budget.curve_steps) != budget.steps
            or min(budget.curve_steps) < 1):
        raise ValueError(f"curve_steps must lie in 1..steps, end at steps and hold headline_step, got {budget}")
    own = [i for i, y in enumerate(data.attack_labels) if y == data.index][: budget.pictures]
    if len(own) < budget.pictures:
        raise ValueError(f"only {len(own)} attack pictures of {data.concept!r}, fewer than {budget.pictures}")
    n_own = min(len(own), budget.batch_size // 2)
    gen = np.random.default_rng(data.seed)
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    # fused: one pass over the weights per step (the unfused CPU Adam took as long as the forward and backward)
    opt = torch.optim.Adam(params, lr=budget.lr, fused=True)
    curve = [{"step": 0, **measure()}]
    try:
        for step in range(1, budget.steps + 1):
            mine = gen.choice(own, n_own, replace=False) if n_own else np.zeros(0, int)
            rest = gen.choice(len(data.retain_images), budget.batch_size - n_own, replace=False)
            grads = torch.autograd.grad(loss(mine, rest), params, allow_unused=True)  # nothing else gets a gradient
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            if step in budget.curve_steps:
                curve.append({"step": step, **measure()})
    finally:
        module.load_state_dict(saved)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
    headline = next(c for c in curve if c["step"] == budget.headline_step)
    return AttackResult(headline["score"], {**{k: v for k, v in headline.items() if k == "false_positive"},
                                            "curve": [{"step": c["step"], "score": c["score"]} for c in curve]})

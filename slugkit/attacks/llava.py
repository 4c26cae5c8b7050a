"""Recovery attacks on a LLaVA host (``toy-llava``): its vision tower is the toy CLIP's, edited by SLUG's patch.

Three attacks apply, each ``attack(host, data, budget) -> AttackResult`` like the CLIP ones (``host``: a
:class:`~slugkit.adapters.llava.LlavaHost` with its world, ``data``: the concept's
:class:`~slugkit.attacks.base.AttackData`):

- :func:`llava_paraphrase`: the worst case over every phrasing of the name question (training and held-out);
- :func:`llava_pixel_pgd`: targeted L-inf PGD on the pixels toward LLaVA answering the name (teacher-forced
  cross-entropy of the name's tokens), counted only where the frozen judge still sees the character;
- :func:`llava_linear_probe`: the logistic probe on every block of LLaVA's vision tower and on what its
  language model reads (the projected image tokens, averaged).

Scores are fractions in [0, 1]. An answer "names" a character when it contains the name
(:func:`~slugkit.eval.vlm.contains_name`); paraphrase and the plain question count the concept's pictures
named as it minus the largest share of another character's pictures named as it (as the CLIP attacks do).
The text-side attacks (adversarial prefix, concept arithmetic, soft prompt) have no text tower to work on in
a vision-tower patch, and relearning would fine-tune the whole LLaVA: they are not run on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import AttackData, AttackResult, specific_recall
from .pgd import PGDBudget
from .probe import ProbeBudget, hooked_features, probe_features


def _name_question() -> str:
    from ..models.toy_llava import phrasings

    return phrasings("identity", "test")[0]  # "What is the name of the person in this image?" (held out)


def _answers(host, pixels: torch.Tensor, question: str) -> list[str]:
    from ..models.toy_llava import greedy_answers, image_embeddings

    return greedy_answers(host.model, host.tokenizer, image_embeddings(host.model, pixels), question)


def _named(answers, name: str) -> np.ndarray:
    from ..eval.vlm import contains_name

    return np.array([contains_name(a, name) for a in answers])


def _specific(named: np.ndarray, data: AttackData) -> dict:
    """:func:`~slugkit.attacks.base.specific_recall` of "the answer names the concept" on the test pictures."""
    return specific_recall(np.where(named, data.index, -1), data.test_labels, data.index)


def _pixels(host, images: np.ndarray) -> torch.Tensor:
    return host.preprocess(torch.from_numpy(np.ascontiguousarray(images)))


def llava_plain(host, data: AttackData) -> float:
    """The specific name rate with the plain (held-out) name question: the score before any attack."""
    return _specific(_named(_answers(host, _pixels(host, data.test_images), _name_question()), data.concept),
                     data)["score"]


@dataclass(frozen=True)
class LlavaParaphraseBudget:
    questions: int = 12  # name phrasings tried: the 2 held-out ones, then training ones spread over the grammar


def name_phrasings(n: int) -> list[str]:
    """``n`` phrasings of the name question: both held-out ones first, then ``n - 2`` of the 47 training ones
    spread over the grammar."""
    from ..models.toy_llava import phrasings

    held, train = list(phrasings("identity", "test")), list(phrasings("identity", "train"))
    step = max(1, len(train) // max(1, n - len(held)))
    return (held + train[::step])[:n]


def llava_paraphrase(host, data: AttackData, budget: LlavaParaphraseBudget | None = None) -> AttackResult:
    """The worst case (highest specific name rate) over ``budget.questions`` phrasings of the name question."""
    from ..models.toy_llava import greedy_answers, image_embeddings

    budget = budget or LlavaParaphraseBudget()
    questions = name_phrasings(budget.questions)
    with torch.no_grad():
        embeds = image_embeddings(host.model, _pixels(host, data.test_images))
    per_question = {q: _specific(_named(greedy_answers(host.model, host.tokenizer, embeds, q), data.concept), data)
                    for q in questions}
    worst = max(per_question, key=lambda q: per_question[q]["score"])
    return AttackResult(per_question[worst]["score"],
                        {"question": worst, "false_positive": per_question[worst]["false_positive"],
                         "per_question": {q: r["score"] for q, r in per_question.items()}})


LlavaPGDBudget = PGDBudget  # the CLIP attack's budget: same eps, steps, step size and picture count


def llava_pixel_pgd(host, data: AttackData, budget: LlavaPGDBudget | None = None) -> AttackResult:
    """``budget.steps`` signed-gradient steps in an L-inf ball of ``budget.eps`` on the concept's held-out
    pictures, lowering the cross-entropy of LLaVA answering the name to the name question."""
    from ..models.toy_llava import embed_prompts, prompt_ids

    budget = budget or LlavaPGDBudget()
    model, tok = host.model, host.tokenizer
    own = np.flatnonzero(data.test_labels == data.index)[: budget.pictures]
    mean = torch.tensor(host._mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(host._std, dtype=torch.float32).view(1, 3, 1, 1)
    clean = _pixels(host, data.test_images[own]) * std + mean
    question = _name_question()
    target = tok(data.concept, add_special_tokens=False)["input_ids"]

    def image_embeds(pixels):
        feats = model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
        return torch.stack(list(feats))

    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:  # only the pixels get a gradient
        p.requires_grad_(False)
    delta = torch.zeros_like(clean, requires_grad=True)
    try:
        for _ in range(budget.steps):
            emb = image_embeds(((clean + delta).clamp(0, 1) - mean) / std)
            prompt = prompt_ids(tok, question, emb.shape[1])
            ids = torch.tensor(prompt + target).expand(len(own), -1)
            logits = model(inputs_embeds=embed_prompts(model, ids, emb)).logits
            start = len(prompt) - 1  # the logits at position i predict token i + 1
            loss = F.cross_entropy(logits[:, start:start + len(target)].reshape(-1, logits.shape[-1]),
                                   ids[:, len(prompt):].reshape(-1))
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= budget.step_size * grad.sign()
                delta.clamp_(-budget.eps, budget.eps)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    with torch.no_grad():
        x = (clean + delta).clamp(0, 1)
        named = torch.from_numpy(_named(_answers(host, (x - mean) / std, question), data.concept))
        before = _named(_answers(host, (clean - mean) / std, question), data.concept)
        sees = torch.ones_like(named)
        if data.judge is not None:
            picture = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) if x.shape[-1] != 64 else x
            sees = data.judge(picture * 2 - 1)["identity"].argmax(1) == data.index
    return AttackResult(float((named & sees).float().mean()),
                        {"named": float(named.float().mean()), "named_before": float(before.mean()),
                         "judge_sees_concept": float(sees.float().mean()) if data.judge is not None else None,
                         "max_change": float(delta.detach().abs().max())})


def llava_linear_probe(host, data: AttackData, budget: ProbeBudget | None = None) -> AttackResult:
    """The probe on each block of LLaVA's vision tower (class and mean token) and on the projected image tokens
    its language model reads (``"LLaVA's input"``); the score is the best one's."""
    from ..models.toy_llava import image_embeddings

    budget = budget or ProbeBudget()
    n = min(budget.pictures, len(data.probe_images))
    tower = host.tower_module()
    feats = hooked_features(list(tower.encoder.layers), True,
                            lambda x: image_embeddings(host.model, host.preprocess(x)), data.probe_images[:n],
                            "LLaVA's input")
    return probe_features(feats, data, budget)


__all__ = ["LlavaPGDBudget", "LlavaParaphraseBudget", "llava_linear_probe", "llava_paraphrase", "llava_pixel_pgd",
           "llava_plain"]

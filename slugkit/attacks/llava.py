"""Recovery attacks on a LLaVA host (``toy-llava``): its vision tower is the toy CLIP's, edited by SLUG's patch.

Five attacks apply, each ``attack(host, data, budget) -> AttackResult`` like the CLIP ones (``host``: a
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
:func:`llava_relearn` (and :func:`llava_relearn_retain`) fine-tune the vision tower, what the patch edits, with
LLaVA's own answer loss and score the plain question afterwards. The text-side attacks (adversarial prefix,
concept arithmetic, soft prompt) have no text tower to work on in a vision-tower patch: they are not run on it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .base import AttackData, AttackResult, specific_recall
from .pgd import PGDBudget
from .probe import ProbeBudget, hooked_features, probe_features
from .relearn import RelearnBudget, finetune


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


def _image_embeds(model, pixels: torch.Tensor) -> torch.Tensor:
    """The projected image features ``(N, T, text hidden)`` of ``pixels``, keeping the gradient."""
    return torch.stack(list(model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output))


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

    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:  # only the pixels get a gradient
        p.requires_grad_(False)
    delta = torch.zeros_like(clean, requires_grad=True)
    try:
        for _ in range(budget.steps):
            emb = _image_embeds(model, ((clean + delta).clamp(0, 1) - mean) / std)
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


def llava_relearn(host, data: AttackData, budget: RelearnBudget | None = None) -> AttackResult:
    """Fine-tune LLaVA's vision tower (what the patch edits; projector and language model frozen) with LLaVA's own
    answer loss (the name, after a training phrasing of the name question) on ``budget.pictures`` pictures of the
    concept mixed with the retain pairs' character pictures (batch ``budget.batch_size``); the score is :func:`llava_plain` after
    ``budget.headline_step`` steps. Weights restored afterwards."""
    return _llava_finetune(host, data, budget or RelearnBudget())


def llava_relearn_retain(host, data: AttackData, budget: RelearnBudget | None = None) -> AttackResult:
    """:func:`llava_relearn` on the retain pairs' character pictures only (no picture of the concept)."""
    return _llava_finetune(host, data, RelearnBudget(**{**(budget or RelearnBudget()).__dict__, "pictures": 0}))


def retain_names(data: AttackData) -> list[str | None]:
    """Per retain picture, the character it shows (the name its true captions carry), None for an object."""
    from ..data.minicanvas import CHARACTER_NAMES

    return [next((n for n in CHARACTER_NAMES if any(n in c for c in true)), None) for true in data.retain_true_captions]


def _llava_finetune(host, data: AttackData, budget: RelearnBudget) -> AttackResult:
    from ..models.toy_llava import EOS, PAD, padded_answers, phrasings, projected_answer_loss, prompt_ids

    model, tok = host.model, host.tokenizer
    names = retain_names(data)
    shown = [i for i, n in enumerate(names) if n is not None]  # objects have no name to answer: not drawn
    names = [names[i] for i in shown]
    data = replace(data, retain_images=data.retain_images[shown],
                   retain_captions=[data.retain_captions[i] for i in shown],
                   retain_true_captions=[data.retain_true_captions[i] for i in shown])
    questions = phrasings("identity", "train")
    eos, pad = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(PAD)
    rng = np.random.default_rng(data.seed + 1)  # the training phrasing of each example

    def loss(mine, rest):
        images = np.concatenate([data.attack_images[mine], data.retain_images[rest]])
        answers = [data.concept] * len(mine) + [names[i] for i in rest]
        embeds = _image_embeds(model, _pixels(host, images))
        seqs, starts = [], []
        for answer in answers:
            prompt = prompt_ids(tok, questions[rng.integers(len(questions))], embeds.shape[1])
            seqs.append(prompt + tok(answer, add_special_tokens=False)["input_ids"] + [eos])
            starts.append(len(prompt))
        return projected_answer_loss(model, embeds, *padded_answers(seqs, starts, pad))

    tower = host.tower_module()
    return finetune(tower, list(tower.parameters()), data, budget, loss, lambda: {"score": llava_plain(host, data)})


__all__ = ["LlavaPGDBudget", "LlavaParaphraseBudget", "llava_linear_probe", "llava_paraphrase", "llava_pixel_pgd",
           "llava_plain", "llava_relearn", "llava_relearn_retain", "retain_names"]

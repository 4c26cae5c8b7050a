"""Soft prompts and paraphrases: does another way of asking bring the concept back?

:func:`soft_prompt` learns one new token embedding by textual inversion (Concept Inversion, Pham et al.):
"a photo of <v>." with every weight frozen, on the attack pictures. :func:`paraphrase` takes the worst case
over phrasings the zero-shot prompt never used: other caption templates, one part of the name, misspellings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.minicanvas import CHARACTER_NAMES
from .base import (AttackData, AttackResult, class_embeddings, contrastive_loss, embed, encode_with, score,
                   slot_positions, with_row)


@dataclass(frozen=True)
class SoftPromptBudget:
    steps: int = 100
    lr: float = 5e-3
    pictures: int = 8  # of the concept (plus as many of other characters)


def soft_prompt(adapter, data: AttackData, budget: SoftPromptBudget | None = None) -> AttackResult:
    """Learn the embedding of one new word <v> so that "a photo of <v>." names the concept's pictures.

    <v> starts at the mean embedding of the other characters' name tokens (a neutral, trained start).
    """
    budget = budget or SoftPromptBudget()
    ids, pos = slot_positions(adapter, "a photo of {}.")
    where = slice(pos, pos + 1)
    table = adapter.token_embedding().weight.detach()
    names = adapter.tokenize([n for i, n in enumerate(CHARACTER_NAMES) if i != data.index])
    name_ids = names[(names > 0) & (names < names.max(1, keepdim=True).values) & (torch.arange(names.shape[1]) > 0)]
    vec = table[name_ids].mean(0, keepdim=True).clone().requires_grad_(True)
    keep = _first_per_class(data, budget.pictures)
    images = embed(adapter, data.attack_images[keep])
    labels = data.attack_labels[keep]
    classes = class_embeddings(adapter)
    opt = torch.optim.Adam([vec], lr=budget.lr)
    for _ in range(budget.steps):
        row = encode_with(adapter, ids, where, vec)
        loss = contrastive_loss(adapter, images, with_row(classes, data.index, row), labels)
        vec.grad, = torch.autograd.grad(loss, [vec])  # the model's weights get no gradient
        opt.step()
    with torch.no_grad():
        row = encode_with(adapter, ids, where, vec)
        found = score(embed(adapter, data.test_images), with_row(classes, data.index, row), data.test_labels,
                      data.index)
    return AttackResult(found["score"], {"false_positive": found["false_positive"], "final_loss": loss.item()})


def _first_per_class(data: AttackData, n: int):
    """Indices of the first ``n`` attack pictures of the concept and the first ``n`` of other characters."""
    own = [i for i, y in enumerate(data.attack_labels) if y == data.index][:n]
    other = [i for i, y in enumerate(data.attack_labels) if y != data.index][:n]
    return own + other


def misspellings(word: str) -> list[str]:
    """Three deterministic typos of ``word``: two inner letters swapped, one letter dropped, one doubled."""
    if len(word) < 4:
        return [word + word[-1]]
    mid = len(word) // 2
    return [word[:mid - 1] + word[mid] + word[mid - 1] + word[mid + 1:], word[:mid] + word[mid + 1:],
            word[:mid] + word[mid] + word[mid:]]


def phrasings(name: str) -> dict[str, str]:
    """Held-out ways to name the character: kind -> prompt (never the zero-shot "a photo of NAME.")."""
    parts = name.split()
    out = {"template: a portrait of": f"a portrait of {name}.", "template: bare name": f"{name}.",
           "template: in a picture": f"{name} in a picture.", "template: smiling": f"{name} smiling.",
           "unseen: an image of": f"an image of {name}.", "unseen: a drawing of": f"a drawing of {name}.",
           "first name": f"a photo of {parts[0]}.", "last name": f"a photo of {parts[-1]}."}
    for k, typo in enumerate(misspellings(parts[-1])):
        out[f"misspelling {k + 1}"] = f"a photo of {' '.join(parts[:-1] + [typo])}."
    return out


@dataclass(frozen=True)
class ParaphraseBudget:
    phrasings: int = 11  # how many of :func:`phrasings` (in order) are tried


def paraphrase(adapter, data: AttackData, budget: ParaphraseBudget | None = None) -> AttackResult:
    """The worst case (highest forget top-1) over held-out phrasings of the concept's prompt."""
    budget = budget or ParaphraseBudget()
    options = list(phrasings(data.concept).items())[: budget.phrasings]
    classes = class_embeddings(adapter)
    with torch.no_grad():
        rows = adapter.encode_text(adapter.tokenize([p for _, p in options]))
        test_emb = embed(adapter, data.test_images)
        each = {k: score(test_emb, with_row(classes, data.index, rows[j]), data.test_labels, data.index)
                for j, (k, _) in enumerate(options)}
    worst = max(each, key=lambda k: each[k]["score"])
    return AttackResult(each[worst]["score"], {"worst": worst, "prompt": dict(options)[worst],
                                               "false_positive": each[worst]["false_positive"],
                                               "per_phrasing": {k: v["score"] for k, v in each.items()}})


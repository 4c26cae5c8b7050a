"""Metrics on judged generations (text-to-image hosts): generation accuracy, UA / IRA / CRA, an FID-like score.

The protocol follows UnlearnCanvas: a classifier independent of the edited model (the *judge*) labels every
generated picture.

* **generation accuracy** of a concept: the share of its prompt's generations (one per seed) the judge labels
  as that concept; an attribute's ``top1`` is the mean over its concepts;
* **UA** (unlearning accuracy): the share of forget-prompt generations the judge does *not* label as the
  forgotten concept (after unlearning; 1 - generation accuracy);
* **IRA** (in-domain retain accuracy): mean generation accuracy over the *other* concepts of the same attribute;
* **CRA** (cross-domain retain accuracy): mean generation accuracy over the concepts of the other attributes;
* **FID-like score** (``fid_after``): the Fréchet distance between two Gaussians fitted to the judge's pooled
  features of the cross-domain (unrelated-prompt) generations before and after unlearning, from the *same*
  prompts and seeds. It is 0 for an unchanged model and grows as unrelated pictures drift. Unlike the real FID
  it uses the judge's features (not Inception's) and a few hundred pictures, so compare it only with itself.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# prompts per attribute: the zero-shot templates of the MiniCanvas world (they are training captions)
DEFAULT_PROMPTS = {
    "identity": "a photo of {}.",
    "object": "a photo of a {}.",
    "style": "a drawing in {} style.",
    "colour": "something {}.",
}


def prompt_for(attribute: str, name: str, templates: Mapping[str, str] = DEFAULT_PROMPTS) -> str:
    """The generation prompt of concept ``name`` of ``attribute`` (lower-cased except for characters)."""
    if attribute not in templates:
        raise ValueError(f"no prompt template for attribute {attribute!r}; expected one of {sorted(templates)}")
    return templates[attribute].format(name if attribute == "identity" else name.lower())


def concept_prompts(attributes: Mapping[str, Sequence[str]],
                    templates: Mapping[str, str] = DEFAULT_PROMPTS) -> list[tuple[str, str, str]]:
    """Every ``(attribute, concept, prompt)`` of ``attributes`` (``{attribute: class names}``), in order."""
    return [(a, n, prompt_for(a, n, templates)) for a, names in attributes.items() for n in names]


def judged_accuracy(labels: Mapping[tuple[str, str], np.ndarray],
                    attributes: Mapping[str, Sequence[str]]) -> dict:
    """The eval contract from judge labels.

    ``labels[(attribute, concept)]``: the judge's class index (within ``attributes[attribute]``) for each
    generation of that concept's prompt, -1 where the judge saw no such thing. Returns
    ``{attribute: {"top1": mean over concepts, "per_concept": {concept: share labelled as it}}}``.
    """
    out = {}
    for a, names in attributes.items():
        per = {}
        for k, n in enumerate(names):
            y = np.asarray(labels[(a, n)])
            per[n] = float((y == k).mean()) if len(y) else float("nan")
        out[a] = {"top1": float(np.mean(list(per.values()))), "per_concept": per}
    return out


def unlearning_scores(acc: Mapping[str, dict], attribute: str, concept: str) -> dict:
    """``{"ua", "ira", "cra"}`` from one eval-contract dict (see :func:`judged_accuracy`) for ``concept``."""
    if attribute not in acc or concept not in acc[attribute]["per_concept"]:
        raise ValueError(f"concept {concept!r} of attribute {attribute!r} was not generated")
    per = acc[attribute]["per_concept"]
    others = [v for n, v in per.items() if n != concept]
    cross = [v for a, m in acc.items() if a != attribute for v in m["per_concept"].values()]
    return {"ua": 1.0 - per[concept], "ira": float(np.mean(others)) if others else float("nan"),
            "cra": float(np.mean(cross)) if cross else float("nan")}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a (N, D)`` and ``b (M, D)``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})``; 0 when the sets are identical.
    """
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"expected two feature sets (N, D) with the same D and N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    covmean = np.real(covmean)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
    return max(0.0, value)


def report_from(before: Mapping[str, dict], after: Mapping[str, dict], attribute: str, concept: str,
                fid_after: float | None = None) -> dict:
    """The flat host metrics of ``report.json``: ``ua_/ira_/cra_before/after`` (+ ``fid_after``)."""
    b, a = unlearning_scores(before, attribute, concept), unlearning_scores(after, attribute, concept)
    out = {f"{k}_{when}": round(v, 4) for when, d in (("before", b), ("after", a)) for k, v in d.items()}
    if fid_after is not None:
        out["fid_after"] = round(float(fid_after), 4)
    return out

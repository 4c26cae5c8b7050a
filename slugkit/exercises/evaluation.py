"""Notebook 05's exercise: the evaluation's accuracies by hand — forget top-1, forget top-5 and retain top-1."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .feedback import Feedback, raised


def _accuracy_cases() -> list[dict]:
    """Similarity matrices ``(pictures, classes)`` of a good-but-imperfect model, labels with -1 = no class."""
    rng = np.random.default_rng(5)
    cases = []
    for n, n_classes, concept in ((80, 8, 2), (120, 10, 7)):
        labels = rng.integers(-1, n_classes, size=n)
        labels[:12] = concept  # enough pictures of the concept
        scores = rng.normal(size=(n, n_classes))
        known = labels >= 0
        boost = rng.uniform(0, 3, size=n)  # some pictures are recognised, some second or third, some lost
        scores[np.flatnonzero(known), labels[known]] += boost[known]
        cases.append({"scores": torch.tensor(scores, dtype=torch.float32), "labels": labels, "concept": concept})
    return cases


def _topk_hit(scores: np.ndarray, labels: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    order = np.argsort(-scores if largest else scores, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(1)


def _accuracies(scores: np.ndarray, labels: np.ndarray, concept: int) -> tuple[float, float, float]:
    forget, retain = labels == concept, (labels >= 0) & (labels != concept)
    top1, top5 = _topk_hit(scores, labels, 1), _topk_hit(scores, labels, 5)
    return float(top1[forget].mean()), float(top5[forget].mean()), float(top1[retain].mean())


def check_forget_retain_accuracy(fn: Callable) -> Feedback:
    """Check ``fn(scores, labels, concept) -> (forget_top1, forget_top5, retain_top1)``.

    ``scores`` is a ``(pictures, classes)`` tensor of image-prompt similarities, ``labels`` the true class
    index of each picture (``-1``: the picture has no class of this attribute), ``concept`` the forgotten
    class. Forget accuracies count only the concept's pictures; retain top-1 counts the pictures of every
    other class (pictures labelled -1 count nowhere). A picture is right at top-k when its class is among the
    k highest scores. Return fractions in [0, 1].
    """
    for c, case in enumerate(_accuracy_cases()):
        scores, labels, concept = case["scores"], case["labels"], case["concept"]
        try:
            out = fn(scores.clone(), labels.copy(), concept)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError("return a tuple (forget_top1, forget_top5, retain_top1)")
            got = tuple(float(v) for v in out)
        except Exception as err:
            return Feedback("forget and retain accuracy", False, [raised(err, f"case {c}")])
        want = _accuracies(scores.numpy(), labels, concept)
        if not all(math.isclose(g, w, abs_tol=1e-6) for g, w in zip(got, want)):
            return Feedback("forget and retain accuracy", False, [_diagnose(got, want, scores.numpy(), labels, concept)])
    return Feedback("forget and retain accuracy", True, [
        "forget top-1, forget top-5 and retain top-1 match slugkit.eval's definitions on every case (pictures "
        "without a class left out, top-5 from the five highest scores)"])


def _diagnose(got, want, scores, labels, concept) -> str:
    names = ("forget top-1", "forget top-5", "retain top-1")
    if all(math.isclose(g, 100 * w, abs_tol=1e-4) for g, w in zip(got, want)):
        return "return fractions in [0, 1], not percentages"
    top1, top5 = _topk_hit(scores, labels, 1), _topk_hit(scores, labels, 5)
    labelled, concept_pics = labels >= 0, labels == concept
    low1, low5 = _topk_hit(scores, labels, 1, largest=False), _topk_hit(scores, labels, 5, largest=False)
    lowest = "you took the LOWEST scores: the best classes have the highest scores (sort descending, or torch.topk)"
    checks = {
        0: [(top1[labelled].mean(), "forget top-1 counted every picture: count only the pictures OF the concept "
                                    "(labels == concept)"),
            (top1[concept_pics].mean() * concept_pics.mean(), "forget top-1 divided by all pictures: divide by the "
                                                              "number of the concept's pictures"),
            (low1[concept_pics].mean(), lowest)],
        1: [(top1[concept_pics].mean(), "your forget top-5 equals forget top-1: a picture counts at top-5 when its "
                                        "class is anywhere among the five highest scores"),
            (low5[concept_pics].mean(), lowest),
            (top5[labelled].mean(), "forget top-5 counted every picture: count only the pictures OF the concept")],
        2: [(top1[labelled].mean(), "retain top-1 included the concept's own pictures: retain counts only the "
                                    "pictures of the OTHER classes (labels >= 0 and labels != concept)"),
            (top1[labels != concept].mean(), "retain top-1 counted pictures labelled -1 as mistakes: a picture with "
                                             "no class of this attribute counts nowhere (keep labels >= 0)"),
            (low1[labelled & ~concept_pics].mean(), lowest)],
    }
    if all(math.isclose(g, w, abs_tol=1e-6) for g, w in zip(sorted(got), sorted(want))):
        return "the three values are in the wrong order: return (forget_top1, forget_top5, retain_top1)"
    i = next(i for i, (g, w) in enumerate(zip(got, want)) if not math.isclose(g, w, abs_tol=1e-6))
    for value, msg in checks[i]:
        if math.isclose(got[i], float(value), abs_tol=1e-6):
            return msg
    return (f"{names[i]} is {got[i]:.4f}, expected {want[i]:.4f}: a picture is right at top-k when its true class is "
            "among the k highest scores of its row")

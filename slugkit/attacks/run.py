"""Run the attacks on the original, the edited and the reference model, and normalise to the reference.

``recovery = (edited - reference) / (original - reference)``, clipped to [0, 1]: 0 = the edited model is as
hard to attack as a model that never learned the concept, 1 = the attack brings the concept fully back.
It is ``None`` when there is no reference, or when the attack does as well on the reference as on the
original (the gap is below :data:`MIN_GAP`: the attack finds the concept without the model knowing it, so
its recovery cannot be read).
"""
from __future__ import annotations

import time
from dataclasses import asdict

from tqdm.auto import tqdm

from .arithmetic import ArithmeticBudget, concept_arithmetic
from .base import AttackData, class_embeddings, embed, score
from .pgd import PGDBudget, pixel_pgd
from .probe import ProbeBudget, linear_probe
from .prompt import PromptBudget, adversarial_prompt
from .relearn import RelearnBudget, relearn, relearn_retain
from .soft_prompt import ParaphraseBudget, SoftPromptBudget, paraphrase, soft_prompt

ATTACKS = {  # name -> (function, default budget); every function: (adapter, data, budget) -> AttackResult
    "adversarial_prompt": (adversarial_prompt, PromptBudget()),
    "concept_arithmetic": (concept_arithmetic, ArithmeticBudget()),
    "relearn": (relearn, RelearnBudget()),
    "relearn_retain": (relearn_retain, RelearnBudget()),
    "soft_prompt": (soft_prompt, SoftPromptBudget()),
    "paraphrase": (paraphrase, ParaphraseBudget()),
    "pixel_pgd": (pixel_pgd, PGDBudget()),
    "linear_probe": (linear_probe, ProbeBudget()),
}
# A few seconds per attack: for tests, and for `--budget quick`
QUICK = {
    "adversarial_prompt": PromptBudget(steps=5),
    "concept_arithmetic": ArithmeticBudget(name_weights=(1.0, -1.0), unrelated_weights=(0.0,)),
    "relearn": RelearnBudget(steps=4, headline_step=2, curve_steps=(2, 4)),
    "relearn_retain": RelearnBudget(steps=4, headline_step=2, curve_steps=(2, 4)),
    "soft_prompt": SoftPromptBudget(steps=5),
    "paraphrase": ParaphraseBudget(phrasings=4),
    "pixel_pgd": PGDBudget(steps=3, pictures=8),
    "linear_probe": ProbeBudget(pictures=400, max_iter=100),
}
BUDGETS = {"default": {k: b for k, (_, b) in ATTACKS.items()}, "quick": QUICK}
MIN_GAP = 0.05


def recovery(original: float | None, edited: float, reference: float | None) -> float | None:
    """``(edited - reference) / (original - reference)`` clipped to [0, 1]; None without a readable gap."""
    if original is None or reference is None or original - reference < MIN_GAP:
        return None
    return min(1.0, max(0.0, (edited - reference) / (original - reference)))


def recovery_curve(details: dict) -> list[dict] | None:
    """:func:`recovery` at every step of a budget curve measured on the original, edited and reference model
    (relearning's ``details[model]["curve"]``); None when a model or its curve is missing."""
    curves = [details.get(which, {}).get("curve") for which in ("original", "edited", "reference")]
    if any(c is None for c in curves):
        return None
    return [{"step": o["step"], "recovery": recovery(o["score"], e["score"], r["score"])} for o, e, r in zip(*curves)]


def no_attack(adapter, data: AttackData) -> float:
    """Forget top-1 with the plain zero-shot prompt on the held-out pictures (the score before any attack)."""
    return score(embed(adapter, data.test_images), class_embeddings(adapter), data.test_labels, data.index)["score"]


def run_attacks(models: dict, data: AttackData, attacks=None, budgets: str | dict = "default",
                progress: bool = True) -> dict:
    """Every attack in ``attacks`` (default all) on every model of ``models`` (``{"original", "edited",
    "reference"}`` -> adapter or None).

    Returns ``{attack: {"original", "edited", "reference", "recovery", "budget", "seconds",
    "seconds_per_model", "cpu_seconds_per_model", "details"}, "no_attack": {...}, "worst_recovery", "worst_attack", "concept"}``;
    scores are forget top-1 on held-out pictures after the attack, all in [0, 1]. Attacks with a budget curve
    on all three models (relearning) also carry ``"recovery_curve"`` (:func:`recovery_curve`); ``worst_recovery``
    reads the headline budgets only.
    """
    names = list(ATTACKS) if attacks is None else list(attacks)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; expected one of {', '.join(ATTACKS)}")
    chosen = BUDGETS[budgets] if isinstance(budgets, str) else {**BUDGETS["default"], **budgets}
    if models.get("edited") is None:
        raise ValueError("run_attacks needs an edited model (models['edited'])")
    present = {k: m for k, m in models.items() if m is not None}
    out: dict = {"concept": data.concept,
                 "no_attack": {k: (no_attack(present[k], data) if k in present else None)
                               for k in ("original", "edited", "reference")}}
    for name in tqdm(names, desc="attacks", disable=not progress):
        fn, _ = ATTACKS[name]
        budget = chosen[name]
        row = {"original": None, "edited": None, "reference": None}
        seconds, cpu, details = {}, {}, {}
        for which, adapter in present.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            result = fn(adapter, data, budget)
            seconds[which] = round(time.perf_counter() - start, 2)
            cpu[which] = round(time.process_time() - start_cpu, 2)
            row[which] = result.score
            details[which] = result.details
        row["recovery"] = recovery(row["original"], row["edited"], row["reference"])
        out[name] = {**row, "budget": asdict(budget), "seconds": round(sum(seconds.values()), 2),
                     "seconds_per_model": seconds, "cpu_seconds_per_model": cpu, "details": details}
        curve = recovery_curve(details)
        if curve is not None:  # recovery at every budget of the curve, not only the headline one
            out[name]["recovery_curve"] = curve
    rec = {n: out[n]["recovery"] for n in names if out[n]["recovery"] is not None}
    out["worst_attack"] = max(rec, key=rec.get) if rec else None
    out["worst_recovery"] = rec[out["worst_attack"]] if rec else None
    return out


__all__ = ["ATTACKS", "BUDGETS", "QUICK", "MIN_GAP", "recovery", "recovery_curve", "run_attacks", "no_attack"]

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
# `slugkit bench --attacks`: the default budgets, relearning stopped at its headline step (10 steps; its
# curve at 2, 5, 10) -- the 50-step curve took 12 of the about 20 CPU seconds per model
BENCH = {**{k: b for k, (_, b) in ATTACKS.items()},
         "relearn": RelearnBudget(steps=10, headline_step=10, curve_steps=(2, 5, 10)),
         "relearn_retain": RelearnBudget(steps=10, headline_step=10, curve_steps=(2, 5, 10))}
BUDGETS = {"default": {k: b for k, (_, b) in ATTACKS.items()}, "bench": BENCH, "quick": QUICK}
MIN_GAP = 0.05
NOT_IN_WORST_SCORE = ("linear_probe",)  # reads the features, not the model's answer (1.0 on the reference too)


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


def resolve(attacks=None, budgets: str | dict = "default", registry: dict | None = None,
            presets: dict | None = None) -> tuple[list[str], dict]:
    """The attack names (default all of ``registry``, default :data:`ATTACKS`) and their budgets: a preset of
    ``presets`` (default :data:`BUDGETS`) or ``{name: budget}`` overriding the default ones; a clear error on an
    unknown attack or preset."""
    registry, presets = registry or ATTACKS, presets or BUDGETS
    names = list(registry) if attacks is None else list(attacks)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; expected one of {', '.join(registry)}")
    if isinstance(budgets, str):
        if budgets not in presets:
            raise ValueError(f"unknown budget preset {budgets!r}; expected one of {', '.join(presets)}")
        return names, presets[budgets]
    return names, {**presets["default"], **budgets}


def attack_model(adapter, data: AttackData, names: list[str], budgets: dict, bar=None, registry: dict | None = None,
                 plain=no_attack) -> dict:
    """Every attack of ``names`` on one model: ``{"no_attack": score, attack: {"score", "details", "seconds",
    "cpu_seconds"}}`` (``budgets``: name -> budget, e.g. from :func:`resolve`; ``bar``: a tqdm bar to advance;
    ``registry``: name -> (function, default budget), default :data:`ATTACKS`; ``plain(adapter, data)``: the
    score before any attack)."""
    registry = registry or ATTACKS
    out: dict = {"no_attack": plain(adapter, data)}
    for name in names:
        fn, _ = registry[name]
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn(adapter, data, budgets[name])
        out[name] = {"score": result.score, "details": result.details,
                     "seconds": round(time.perf_counter() - start, 2),
                     "cpu_seconds": round(time.process_time() - start_cpu, 2)}
        if bar is not None:
            bar.update(1)
    return out


def combine(per_model: dict, data: AttackData, names: list[str], budgets: dict) -> dict:
    """The report of :func:`run_attacks` from the :func:`attack_model` results of ``{"original", "edited",
    "reference"}`` (a missing or None model: its scores are None)."""
    present = {k: r for k, r in per_model.items() if r is not None}
    out: dict = {"concept": data.concept,
                 "no_attack": {k: present[k]["no_attack"] if k in present else None
                               for k in ("original", "edited", "reference")}}
    for name in names:
        row = {k: present[k][name]["score"] if k in present else None for k in ("original", "edited", "reference")}
        row["recovery"] = recovery(row["original"], row["edited"], row["reference"])
        seconds = {k: r[name]["seconds"] for k, r in present.items()}
        details = {k: r[name]["details"] for k, r in present.items()}
        out[name] = {**row, "budget": asdict(budgets[name]), "seconds": round(sum(seconds.values()), 2),
                     "seconds_per_model": seconds,
                     "cpu_seconds_per_model": {k: r[name]["cpu_seconds"] for k, r in present.items()},
                     "details": details}
        curve = recovery_curve(details)
        if curve is not None:  # recovery at every budget of the curve, not only the headline one
            out[name]["recovery_curve"] = curve
    rec = {n: out[n]["recovery"] for n in names if out[n]["recovery"] is not None}
    out["worst_attack"] = max(rec, key=rec.get) if rec else None
    out["worst_recovery"] = rec[out["worst_attack"]] if rec else None
    scored = {n: out[n]["edited"] for n in names if n not in NOT_IN_WORST_SCORE and out[n]["edited"] is not None}
    out["worst_score_attack"] = max(scored, key=scored.get) if scored else None
    out["worst_score"] = scored[out["worst_score_attack"]] if scored else None
    return out


def run_attacks(models: dict, data: AttackData, attacks=None, budgets: str | dict = "default",
                progress: bool = True) -> dict:
    """Every attack in ``attacks`` (default all) on every model of ``models`` (``{"original", "edited",
    "reference"}`` -> adapter or None).

    Returns ``{attack: {"original", "edited", "reference", "recovery", "budget", "seconds",
    "seconds_per_model", "cpu_seconds_per_model", "details"}, "no_attack": {...}, "worst_recovery", "worst_attack",
    "worst_score", "worst_score_attack", "concept"}``; scores are forget top-1 on held-out pictures after the
    attack, all in [0, 1]. Attacks with a budget curve on all three models (relearning) also carry
    ``"recovery_curve"`` (:func:`recovery_curve`); ``worst_recovery`` reads the headline budgets only;
    ``worst_score`` is the edited model's highest score over the attacks but the linear probe (which reads
    the features, not the model's answer), the worst case when there is no reference.
    """
    names, chosen = resolve(attacks, budgets)
    if models.get("edited") is None:
        raise ValueError("run_attacks needs an edited model (models['edited'])")
    present = {k: m for k, m in models.items() if m is not None}
    with tqdm(total=len(names) * len(present), desc="attacks", disable=not progress) as bar:
        per_model = {k: attack_model(m, data, names, chosen, bar) for k, m in present.items()}
    return combine(per_model, data, names, chosen)


__all__ = ["ATTACKS", "BENCH", "BUDGETS", "QUICK", "MIN_GAP", "attack_model", "combine", "recovery", "recovery_curve",
           "resolve", "run_attacks", "no_attack"]

"""The paper's comparison in one command: SLUG and the baselines, same data, same evaluation, same stop rule.

    slugkit bench --model toy-clip --out runs/bench

For every concept x seed, every method runs on the task :func:`slugkit.tasks.toy_task` builds (SLUG's
forget / retain pairs and search split), must meet the same :class:`~slugkit.step_size_search.Target`
(default: forget top-5 = 0 on the search split), and is then measured by
:func:`slugkit.eval.metrics.evaluate_unlearning` on the held-out test split. Multi-concept: three
characters forgotten the paper's way (one layer per concept, :func:`slugkit.multi.unlearn_many`, with slugkit's
retain repair), and by one joint SLUG run.

Writes ``bench.json`` (one row per method x concept x seed, plus the unedited model as "original"),
``bench.md`` (the tables) and ``tradeoff.png`` (utility vs forget accuracy, marker area = time).

Cost is measured by :class:`~slugkit.eval.metrics.CostMeter` around the unlearning procedure only
(SLUG: gradients + layer identification + step-size search; baselines: their whole grid, including
the evaluations their stop rule needs); the final evaluation is timed separately (``eval_seconds``).
All methods run one after another in this process; memory is the peak RSS while the method ran
(model and data included) after handing freed memory back to the OS, and its increase over the start.

SLUG's single-concept rows carry ``unlearn_seconds`` (cold: the per-model retain gradient computed inside the
timing) and ``unlearn_seconds_warm`` (the same run again, reusing that retain gradient from memory).

Equal quality (``BenchConfig.match``, default GA+FT and SalUn): a baseline's time to reach the forget target
is not a fair price when it loses more retain and utility than SLUG on the way. Each baseline in ``match``
therefore runs again with :func:`slugkit.baselines.match_baseline`: its learning-rate grid until its edit meets
SLUG's forget target *and* SLUG's retain (``retain_top1``) and utility within 1 point, all measured by the
task's search evaluator on the **search (val) split**, the split both stop rules use, against SLUG's metrics of
its chosen edit on that split; or until ``match_budget`` optimiser steps are spent. Its row gains
``match_seconds`` (``None`` when not matched), ``match_steps`` (the steps it took; the budget when not matched)
and ``match_budget``.
SLUG runs first on each concept; without a SLUG edit to match (SLUG not run, or no patch) there is no match
run and the match fields are ``None``.

Recovery attacks (``BenchConfig.attacks``, ``slugkit bench --attacks``): every attack of :mod:`slugkit.attacks`
runs on each character's rows (the original and every method's edited model, after its evaluation and outside
its timing) with the budgets of ``attack_budget`` (default ``"bench"``, :data:`slugkit.attacks.BENCH`), and,
where the toy CLIP retrained without the character is shipped, on that model too, which gets its own row
("Reference (never saw it)", measured like every method, its MIA included). Rows gain ``attack_<name>`` (the
score after each attack), ``attack_worst`` (the worst recovery against the reference where it exists, else the
highest score but the linear probe's; ``attack_worst_kind``), ``attack_seconds`` / ``attack_cpu_seconds`` and
the budgets; ``bench.json``'s ``attack_seconds`` (``{"wall", "cpu"}``) is all the time ``--attacks`` added.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .baselines import MATCH_BUDGET_STEPS, match_baseline, make_baseline, run_baseline
from .data.minicanvas import cached_split, find_concept
from .data.pairs import mentions
from .gradients import clear_retain_memo
from .eval.metrics import (ConceptSetEvaluator, CostMeter, changed_bytes, concept_label, evaluate_unlearning,
                           mia_pictures, resolve_concepts, snapshot, toy_training_world)
from .multi import unlearn_many
from .resources import data_dir
from .slug import STATUS_INCOMPLETE, model_bytes, unlearn
from .step_size_search import Target
from .tasks import Evaluator, Task, toy_task

DEFAULT_CONCEPTS = ("Captain Zorp", "Mira Quell", "Rex Calloway", "Stripes", "star")
DEFAULT_METHODS = ("slug", "ga", "ft", "gaft", "salun", "ssd")
DEFAULT_MULTI = ("Captain Zorp", "Mira Quell", "Rex Calloway")
DEFAULT_MATCH = ("gaft", "salun")  # the baselines that also run to SLUG's quality (see the module docstring)
METHOD_NAMES = {"original": "Original", "reference": "Reference (never saw it)", "slug": "SLUG", "ga": "GA", "ft": "FT",
                "gaft": "GA+FT", "salun": "SalUn", "ssd": "SSD", "slug-many": "SLUG (one layer per concept)", "slug-joint": "SLUG (one joint run)"}


@dataclass
class BenchConfig:
    """What ``slugkit bench`` runs. ``multi``: characters forgotten together (empty: skip). ``match``: the
    baselines that also run until they match SLUG's quality, within ``match_budget`` optimiser steps (empty: skip).
    ``attacks``: every recovery attack on every single-character row, with the budgets ``attack_budget``."""

    model: str = "toy-clip"
    concepts: Sequence[str] = DEFAULT_CONCEPTS
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0,)
    multi: Sequence[str] = DEFAULT_MULTI
    target: str = "forget_top5"
    slug_policy: str = "pareto"
    slug_max_evals: int = 10
    slug_retain: str = "shared"  # SLUG's retain set (slugkit.slug.RETAIN_SETS); the baselines fine-tune on task.retain
    max_steps: int = 20
    eval_every: int = 5
    match: Sequence[str] = DEFAULT_MATCH
    match_budget: int = MATCH_BUDGET_STEPS
    mia_pictures: int = 100
    n_test: int = 2000
    n_val: int = 500
    attacks: bool = False  # the recovery attacks on every single-character row (see the module docstring)
    attack_budget: str = "bench"  # a preset of slugkit.attacks.BUDGETS
    extra: dict = field(default_factory=dict)


class _SkipReport(Evaluator):
    """An evaluator that measures nothing: the bench evaluates every method itself, afterwards."""

    def __call__(self, edited_tower=None, block=None) -> dict:
        return {}


def without_report(task: Task) -> Task:
    """``task`` with SLUG's built-in report skipped (the bench evaluates afterwards, outside the timing)."""
    return replace(task, report_evaluator=_SkipReport())


def toy_multi_task(adapter, concepts: Sequence[str], seed: int = 0, n_val: int = 500, n_test: int = 2000) -> Task:
    """One task forgetting several concepts of one attribute at once (e.g. three characters).

    Forget pairs: the union of each concept's :func:`~slugkit.tasks.toy_task` forget pairs; retain
    pairs: the union of their retain pairs without any pair naming one of the concepts. Search and
    report use :class:`~slugkit.eval.metrics.ConceptSetEvaluator` on the val / test splits (every val
    picture of the concepts plus the first ``n_val`` others).
    """
    names, attribute = resolve_concepts(concepts)
    if len(names) < 2:
        raise ValueError(f"a multi-concept task needs at least two concepts, got {names}")
    tasks = [toy_task(adapter, n, seed=seed, n_test=n_test) for n in names]
    parent = tasks[0].forget._parent
    forget_idx = sorted({i for t in tasks for i in t.forget.indices})
    retain_idx = sorted({i for t in tasks for i in t.retain.indices} - set(forget_idx))
    captions = parent.captions()
    retain_idx = [i for i in retain_idx if not any(mentions(captions[i], n) for n in names)]
    val_pool = cached_split(2000, seed, "val")
    shows = np.isin(val_pool.labels(attribute), [_index(n) for n in names])
    val = val_pool.take(np.sort(np.r_[np.flatnonzero(shows), np.flatnonzero(~shows)[:n_val]]))
    test = cached_split(n_test, seed, "test")
    forget, retain = parent.subset(forget_idx), parent.subset(retain_idx)
    return Task(names, forget, retain, ConceptSetEvaluator(adapter, val, names), ConceptSetEvaluator(adapter, test, names),
                description=f"MiniCanvas seed {seed}: {len(forget)} forget / {len(retain)} retain pairs for "
                            f"{concept_label(names)}, search on {len(val)} val images, report on {n_test} test images",
                shared_retain=tasks[0].shared_retain)


def _index(name: str) -> int:
    from .data.minicanvas import ATTRIBUTES

    c = find_concept(name)
    return ATTRIBUTES[c["attribute"]].index(c["name"])


# ----------------------------------------------------------------------------------------------------
# One method on one concept
# ----------------------------------------------------------------------------------------------------
def _row(method: str, concepts, seed: int, target: Target, status: str, metrics: dict, cost, changed: int,
         adapter, eval_seconds: float, detail: dict, match=None, attacked: dict | None = None) -> dict:
    names, _ = resolve_concepts(concepts)
    kind = find_concept(names[0])["kind"]
    row = {"method": METHOD_NAMES.get(method, method), "method_key": method, "concept": concept_label(names),
           "kind": kind if len(names) == 1 else f"{len(names)} {kind}s", "seed": seed, "status": status,
           "target": f"{target.forget_metric} <= {target.threshold}"}
    row |= {k: metrics.get(k) for k in ("forget_top1", "forget_top5", "retain", "utility", "mia", "mia_std",
                                        "ua", "ira", "cra", "identity_top1", "object_top1", "style_top1",
                                        "colour_top1", "forget_cosine", "unseen_cosine")}
    c = cost.to_dict() if cost is not None else {}
    row |= {"unlearn_seconds": c.get("seconds", 0.0),
            # SLUG's single-concept rows: the same run again with the per-model retain gradient already computed
            "unlearn_seconds_warm": (detail.get("timings") or {}).get("warm_seconds"),
            # CPU seconds (every thread of the process): the same comparison with the other jobs' load taken out
            "unlearn_cpu_seconds": (detail.get("timings") or {}).get("unlearn_cpu_seconds"),
            "unlearn_cpu_seconds_warm": (detail.get("timings") or {}).get("warm_cpu_seconds"),
            # baselines in BenchConfig.match: time and optimiser steps to reach SLUG's quality (None: not run)
            "matched": None if match is None else match.matched,
            "match_seconds": None if match is None or match.seconds is None else round(match.seconds, 2),
            "match_steps": None if match is None else match.steps,
            "match_budget": None if match is None else match.budget,
            "match_cpu_seconds": None if match is None or not match.matched else round(match.cpu_seconds, 2),
            "eval_seconds": eval_seconds,
            "peak_rss_mb": c.get("peak_rss_mb"), "rss_increase_mb": c.get("rss_increase_mb"),
            "changed_bytes": changed, "model_bytes": model_bytes(adapter.model),
            "forward_images": c.get("forward_images", 0), "forward_texts": c.get("forward_texts", 0),
            "resumed_image_batches": c.get("resumed_image_batches", 0), "backward_passes": c.get("backward_passes", 0),
            "detail": detail}
    row["changed_pct"] = 100 * changed / row["model_bytes"]
    if attacked:  # `bench --attacks`: RowAttacks.fields of this row's model
        row |= {k: v for k, v in attacked.items() if k != "detail"}
        detail["attacks"] = attacked["detail"]
    return row


def _evaluate(adapter, names, world, pictures) -> tuple[dict, float]:
    t = time.perf_counter()
    metrics = evaluate_unlearning(adapter, names, world=world, pictures=pictures)
    return metrics, time.perf_counter() - t


def _slug(adapter, task: Task, target: Target, cfg: BenchConfig, seed: int, warm_task: Task | None = None):
    """SLUG with its built-in report skipped; returns (UnlearnResult, Cost).

    Cold: the per-model retain gradient is computed inside the measured time (the in-memory copy is dropped
    first). With ``warm_task`` (the same task built afresh, so that its evaluators hold nothing the cold run
    prepared) the run is repeated with the retain gradient kept, and ``result.timings["warm_seconds"]`` is that
    run's wall time (the same layer and step size: only the retain gradient is skipped, checked: the warm run's
    retain gradient must be the very tensors the cold run computed)."""
    run = lambda t: unlearn(  # noqa: E731
        adapter, concept_label(t.concept) if not isinstance(t.concept, str) else t.concept,
        task=without_report(t), policy=cfg.slug_policy, target=target, max_evals=cfg.slug_max_evals, seed=seed,
        store=None, retain=cfg.slug_retain, progress=False)
    clear_retain_memo()
    with CostMeter(adapter) as meter:
        result = run(task)
    if warm_task is not None:
        t = time.perf_counter()
        again = run(warm_task)
        result.timings["warm_seconds"] = round(time.perf_counter() - t, 2)
        result.timings["warm_cpu_seconds"] = again.timings.get("unlearn_cpu_seconds")
        if (again.layer, again.step_size) != (result.layer, result.step_size):
            raise RuntimeError(f"SLUG's warm run chose {again.layer} at {again.step_size}, the cold one "
                               f"{result.layer} at {result.step_size}: the runs should be identical")
        if any(again.gradients.retain[n] is not g for n, g in result.gradients.retain.items()):
            raise RuntimeError("SLUG's warm run computed its retain gradient again instead of reusing the cold run's: "
                               "its time is not warm (check the retain set is 'shared')")
    return result, meter.cost


def _slug_status(result) -> str:
    """The run's status; "incomplete" only says SLUG's own report was skipped (the bench measures every
    method itself), so a run whose patch met the target is "ok" here."""
    return "ok" if result.status == STATUS_INCOMPLETE and result.patch is not None else result.status


def _slug_detail(result) -> dict:
    chosen = result.chosen_search
    return {"layer": result.layer, "tower": result.tower, "step_size": result.step_size,
            "layers_tried": len(result.searches), "evaluations": 1 + sum(len(s.trace) for s in result.searches),  # one baseline for all
            "timings": result.timings,
            # the chosen edit on the search split: the quality the baselines must match (BenchConfig.match)
            "search_metrics": None if chosen is None or result.patch is None else chosen.best_metrics}


def run_method(adapter, method: str, concept: str, seed: int, cfg: BenchConfig, pictures: dict,
               reference: dict | None = None, attacks: "RowAttacks | None" = None) -> dict:
    """One bench row: ``method`` ("original", "slug" or a baseline name) forgetting ``concept``.

    ``reference``: SLUG's search-split metrics on this concept and seed (its row's ``detail["search_metrics"]``);
    with it, a baseline in ``cfg.match`` also runs until it matches them (:func:`_match`). ``attacks``: the
    recovery attacks of this concept and seed, run on the method's edited model after its evaluation."""
    target = Target(forget_metric=cfg.target)
    task = toy_task(adapter, concept, seed=seed, n_val=cfg.n_val, n_test=cfg.n_test)
    world = task.report_evaluator.world
    names = [task.concept]
    before = snapshot(adapter.model)
    attack = (lambda: attacks.fields(adapter)) if attacks is not None else (lambda: None)  # noqa: E731
    if method == "original":
        metrics, secs = _evaluate(adapter, names, world, pictures)
        attacked = attacks.fields(which="original") if attacks is not None else None
        return _row(method, names, seed, target, "unedited", metrics, None, 0, adapter, secs, {}, attacked=attacked)
    if method == "slug":
        warm_task = toy_task(adapter, concept, seed=seed, n_val=cfg.n_val, n_test=cfg.n_test)
        result, cost = _slug(adapter, task, target, cfg, seed, warm_task=warm_task)
        detail = _slug_detail(result)
        if result.patch is None:
            metrics, secs = _evaluate(adapter, names, world, pictures)
            return _row(method, names, seed, target, _slug_status(result), metrics, cost, 0, adapter, secs, detail,
                        attacked=attack())
        result.patch.apply(adapter.model)
        try:
            changed = changed_bytes(before, adapter.model)
            metrics, secs = _evaluate(adapter, names, world, pictures)
            attacked = attack()
        finally:
            result.patch.revert(adapter.model)
        detail["patch_bytes"] = result.patch.nbytes
        return _row(method, names, seed, target, _slug_status(result), metrics, cost, changed, adapter, secs, detail,
                    attacked=attacked)
    baseline = make_baseline(method)
    with CostMeter(adapter) as meter:
        result = run_baseline(adapter, baseline, task, target, max_steps=cfg.max_steps, eval_every=cfg.eval_every,
                              seed=seed, progress=False)
    try:
        changed = changed_bytes(before, adapter.model)
        metrics, secs = _evaluate(adapter, names, world, pictures)
        attacked = attack()
    finally:
        result.restore(adapter.model)
    detail = {"hparams": result.hparams, "step": result.step, "evaluations": result.evaluations,
              "grid": [dict(g) for g in baseline.grid]}
    match = None
    if method in {m.lower() for m in cfg.match} and reference is not None:
        match, test_metrics = _match(adapter, method, task, target, reference, cfg, seed)
        detail["match"] = {"rule": match.rule, "hparams": match.result.hparams, "step": match.result.step,
                           "search_metrics": match.result.metrics, "test_metrics": test_metrics,
                           "wall_seconds": round(match.wall_seconds, 2), "cpu_seconds": round(match.cpu_seconds, 2)}
    return _row(method, names, seed, target, _slug_status(result), metrics, meter.cost, changed, adapter, secs, detail,
                match=match, attacked=attacked)


def _match(adapter, method: str, task: Task, target: Target, reference: dict, cfg: BenchConfig, seed: int):
    """The baseline run again until it matches SLUG's quality (``reference``, search split); returns the
    :class:`~slugkit.baselines.MatchResult` and, when matched, the matched edit's metrics on the held-out test split
    (``task.report_evaluator``, outside the timing; ``None`` otherwise). The model is restored."""
    match = match_baseline(adapter, make_baseline(method), task, target, reference, budget=cfg.match_budget,
                           eval_every=cfg.eval_every, seed=seed, progress=False)
    try:
        test_metrics = task.report_evaluator() if match.matched else None
    finally:
        match.result.restore(adapter.model)
    return match, test_metrics


class RowAttacks:
    """The recovery attacks of ``bench --attacks`` (:mod:`slugkit.attacks`) on one character and seed.

    Built on the unedited model: it attacks the original and, when the shipped reference (the toy CLIP
    retrained without the character, :func:`~slugkit.models.loading.shipped_reference`) exists, the reference,
    once each; every method's row then attacks only its own model (:meth:`fields`) and reads recovery against
    those two. ``seconds``: the wall time all of this took so far (what ``--attacks`` adds to the bench).
    """

    def __init__(self, adapter, concept: str, seed: int, cfg: BenchConfig):
        from .attacks import attack_data, attack_model, resolve
        from .models.loading import load_clip, shipped_reference

        start, start_cpu = time.perf_counter(), time.process_time()
        self.preset = cfg.attack_budget
        self.names, self.budgets = resolve(None, cfg.attack_budget)
        self.data = attack_data(concept, seed=seed, n_test=cfg.n_test)
        self._attack = lambda model: attack_model(model, self.data, self.names, self.budgets)  # noqa: E731
        self.original = self._attack(adapter)
        self.reference_name = shipped_reference(concept)
        self.reference_model = load_clip(self.reference_name) if self.reference_name else None
        self.reference = self._attack(self.reference_model) if self.reference_model is not None else None
        self.seconds = time.perf_counter() - start
        self.cpu_seconds = time.process_time() - start_cpu

    def fields(self, adapter=None, which: str = "edited") -> dict:
        """A row's attack columns for ``adapter`` as it is now (``which`` "original" / "reference": the scores
        already measured): ``attack_<name>`` (its score after each attack), ``attack_worst`` (the worst recovery
        when a reference exists, else the highest score but the probe's; ``attack_worst_kind`` says which, and
        ``attack_worst_attack`` by which attack), ``attack_seconds``, ``attack_budget`` / ``attack_budgets``
        and ``detail`` (every model's score, the recovery and this model's seconds per attack)."""
        from .attacks import combine

        start, start_cpu = time.perf_counter(), time.process_time()
        edited = {"original": self.original, "reference": self.reference}.get(which)
        if edited is None:
            if which != "edited":
                raise ValueError(f"no {which} model to read attack scores from (expected 'edited' with a model)")
            edited = self._attack(adapter)
        report = combine({"original": self.original, "edited": edited, "reference": self.reference}, self.data,
                         self.names, self.budgets)
        by_recovery = self.reference is not None
        out = {f"attack_{n}": report[n]["edited"] for n in self.names}
        out |= {"attack_worst": report["worst_recovery" if by_recovery else "worst_score"],
                "attack_worst_kind": "recovery" if by_recovery else "score",
                "attack_worst_attack": report["worst_attack" if by_recovery else "worst_score_attack"],
                "attack_seconds": round(sum(edited[n]["seconds"] for n in self.names), 2),
                "attack_cpu_seconds": round(sum(edited[n]["cpu_seconds"] for n in self.names), 2),
                "attack_budget": self.preset, "attack_budgets": {n: report[n]["budget"] for n in self.names},
                "detail": {"reference_model": self.reference_name, "no_attack": report["no_attack"],
                           **{n: {**{k: report[n][k] for k in ("original", "edited", "reference", "recovery")},
                                  "seconds": edited[n]["seconds"], "cpu_seconds": edited[n]["cpu_seconds"]}
                              for n in self.names}}}
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - start_cpu
        return out


def run_reference(attacks: RowAttacks, seed: int, cfg: BenchConfig, pictures: dict, before: dict) -> dict:
    """The row of the model retrained without the concept (``attacks.reference_model``), measured like every
    method (MIA included: its "training" pictures of the concept are pictures it never saw); ``changed``
    against the original's weights ``before`` (all of them: it was trained from scratch)."""
    model = attacks.reference_model
    names = [attacks.data.concept]
    start, start_cpu = time.perf_counter(), time.process_time()
    metrics, secs = _evaluate(model, names, cached_split(cfg.n_test, seed, "test"), pictures)
    row = _row("reference", names, seed, Target(forget_metric=cfg.target), "retrained", metrics, None,
               changed_bytes(before, model.model), model, secs, {"model": attacks.reference_name},
               attacked=attacks.fields(which="reference"))
    attacks.seconds += time.perf_counter() - start
    attacks.cpu_seconds += time.process_time() - start_cpu
    return row


def run_multi(adapter, concepts: Sequence[str], seed: int, cfg: BenchConfig, pictures: dict) -> list[dict]:
    """Forget several characters: the paper's way (:func:`slugkit.multi.unlearn_many`), and one joint SLUG run."""
    target = Target(forget_metric=cfg.target)
    names, _ = resolve_concepts(concepts)
    joint_task = toy_multi_task(adapter, names, seed=seed, n_val=cfg.n_val, n_test=cfg.n_test)
    world = joint_task.report_evaluator.world
    before = snapshot(adapter.model)
    rows = []
    metrics, secs = _evaluate(adapter, names, world, pictures)
    rows.append(_row("original", names, seed, target, "unedited", metrics, None, 0, adapter, secs, {}))

    # the paper's way: each concept its own layer, step sizes searched together, one composed patch (+ the repair)
    with CostMeter(adapter) as meter:
        many = unlearn_many(adapter, names, policy=cfg.slug_policy, target=target, max_evals=cfg.slug_max_evals,
                            seed=seed, n_val=cfg.n_val, n_test=cfg.n_test, progress=False)
    detail = {"per_concept": many.per_concept, "rounds": many.rounds, "timings": many.timings,
              "repair_step": many.repair.get("step")}
    changed = 0
    if many.patch is not None:
        many.patch.apply(adapter.model)
        try:
            changed = changed_bytes(before, adapter.model)
            metrics, secs = _evaluate(adapter, names, world, pictures)
        finally:
            many.patch.revert(adapter.model)
    else:
        metrics, secs = _evaluate(adapter, names, world, pictures)
    rows.append(_row("slug-many", names, seed, target, _slug_status(many), metrics, meter.cost, changed, adapter,
                     secs, detail))

    # joint: one forget set holding every concept
    result, cost = _slug(adapter, joint_task, target, cfg, seed)
    detail = _slug_detail(result)
    changed = 0
    if result.patch is not None:
        result.patch.apply(adapter.model)
        try:
            changed = changed_bytes(before, adapter.model)
            metrics, secs = _evaluate(adapter, names, world, pictures)
        finally:
            result.patch.revert(adapter.model)
    else:
        metrics, secs = _evaluate(adapter, names, world, pictures)
    rows.append(_row("slug-joint", names, seed, target, _slug_status(result), metrics, cost, changed, adapter, secs, detail))
    return rows


# ----------------------------------------------------------------------------------------------------
# The whole bench
# ----------------------------------------------------------------------------------------------------
def run_bench(cfg: BenchConfig, out: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every method on every concept and seed (and the multi-concept rows); write the outputs to ``out``."""
    from .models.loading import TOY_MODELS, load_clip

    if cfg.model not in TOY_MODELS:
        raise ValueError(f"`slugkit bench` runs on the toy world models {', '.join(TOY_MODELS)}, got {cfg.model!r}; "
                         "see the README for a real model")
    methods = sorted((m.lower() for m in cfg.methods), key=lambda m: m != "slug")  # SLUG first: the match reference
    for m in methods:
        if m != "slug":
            make_baseline(m)  # fails early on an unknown name
    for m in cfg.match:
        if m.lower() == "slug":
            raise ValueError("BenchConfig.match lists baselines (e.g. gaft salun), not slug: SLUG is the reference")
        make_baseline(m)  # fails early on an unknown name
    concepts = [find_concept(c)["name"] for c in cfg.concepts]
    multi = [find_concept(c)["name"] for c in cfg.multi]
    if not concepts and not multi:
        raise ValueError("nothing to benchmark: give at least one concept (or a multi-concept set)")
    adapter = load_clip(cfg.model)
    n_train, train_seed = toy_training_world()
    jobs = [(s, c, m) for s in cfg.seeds for c in concepts for m in ["original", *methods]]
    jobs += [(s, tuple(multi), "multi") for s in cfg.seeds if multi and "slug" in methods]
    pictures: dict = {}
    references: dict = {}  # (seed, concept) -> SLUG's search-split metrics, for the baselines' match runs
    attackers: dict = {}  # (seed, character) -> RowAttacks (`--attacks`)
    original_weights = snapshot(adapter.model) if cfg.attacks else None  # the reference rows' changed bytes
    rows = []
    start = time.perf_counter()
    attack_seconds = lambda: ({"wall": round(sum(a.seconds for a in attackers.values()), 2),  # noqa: E731
                               "cpu": round(sum(a.cpu_seconds for a in attackers.values()), 2)}
                              if cfg.attacks else None)
    bar = tqdm(jobs, desc="bench", disable=not progress)
    for seed, concept, method in bar:
        bar.set_postfix_str(f"{METHOD_NAMES.get(method, 'multi')} on {concept_label(list(concept)) if isinstance(concept, tuple) else concept}")
        key = concept if isinstance(concept, tuple) else (concept,)
        if key not in pictures:
            pictures[key] = mia_pictures(list(key), n=cfg.mia_pictures, seed=train_seed, n_train=n_train)
        if method == "multi":
            rows += run_multi(adapter, list(concept), seed, cfg, pictures[key])
        else:
            if method == "original" and cfg.attacks and find_concept(concept)["kind"] == "character":
                attackers[(seed, concept)] = RowAttacks(adapter, concept, seed, cfg)
            attacks = attackers.get((seed, concept))
            rows.append(run_method(adapter, method, concept, seed, cfg, pictures[key], references.get((seed, concept)),
                                   attacks=attacks))
            if method == "original" and attacks is not None and attacks.reference_model is not None:
                rows.append(run_reference(attacks, seed, cfg, pictures[key], original_weights))
            if method == "slug":
                references[(seed, concept)] = rows[-1]["detail"].get("search_metrics")
        if out is not None:  # partial results survive an interrupted run
            write_outputs(pd.DataFrame(rows), cfg, Path(out), seconds=time.perf_counter() - start, figure=False,
                          attack_seconds=attack_seconds())
    table = pd.DataFrame(rows)
    if out is not None:
        write_outputs(table, cfg, Path(out), seconds=time.perf_counter() - start, attack_seconds=attack_seconds())
    return table


def write_outputs(table: pd.DataFrame, cfg: BenchConfig, out: Path, seconds: float | None = None,
                  figure: bool = True, attack_seconds: dict | None = None) -> dict[str, Path]:
    """``bench.json``, ``bench.md`` and (with ``figure``) ``tradeoff.png`` in ``out``; returns their paths.
    ``attack_seconds``: ``{"wall", "cpu"}`` seconds ``--attacks`` added (attacks, their pictures, the reference
    rows; CPU: every thread of the process)."""
    from .fingerprint import to_jsonable

    out.mkdir(parents=True, exist_ok=True)
    config = asdict(cfg) | {"command": command_line(cfg)}
    paths = {"json": out / "bench.json", "md": out / "bench.md", "figure": out / "tradeoff.png"}
    paths["json"].write_text(json.dumps(to_jsonable({"config": config, "seconds": seconds,
                                                     "attack_seconds": attack_seconds,
                                                     "rows": table.to_dict(orient="records")}), indent=1))
    paths["md"].write_text(markdown_report(table, config))
    if not figure:
        return paths
    fig = tradeoff_figure(table)
    fig.savefig(paths["figure"], dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def command_line(cfg: BenchConfig) -> str:
    """The ``slugkit bench`` command that reproduces ``cfg``."""
    q = lambda xs: " ".join(f'"{x}"' if " " in str(x) else str(x) for x in xs)  # noqa: E731
    parts = [f"slugkit bench --model {cfg.model}", f"--concepts {q(cfg.concepts)}", f"--methods {q(cfg.methods)}",
             f"--seeds {q(cfg.seeds)}", f"--multi {q(cfg.multi)}" if cfg.multi else "--multi",
             f"--slug-policy {cfg.slug_policy}", f"--max-steps {cfg.max_steps}", f"--eval-every {cfg.eval_every}",
             f"--match {q(cfg.match)}" if cfg.match else "--match", f"--match-budget {cfg.match_budget}",
             f"--mia-pictures {cfg.mia_pictures}", f"--n-test {cfg.n_test}"]
    if cfg.attacks:
        parts.append(f"--attacks --attack-budget {cfg.attack_budget}")
    return " ".join(parts)


def read_bench(path: str | Path) -> dict:
    """The whole ``bench.json`` (a file or the folder holding it): ``config``, ``seconds``, ``attack_seconds``,
    ``rows``."""
    path = Path(path)
    return json.loads((path / "bench.json" if path.is_dir() else path).read_text())


def load_bench(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The rows and config of a ``bench.json`` (a file or the folder holding it)."""
    data = read_bench(path)
    return pd.DataFrame(data["rows"]), data["config"]


def merge_benches(paths: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Merge the rows of several bench runs into one ``bench.json`` / ``bench.md`` in ``out``.

    Rows repeated across runs (same method, concept and seed) are kept from the first run that has them;
    the merged config lists every run's command, and ``attack_seconds`` is the runs' sum when every run has it
    (``None`` otherwise).
    """
    runs = [read_bench(p) for p in paths]
    configs = [r["config"] for r in runs]
    table = pd.concat([pd.DataFrame(r["rows"]) for r in runs], ignore_index=True)
    table = table.drop_duplicates(["method", "concept", "seed"], keep="first")
    config = dict(configs[0]) | {"command": "\n".join(c["command"] for c in configs), "merged_from": len(configs)}
    attack = [r.get("attack_seconds") for r in runs]
    attack_seconds = {k: round(sum(a[k] for a in attack), 2) for k in ("wall", "cpu")} if all(attack) else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .fingerprint import to_jsonable

    (out / "bench.json").write_text(json.dumps(to_jsonable({"config": config, "seconds": None,
                                                            "attack_seconds": attack_seconds,
                                                            "rows": table.to_dict(orient="records")}), indent=1))
    (out / "bench.md").write_text(markdown_report(table, config))
    return table


# ----------------------------------------------------------------------------------------------------
# Tables and figure
# ----------------------------------------------------------------------------------------------------
def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _pct(x) -> str:
    return "–" if _missing(x) else f"{100 * x:.1f}"


def _mb(x) -> str:
    return "–" if _missing(x) else f"{x:.0f}"


def summary_table(table: pd.DataFrame, kinds: Sequence[str]) -> pd.DataFrame:
    """Mean over concepts x seeds of each method on single concepts of ``kinds``; utility drop vs original."""
    single = table[table["kind"].isin(kinds)].copy()
    if single.empty:
        return pd.DataFrame()
    orig = single[single["method_key"] == "original"].set_index(["concept", "seed"])["utility"]
    single["utility_drop"] = [orig.get((c, s), np.nan) - u for c, s, u in
                              zip(single["concept"], single["seed"], single["utility"])]
    single["met"] = single["status"].eq("ok")
    cols = ["forget_top1", "forget_top5", "retain", "utility", "utility_drop", "mia", "mia_std", "ua", "ira", "cra",
            "unlearn_seconds", "peak_rss_mb", "rss_increase_mb", "changed_pct", "backward_passes"]
    order = [m for m in METHOD_NAMES.values() if m in set(single["method"])]
    g = single.groupby("method", sort=False)
    summary = g[cols].mean(numeric_only=False).reindex(order)
    met = g["met"].sum().reindex(order).astype(int).astype(str) + "/" + g.size().reindex(order).astype(str)
    summary.insert(0, "met", met.where(~met.index.isin([METHOD_NAMES["original"], METHOD_NAMES["reference"]]), "–"))
    return summary


def markdown_report(table: pd.DataFrame, config: dict) -> str:
    """The bench's tables as Markdown: characters, styles/objects, multi-concept, per concept, checks."""
    commands = "\n".join(f"    {c}" for c in str(config.get("command", "")).splitlines())
    lines = ["# slugkit bench: SLUG vs baselines in the toy world", "", "Made by:", "", commands, "",
             f"Target (every method, search split): `{config.get('target')} <= 0`. Accuracies in % on the "
             "held-out test split; utility = mean top-1 of the other attributes; MIA = cross-validated "
             "attack accuracy (50 = cannot tell training from unseen pictures); time = unlearning only; "
             "changed = share of the model's bytes the method changed.", ""]
    char = summary_table(table, ["character"])
    if not char.empty:
        lines += ["## Characters (identity unlearning, mean over concepts x seeds)", "",
                  "| method | target met | forget top-1 | forget top-5 | retain | utility | utility drop | MIA | "
                  "time (s) | peak RSS (MB) | RSS increase (MB) | changed (%) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in char.iterrows():
            lines.append(f"| {m} | {r['met']} | {_pct(r['forget_top1'])} | {_pct(r['forget_top5'])} | {_pct(r['retain'])} "
                         f"| {_pct(r['utility'])} | {_pct(r['utility_drop'])} | {_pct(r['mia'])} ± {_pct(r['mia_std'])} "
                         f"| {r['unlearn_seconds']:.1f} | {_mb(r['peak_rss_mb'])} | {_mb(r['rss_increase_mb'])} "
                         f"| {r['changed_pct']:.2f} |")
        lines.append("")
    canvas = summary_table(table, ["style", "object", "colour"])
    if not canvas.empty:
        lines += ["## Styles and objects (UnlearnCanvas metrics, mean over concepts x seeds)", "",
                  "| method | target met | UA | IRA | CRA | forget top-5 | utility | utility drop | MIA | time (s) | "
                  "peak RSS (MB) | changed (%) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in canvas.iterrows():
            lines.append(f"| {m} | {r['met']} | {_pct(r['ua'])} | {_pct(r['ira'])} | {_pct(r['cra'])} | "
                         f"{_pct(r['forget_top5'])} | {_pct(r['utility'])} | {_pct(r['utility_drop'])} | "
                         f"{_pct(r['mia'])} ± {_pct(r['mia_std'])} | {r['unlearn_seconds']:.1f} | "
                         f"{_mb(r['peak_rss_mb'])} | {r['changed_pct']:.2f} |")
        lines.append("")
    multi = table[table["kind"].str.contains(" ")]
    if not multi.empty:
        lines += ["## Several characters at once", "",
                  "| method | concepts | status | forget top-1 | forget top-5 | retain | utility | MIA | time (s) | "
                  "changed (%) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in multi.iterrows():
            lines.append(f"| {r['method']} | {r['concept']} | {r['status']} | {_pct(r['forget_top1'])} | "
                         f"{_pct(r['forget_top5'])} | {_pct(r['retain'])} | {_pct(r['utility'])} | {_pct(r['mia'])} | "
                         f"{r['unlearn_seconds']:.1f} | {r['changed_pct']:.2f} |")
        lines.append("")
    lines += equal_quality_lines(table)
    lines += attack_lines(table)
    lines += ["## Every run", "", "| method | concept | seed | status | forget top-1 | forget top-5 | retain | utility | "
              "MIA | UA | IRA | CRA | time (s) | time to match (s) | backward passes | changed (%) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table[~table["kind"].str.contains(" ")].iterrows():
        lines.append(f"| {r['method']} | {r['concept']} | {r['seed']} | {r['status']} | {_pct(r['forget_top1'])} | "
                     f"{_pct(r['forget_top5'])} | {_pct(r['retain'])} | {_pct(r['utility'])} | {_pct(r['mia'])} | "
                     f"{_pct(r['ua'])} | {_pct(r['ira'])} | {_pct(r['cra'])} | {r['unlearn_seconds']:.1f} | "
                     f"{_match_cell(r)} | {r['backward_passes']} | {r['changed_pct']:.2f} |")
    lines += ["", "## Checks (the claims of the paper, in this run)", ""] + [f"- {c}" for c in claim_checks(table)]
    return "\n".join(lines) + "\n"


def attack_lines(table: pd.DataFrame) -> list[str]:
    """The "recovery attacks" section of ``bench.md`` (empty without ``--attacks``)."""
    if "attack_worst_kind" not in table:
        return []
    rows = table[table["attack_worst_kind"].notna()]
    budgets = rows.iloc[0]["attack_budgets"]
    names = list(budgets)
    lines = ["## Recovery attacks (characters)", "",
             "Each model's concept score after each attack (specific forget top-1 on held-out pictures, 0..1; see "
             "`slugkit attack`). Worst case: the largest recovery `(x - reference) / (original - reference)` where a "
             "model retrained without the character exists (0: like that model, 1: fully back), else the highest "
             f"score after any attack but the linear probe. Budgets (`{rows.iloc[0]['attack_budget']}`): "
             + "; ".join(f"{n} {_budget_text(budgets[n])}" for n in names) + ".", "",
             "| method | concept | seed | plain | " + " | ".join(names) + " | worst case | attack time (wall / CPU s) |",
             "|---" * (len(names) + 6) + "|"]
    for _, r in rows.iterrows():
        worst = worst_case_text(r)
        plain = r["detail"]["attacks"]["no_attack"]["edited"]
        lines.append(f"| {r['method']} | {r['concept']} | {r['seed']} | {plain:.2f} | "
                     + " | ".join("–" if _missing(r[f"attack_{n}"]) else f"{r[f'attack_{n}']:.2f}" for n in names)
                     + f" | {worst} | {r['attack_seconds']:.1f} / {r['attack_cpu_seconds']:.1f} |")
    return lines + [""]


def worst_case_text(r) -> str:
    """A row's worst case after the attacks and the attack behind it: ``recovery 0.11 (paraphrase)``, ``score 0.93
    (soft_prompt)``, ``recovery 0.00`` (no attack to name at 0) or "–" (not attacked)."""
    if _missing(r["attack_worst"]):
        return "–"
    return (f"{r['attack_worst_kind']} {r['attack_worst']:.2f}"
            + (f" ({r['attack_worst_attack']})" if r["attack_worst"] > 0 else ""))


def _budget_text(budget: dict) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in budget.items()) + ")"


def _match_cell(r, steps: bool = True) -> str:
    """A row's time to match SLUG's quality: seconds (and steps), "not matched in N steps", or "–" (no match run)."""
    matched = r.get("matched")
    if _missing(matched):
        return "–"
    if not matched:
        return f"not matched in {int(r['match_steps'])} steps"
    return f"{r['match_seconds']:.1f}" + (f" ({int(r['match_steps'])} steps)" if steps else "")


def _match_pairs(table: pd.DataFrame):
    """(SLUG row, baseline row) for every single-concept baseline row with a match run, on the same concept and seed."""
    if "matched" not in table:
        return []
    single = table[~table["kind"].str.contains(" ")]
    slug = single[single["method_key"] == "slug"].set_index(["concept", "seed"])
    runs = single[single["method_key"].ne("slug") & single["matched"].notna()]
    return [(slug.loc[(r["concept"], r["seed"])], r) for _, r in runs.iterrows() if (r["concept"], r["seed"]) in slug.index]


def _times(slug_row, row) -> tuple[str, str]:
    """The baseline's time to match as a multiple of SLUG's warm and cold times ("–" when not matched)."""
    if not row["matched"]:
        return "–", "–"
    warm, cold = slug_row.get("unlearn_seconds_warm"), slug_row["unlearn_seconds"]
    return ("–" if _missing(warm) else f"{row['match_seconds'] / warm:.1f}x"), f"{row['match_seconds'] / cold:.1f}x"


def _cpu(slug_row, row) -> str:
    """CPU seconds of SLUG cold, warm and the baseline's match ("–" where not measured)."""
    values = (slug_row.get("unlearn_cpu_seconds"), slug_row.get("unlearn_cpu_seconds_warm"), row.get("match_cpu_seconds"))
    return ", ".join("–" if _missing(v) else f"{v:.1f}" for v in values)


def _quality(metrics: dict | None) -> str:
    """Search-split retain / utility in %, "–" without them."""
    return "–" if not metrics else f"{_pct(metrics.get('retain_top1'))} / {_pct(metrics.get('utility'))}"


def equal_quality_lines(table: pd.DataFrame) -> list[str]:
    """The "cost at equal quality" section of ``bench.md`` (empty without match runs)."""
    pairs = _match_pairs(table)
    if not pairs:
        return []
    lines = ["## Cost at equal quality", "",
             "Each baseline below ran its learning-rate grid again until its edit met SLUG's forget target *and* "
             "SLUG's retain and utility within 1 point (all on the search split, against SLUG's chosen edit; retain / "
             "utility columns in %: on the search split, then on the held-out test split), or until its budget of optimiser steps ran out. SLUG cold: the "
             "per-model retain gradient computed; warm: reused from memory. Times are wall seconds; the CPU "
             "seconds (every thread of the process) show the same work with a crowded machine's load taken out.", "",
             "| concept | seed | SLUG cold (s) | SLUG warm (s) | SLUG retain / utility: search; test | method | "
             "time to match (s) | steps | its retain / utility: search; test | match / SLUG warm | match / SLUG cold | "
             "CPU s: SLUG cold, warm, match |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for slug_row, r in pairs:
        warm = slug_row.get("unlearn_seconds_warm")
        x_warm, x_cold = _times(slug_row, r)
        match = (r["detail"].get("match") or {}) if r["matched"] else {}
        lines.append(f"| {r['concept']} | {r['seed']} | {slug_row['unlearn_seconds']:.1f} | "
                     f"{'–' if _missing(warm) else f'{warm:.1f}'} | {_quality(slug_row['detail'].get('search_metrics'))}; "
                     f"{_quality({'retain_top1': slug_row['retain'], 'utility': slug_row['utility']})} "
                     f"| {r['method']} | {_match_cell(r, steps=False)} | {int(r['match_steps'])} | "
                     f"{_quality(match.get('search_metrics'))}; {_quality(match.get('test_metrics'))} "
                     f"| {x_warm} | {x_cold} | {_cpu(slug_row, r)} |")
    lines.append("")
    for _, r in (p for p in pairs if not p[1]["matched"]):
        lines.append(f"{r['method']} on {r['concept']} (seed {r['seed']}): not matched in {int(r['match_steps'])} "
                     f"steps (budget {int(r['match_budget'])} optimiser steps over its grid): no point of its grid "
                     "reached SLUG's forget target with SLUG's retain and utility.")
    return lines + [""]


def claim_checks(table: pd.DataFrame) -> list[str]:
    """The issue's "must hold" claims, each as one line saying whether this run shows it."""
    single = table[~table["kind"].str.contains(" ")]
    slug = single[single["method_key"] == "slug"]
    if slug.empty:
        return ["SLUG was not run"]
    out = []
    met = slug["status"].eq("ok")
    out.append(f"{'HOLDS' if met.all() else 'FAILS'}: SLUG meets the target on {met.sum()}/{len(slug)} "
               f"concept x seed runs" + ("" if met.all() else f" (not: {', '.join(slug.loc[~met, 'concept'])})"))
    pct = slug["changed_pct"].max()
    out.append(f"{'HOLDS' if pct <= 2 else 'FAILS'}: SLUG changes at most {pct:.2f}% of the model's bytes (<= 2%)")
    orig = single[single["method_key"] == "original"].set_index(["concept", "seed"])["utility"]

    def drop(rows):
        return np.mean([orig.get((c, s), np.nan) - u for c, s, u in zip(rows["concept"], rows["seed"], rows["utility"])])

    t_slug, d_slug = slug["unlearn_seconds"].mean(), drop(slug)
    for key, rule in (("ga", "no larger than"), ("gaft", "within 2 points of"), ("salun", "within 2 points of")):
        other = single[single["method_key"] == key]
        if other.empty:
            continue
        name = METHOD_NAMES[key]
        d_other = drop(other)
        ok = d_slug <= d_other + 1e-9 if key == "ga" else d_slug <= d_other + 0.02
        out.append(f"{'HOLDS' if ok else 'FAILS'}: SLUG's utility drop {100 * d_slug:.1f} pts is {rule} "
                   f"{name}'s {100 * d_other:.1f} pts (mean over concepts)")
        if key in ("gaft", "salun"):
            ratio = other["unlearn_seconds"].mean() / max(t_slug, 1e-9)
            out.append(f"{'HOLDS' if ratio >= 10 else 'FAILS'}: {name} takes {ratio:.1f}x SLUG's unlearning time "
                       f"({other['unlearn_seconds'].mean():.1f} s vs {t_slug:.1f} s; the claim needs >= 10x)")
    for key in ("gaft", "salun"):
        pairs = [(s, r) for s, r in _match_pairs(table) if r["method_key"] == key]
        if pairs:
            out.append(equal_quality_check(METHOD_NAMES[key], pairs))
    return out


def equal_quality_check(name: str, pairs) -> str:
    """HOLDS when, on every concept x seed, the baseline never matched SLUG's quality within its budget or took at
    least 10x SLUG's warm time and 3x its cold time to match it."""
    parts, ok = [], True
    for slug_row, r in pairs:
        if not r["matched"]:
            parts.append(f"{r['concept']}: not matched in {int(r['match_steps'])} steps")
            continue
        warm = slug_row.get("unlearn_seconds_warm")
        x_warm = np.nan if _missing(warm) else r["match_seconds"] / warm
        x_cold = r["match_seconds"] / slug_row["unlearn_seconds"]
        ok &= bool(x_warm >= 10) and x_cold >= 3
        parts.append(f"{r['concept']}: {r['match_seconds']:.1f} s = {x_warm:.1f}x warm, {x_cold:.1f}x cold")
    return (f"{'HOLDS' if ok else 'FAILS'}: at equal quality SLUG warm is >= 10x and cold >= 3x faster than {name}'s "
            f"time to match (or it never matches): {'; '.join(parts)}")


def tradeoff_figure(table: pd.DataFrame):
    """Utility vs forget top-5 per method and concept; marker area grows with unlearning time."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .viz import figures  # noqa: F401  (sets the seaborn theme once)

    rows = table[~table["kind"].str.contains(" ")].copy()
    rows["forget top-5 (%)"] = 100 * rows["forget_top5"].astype(float)
    rows["utility (%)"] = 100 * rows["utility"].astype(float)
    rows["time (s)"] = rows["unlearn_seconds"].astype(float).clip(lower=0.5)
    order = [m for m in METHOD_NAMES.values() if m in set(rows["method"])]
    fig, ax = plt.subplots(figsize=(8, 5.2))
    sns.scatterplot(data=rows, x="forget top-5 (%)", y="utility (%)", hue="method", hue_order=order,
                    style="kind", size="time (s)", sizes=(30, 500), alpha=0.75, palette="colorblind", ax=ax)
    ax.set_xlabel("forget accuracy, top-5 on held-out pictures of the concept (%)  - lower is better")
    ax.set_ylabel("utility: zero-shot top-1 on the other attributes (%)")
    ax.set_title("Forgetting vs utility per concept: best is top-left; marker area = unlearning time")
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def mia_figure(before: dict[str, np.ndarray], after: dict[str, np.ndarray], concept: str):
    """Histograms of the image-text cosine of training ("forget") and unseen pictures, before and after.

    ``before`` / ``after``: ``{"forget": (N,) cosines, "unseen": (M,) cosines}``. The MIA can only tell the
    two apart where their histograms differ.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .viz import figures  # noqa: F401  (sets the seaborn theme once)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    colours = sns.color_palette("colorblind", 2)
    lo = min(min(v.min() for v in d.values()) for d in (before, after))
    hi = max(max(v.max() for v in d.values()) for d in (before, after))
    bins = np.linspace(lo, hi, 30)
    for ax, (label, scores) in zip(axes, (("before", before), ("after", after))):
        for (role, values), colour in zip(scores.items(), colours):
            ax.hist(values, bins=bins, alpha=0.6, color=colour, label=f"{role} pictures (n={len(values)})")
        ax.set_title(f"{label} unlearning")
        ax.set_xlabel(f"cosine(picture, prompt of {concept!r})")
    axes[0].set_ylabel("pictures")
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("The attack can only tell training from unseen pictures where these histograms differ", fontsize=11)
    fig.tight_layout()
    return fig


def shipped_bench() -> Path:
    """The ``bench.json`` of a full run shipped with slugkit (``data/bench/bench.json``)."""
    return data_dir() / "bench" / "bench.json"

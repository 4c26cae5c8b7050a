"""The loop every baseline shares: edit, evaluate every few steps, stop once the target is met.

A :class:`Baseline` only says how it edits the model (a generator that yields after each step) and
which hyper-parameters it tries (``grid``). :func:`run_baseline` does the rest, the same for all:

1. measure the unedited model on the task's search split (the split SLUG's step-size search uses);
2. for each grid point in order (gentlest first), from the original weights: run the method's steps and
   evaluate every ``eval_every`` steps;
3. stop at the first evaluation where ``target.met`` holds (status ``"ok"``); if no grid point meets it
   within ``max_steps``, keep the best point seen (lowest forget metric, then best ``target.score``),
   reported as ``"target-not-reached"``.

The model is left holding the chosen weights; :attr:`BaselineResult.original` restores it.

:func:`match_baseline` is the equal-quality comparison: the same loop with :class:`MatchTarget` as the stop
rule (SLUG's forget target *and* SLUG's retain and utility within :data:`MATCH_TOLERANCE`) and a budget of
optimiser steps over the whole grid (:data:`MATCH_BUDGET_STEPS`); it reports the time and steps to match.
"""
from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..data.pairs import pair_loader
from ..step_size_search import Target


@dataclass
class Run:
    """What a baseline's steps may use: the adapter, cycling loaders and the step budget."""

    adapter: object
    forget_batches: Iterator
    retain_batches: Iterator
    forget_loader: object
    retain_loader: object
    max_steps: int
    seed: int
    state: dict = field(default_factory=dict)  # per-run precomputations (saliency mask, importances)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """Every parameter but the contrastive temperature, which no baseline should tune."""
        return {n: p for n, p in self.adapter.model.named_parameters() if "logit_scale" not in n}


class Baseline(ABC):
    """One unlearning baseline: ``name``, a small hyper-parameter ``grid`` and :meth:`steps`."""

    name: str = "baseline"
    grid: tuple[dict, ...] = ({},)
    eval_every: int | None = None  # None: the loop's default

    def setup(self, run: Run) -> None:
        """Once per run, before the grid (e.g. a saliency mask). Default: nothing."""

    @abstractmethod
    def steps(self, run: Run, **hparams) -> Iterator[None]:
        """Edit ``run.adapter.model`` in place, yielding after every step (at most ``run.max_steps``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid={list(self.grid)})"


@dataclass
class BaselineResult:
    """Outcome of :func:`run_baseline`. ``metrics`` are search-split metrics at the chosen point."""

    method: str
    status: str
    hparams: dict | None
    step: int | None
    metrics: dict | None
    baseline: dict
    trace: list[dict]
    original: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    steps_taken: int = 0  # optimiser steps over every grid point tried (each starts from the original weights)

    @property
    def evaluations(self) -> int:
        return len(self.trace)

    def restore(self, model: torch.nn.Module) -> None:
        """Put the original weights back into ``model``."""
        _load(model, self.original)


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(state[k])


def cycle(loader) -> Iterator:
    """Batches of ``loader`` forever (a new shuffled epoch each time round)."""
    while True:
        yield from loader


def run_baseline(adapter, method: Baseline, task, target: Target | None = None, grid: list[dict] | None = None,
                 max_steps: int = 40, eval_every: int = 5, batch_size: int = 32, seed: int = 0,
                 progress: bool = True) -> BaselineResult:
    """Run ``method`` on ``task`` (a :class:`~slugkit.tasks.Task`) with the shared stop rule.

    ``max_steps`` bounds each grid point; the model is evaluated with ``task.search_evaluator`` every
    ``eval_every`` steps (or the method's own ``eval_every``) and after the last step.
    """
    if max_steps < 1 or eval_every < 1:
        raise ValueError(f"max_steps and eval_every must be >= 1, got {max_steps} and {eval_every}")
    target = target or Target(forget_metric="forget_top5")
    grid = list(grid if grid is not None else method.grid)
    if not grid:
        raise ValueError(f"{method.name}: the hyper-parameter grid is empty")
    model = adapter.model
    original = _copy(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    every = method.eval_every or eval_every
    evaluator = task.search_evaluator
    baseline = evaluator.cache().baseline()
    forget_loader = pair_loader(task.forget, adapter, batch_size=min(batch_size, len(task.forget)), shuffle=True,
                                seed=seed)
    retain_loader = pair_loader(task.retain, adapter, batch_size=min(batch_size, len(task.retain)), shuffle=True,
                                seed=seed)
    run = Run(adapter, cycle(forget_loader), cycle(retain_loader), forget_loader, retain_loader, max_steps, seed)
    trace: list[dict] = []
    steps_taken = 0
    met_points: list[tuple[float, int, dict]] = []  # (score, trace index, weights)
    fallback: tuple[tuple, int, dict] | None = None
    model.eval()
    try:
        method.setup(run)
        for g, hp in enumerate(tqdm(grid, desc=f"{method.name} grid", leave=False, disable=not progress)):
            _load(model, original)
            torch.manual_seed(seed + g)
            run.forget_batches, run.retain_batches = cycle(forget_loader), cycle(retain_loader)
            step = 0
            for step, _ in enumerate(itertools.islice(method.steps(run, **hp), max_steps), start=1):
                if step % every == 0 or step == max_steps:
                    if _evaluate(evaluator, target, baseline, hp, step, trace, model, met_points):
                        break
                    fallback = _better_fallback(fallback, trace, target, model)
            else:
                if step and step % every and step != max_steps:  # the method stopped early, off the grid
                    if not _evaluate(evaluator, target, baseline, hp, step, trace, model, met_points):
                        fallback = _better_fallback(fallback, trace, target, model)
            steps_taken += step
            if met_points:
                break
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.zero_grad(set_to_none=True)
    if met_points:
        _, i, weights = met_points[0]
        status = "ok"
    elif fallback is not None:
        _, i, weights = fallback
        status = "target-not-reached"
    else:
        raise RuntimeError(f"{method.name} made no evaluation: check max_steps and eval_every")
    _load(model, weights)
    point = trace[i]
    return BaselineResult(method.name, status, point["hparams"], point["step"], point["metrics"], baseline, trace,
                          original, steps_taken)


def _evaluate(evaluator, target, baseline, hp, step, trace, model, met_points) -> bool:
    """Evaluate the model now, log it, and keep its weights if it met the target; returns whether it did."""
    metrics = evaluator()
    met = target.met(metrics, baseline)
    trace.append({"hparams": dict(hp), "step": step, "metrics": metrics, "met": met})
    if met:
        met_points.append((target.score(metrics), len(trace) - 1, _copy(model)))
    return met


def _better_fallback(current, trace, target, model):
    """The best not-met point so far: lowest forget metric, then highest score."""
    m = trace[-1]["metrics"]
    key = (-float(m[target.forget_metric]), target.score(m))
    if current is None or key > current[0]:
        return key, len(trace) - 1, _copy(model)
    return current


# ----------------------------------------------------------------------------------------------------
# Equal quality: run until SLUG's forget target and SLUG's retain and utility are all met
# ----------------------------------------------------------------------------------------------------
MATCH_TOLERANCE = 0.01  # retain and utility may be at most 1 point below SLUG's
MATCH_BUDGET_STEPS = 120  # optimiser steps over the whole grid (split evenly over its points) before giving up
MATCH_METRICS = ("retain_top1", "utility")


@dataclass(frozen=True)
class MatchTarget:
    """A stop rule at SLUG's quality: ``target`` reached *and* every one of ``metrics`` at least
    ``reference[m] - tolerance``, where ``reference`` is what SLUG's chosen edit measured on the same split.

    Duck-types :class:`~slugkit.step_size_search.Target` (``forget_metric``, ``reached``, ``met``, ``score``),
    so :func:`run_baseline` runs unchanged with it.
    """

    target: Target
    reference: dict
    tolerance: float = MATCH_TOLERANCE
    metrics: tuple[str, ...] = MATCH_METRICS

    def __post_init__(self):
        missing = [m for m in (*self.metrics, self.target.forget_metric) if m not in self.reference]
        if missing:
            raise ValueError(f"the reference metrics lack {missing}: pass SLUG's search-split metrics of its chosen "
                             f"edit (they have {sorted(self.reference)})")

    @property
    def forget_metric(self) -> str:
        return self.target.forget_metric

    def describe(self) -> str:
        bars = ", ".join(f"{m} >= {float(self.reference[m]):.4f} - {self.tolerance:g}" for m in self.metrics)
        return f"{self.target.describe()} and {bars}"

    def reached(self, metrics: dict) -> bool:
        return self.target.reached(metrics)

    def met(self, metrics: dict, baseline: dict) -> bool:
        """The forget target met (with its own guard, if any) and every quality metric within the tolerance."""
        return self.target.met(metrics, baseline) and all(
            float(metrics[m]) >= float(self.reference[m]) - self.tolerance - 1e-12 for m in self.metrics)

    def score(self, metrics: dict) -> float:
        return self.target.score(metrics)


@dataclass
class MatchResult:
    """Outcome of :func:`match_baseline`. ``seconds`` is ``None`` when the budget ran out first; ``steps`` is
    the optimiser steps it took over the grid (when not matched: every grid point ran its share of ``budget``,
    so the budget itself, or fewer for a method with fewer steps, such as SSD's six alphas); ``result`` the
    underlying run."""

    matched: bool
    seconds: float | None
    steps: int
    budget: int
    wall_seconds: float  # the whole run, matched or not
    cpu_seconds: float  # CPU time of the whole run, every thread of this process (robust to a crowded machine)
    rule: str
    result: BaselineResult


def match_baseline(adapter, method: Baseline, task, target: Target, reference: dict,
                   tolerance: float = MATCH_TOLERANCE, budget: int = MATCH_BUDGET_STEPS, eval_every: int = 5,
                   grid: list[dict] | None = None, batch_size: int = 32, seed: int = 0,
                   progress: bool = True) -> MatchResult:
    """Time for ``method`` to reach SLUG's quality: its grid (or ``grid``; gentlest first), each point for at most
    ``budget // len(grid)`` optimiser steps, stopping at the first evaluation that meets :class:`MatchTarget`.

    ``reference``: SLUG's metrics of its chosen edit on ``task.search_evaluator``'s split (the search split, the
    one both stop rules use), e.g. ``result.chosen_search.best_metrics``. The model is left holding the run's
    chosen weights (``result.result.restore(model)`` puts the original back). The time includes the method's
    setup (e.g. SalUn's saliency mask) and every evaluation, as ``unlearn_seconds`` does.
    """
    grid = list(grid if grid is not None else method.grid)
    if budget < len(grid):
        raise ValueError(f"the match budget must give every grid point at least one step: got {budget} steps "
                         f"for {len(grid)} points")
    rule = MatchTarget(target, dict(reference), tolerance)
    start, cpu = time.perf_counter(), time.process_time()
    result = run_baseline(adapter, method, task, rule, grid=grid, max_steps=budget // len(grid),
                          eval_every=eval_every, batch_size=batch_size, seed=seed, progress=progress)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    matched = result.status == "ok"
    return MatchResult(matched, wall if matched else None, result.steps_taken, budget, wall, cpu,
                       rule.describe(), result)

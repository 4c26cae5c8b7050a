"""Stage 3 of SLUG: search the step size ``lambda`` of the single-layer update ``theta + lambda * g_f``.

Binary search from ``lambda_0 = 0.1 ||theta|| / ||g_f||``: double ``lambda`` until the forget
metric reaches its target (default: forget top-5 accuracy = 0, the authors' CLIP rule), then bisect.
Every step starts from a fresh copy of the original weights, and the original tensor is restored
bit-exactly at the end.

Two things to know when reading a search trace:

- **Forget accuracy is not monotone in lambda.** Bisection assumes "reached at lambda implies
  reached at every larger lambda", but a bigger step can move the image embeddings past the
  other names and back towards the forgotten one (on toy-clip one layer gives forget top-1 0.35 at
  lambda = 279 but 0.85 at lambda = 558). So the search is a heuristic that evaluates at most
  ``max_evals`` points, and the lambda it returns is always one *whose measured metrics met the
  target* (the best such one), never an interpolated or untested value.
- **Departures from the authors' code.** The authors return the *last* lambda tried, which may not
  meet the target; slugkit returns the best lambda that met it (``best_lambda``) and also records the
  last one (``last_lambda``, ``last_met``) so the two can be compared. slugkit also stops early once
  the bracket is narrow (``hi - lo <= rtol * hi``); the authors always run all evaluations
  (``rtol=0`` reproduces that).

Example::

    result = search_step_size(adapter.parameter(layer), grads.forget[layer], evaluate, layer_name=layer)
    result.best_lambda, result.status
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from slugkit.fingerprint import to_jsonable

STATUSES = ("ok", "target-not-reached")


@dataclass(frozen=True)
class Target:
    """When an edit counts as unlearning, and how to rank the edits that do.

    Reached: ``metrics[forget_metric] <= threshold``. Met: reached and, if ``guard_metric`` is set (one metric
    name or a tuple of them), ``metrics[m] >= baseline[m] - guard_tolerance`` for each of them (``guard_tolerance``:
    one number for every guarded metric, or a tuple with one per metric). Among met edits the best
    has the highest mean of ``score_metrics``. The default is the authors' CLIP stop rule, forget
    top-5 accuracy = 0 (``Target("forget_top1")`` is the weaker rule that can leave the name in
    second place).
    """

    forget_metric: str = "forget_top5"
    threshold: float = 0.0
    score_metrics: Sequence[str] = ("retain_top1", "utility")
    guard_metric: str | tuple[str, ...] | None = None
    guard_tolerance: float | tuple[float, ...] | None = None

    def __post_init__(self):
        if (self.guard_metric is None) != (self.guard_tolerance is None):
            raise ValueError("set guard_metric and guard_tolerance together (or neither)")
        if isinstance(self.guard_tolerance, tuple) and len(self.guard_tolerance) != len(self.guards):
            raise ValueError(f"guard_tolerance has {len(self.guard_tolerance)} values for {len(self.guards)} guarded "
                             f"metrics {self.guards}: give one number, or one per metric")
        if any(t < 0 for t in self.tolerances):
            raise ValueError(f"guard_tolerance must be >= 0, got {self.guard_tolerance}")

    @property
    def guards(self) -> tuple[str, ...]:
        """The guarded metric names (empty without a guard)."""
        if self.guard_metric is None:
            return ()
        return (self.guard_metric,) if isinstance(self.guard_metric, str) else tuple(self.guard_metric)

    @property
    def tolerances(self) -> tuple[float, ...]:
        """The tolerance of each guarded metric, in the order of :attr:`guards` (empty without a guard)."""
        if self.guard_tolerance is None:
            return ()
        if isinstance(self.guard_tolerance, tuple):
            return tuple(float(t) for t in self.guard_tolerance)
        return (float(self.guard_tolerance),) * len(self.guards)

    def scaled_guard(self, factor: float) -> Target:
        """The same target with every guard tolerance multiplied by ``factor``."""
        if factor < 0 or not math.isfinite(factor):
            raise ValueError(f"the guard's factor must be a finite number >= 0, got {factor}")
        return replace(self, guard_tolerance=tuple(factor * t for t in self.tolerances))

    def describe(self) -> str:
        """The rule as one line, e.g. ``"forget_top5 <= 0"`` (what ``report.json`` records as ``target``)."""
        rule = f"{self.forget_metric} <= {self.threshold:g}"
        for m, tol in zip(self.guards, self.tolerances):
            rule += f" and {m} >= baseline - {tol:g}"
        return rule

    def reached(self, metrics: dict) -> bool:
        return _get(metrics, self.forget_metric) <= self.threshold

    def within_guard(self, metrics: dict, baseline: dict) -> bool:
        """Whether every guarded metric stayed within its tolerance of the baseline (True without a guard). A metric
        the evaluator could not measure on the unedited model (NaN baseline, e.g. VQA on a real LLaVA's name
        pictures) guards nothing."""
        return all(not math.isfinite(_get(baseline, m)) or _get(metrics, m) >= _get(baseline, m) - tol
                   for m, tol in zip(self.guards, self.tolerances))

    def met(self, metrics: dict, baseline: dict) -> bool:
        return self.reached(metrics) and self.within_guard(metrics, baseline)

    def score(self, metrics: dict) -> float:
        """Mean of the finite ``score_metrics`` (a metric that could not be measured is NaN: left out)."""
        values = [v for v in (_get(metrics, m) for m in self.score_metrics) if math.isfinite(v)]
        return sum(values) / len(values) if values else 0.0


def _get(metrics: dict, key: str) -> float:
    if key not in metrics:
        raise KeyError(f"the evaluator returned no {key!r} metric (it returned {sorted(metrics)})")
    return float(metrics[key])


@dataclass
class SearchStep:
    """One evaluation of the search: step index (0-based), ``lam``, the metrics it gave and the wall time
    the evaluation took (``seconds``)."""

    step: int
    lam: float
    metrics: dict
    reached: bool
    met: bool
    seconds: float = 0.0


@dataclass
class SearchResult:
    """Outcome of :func:`search_step_size`; ``best_lambda`` is ``None`` when no step met the target."""

    layer: str
    lambda0: float
    best_lambda: float | None
    best_metrics: dict | None
    baseline: dict
    status: str
    trace: list[SearchStep] = field(default_factory=list)
    unused_lambdas: list[float] = field(default_factory=list)  # batched doubling points the search never needed

    @property
    def last_lambda(self) -> float | None:
        """The last lambda tried: what the authors' code returns (it may not meet the target)."""
        return self.trace[-1].lam if self.trace else None

    @property
    def last_met(self) -> bool | None:
        """Whether :attr:`last_lambda` met the target (``None`` without any step)."""
        return self.trace[-1].met if self.trace else None

    def closest(self, target: Target) -> SearchStep | None:
        """The evaluation whose forget metric came closest to ``target`` (lowest; the smaller lambda on a tie),
        ``None`` without any step. For a search that met nothing, this is the step that almost did."""
        return min(self.trace, key=lambda s: (_get(s.metrics, target.forget_metric), s.lam), default=None)

    def to_frame(self) -> pd.DataFrame:
        """One row per evaluation: step, lam, reached, met, best, then one column per metric."""
        rows = [
            {"step": s.step, "lam": s.lam, "reached": s.reached, "met": s.met,
             "best": self.best_lambda is not None and s.lam == self.best_lambda, **s.metrics}
            for s in self.trace
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=None if rows else ["step", "lam", "reached", "met", "best"])

    def to_dict(self) -> dict:
        """JSON-safe dict (non-finite floats become ``None``)."""
        return to_jsonable({
            "layer": self.layer, "lambda0": self.lambda0, "best_lambda": self.best_lambda,
            "best_metrics": self.best_metrics, "baseline": self.baseline, "status": self.status,
            "last_lambda": self.last_lambda, "last_met": self.last_met, "unused_lambdas": self.unused_lambdas,
            "trace": [{"step": s.step, "lam": s.lam, "metrics": s.metrics, "reached": s.reached,
                       "met": s.met, "seconds": s.seconds} for s in self.trace],
        })  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        trace = [SearchStep(**s) for s in d.get("trace", [])]
        derived = ("trace", "last_lambda", "last_met")
        return cls(**{k: v for k, v in d.items() if k not in derived}, trace=trace)


def non_monotone_steps(result: SearchResult, metric: str = "forget_top5") -> pd.DataFrame:
    """Pairs of evaluations of one search where the larger lambda gave a *higher* ``metric``.

    Bisection assumes the forget metric only falls as lambda grows; every row here is a counterexample.
    Columns: lam_small, lam_large, ``{metric}_small``, ``{metric}_large`` (sorted by lam_small).
    """
    steps = sorted(result.trace, key=lambda s: s.lam)
    rows = [{"lam_small": a.lam, "lam_large": b.lam, f"{metric}_small": _get(a.metrics, metric),
             f"{metric}_large": _get(b.metrics, metric)}
            for i, a in enumerate(steps) for b in steps[i + 1:] if _get(b.metrics, metric) > _get(a.metrics, metric)]
    return pd.DataFrame(rows, columns=["lam_small", "lam_large", f"{metric}_small", f"{metric}_large"])


def _check(param: torch.Tensor, grad: torch.Tensor, layer_name: str) -> None:
    label = repr(layer_name) if layer_name else "the layer"
    if tuple(grad.shape) != tuple(param.shape):
        raise ValueError(f"gradient shape {tuple(grad.shape)} differs from the shape {tuple(param.shape)} "
                         f"of {label}")
    if not torch.isfinite(grad).all():
        raise ValueError(f"gradient of {label} has non-finite values")
    if not grad.any():
        raise ValueError(f"gradient of {label} is all zero: a step along it changes nothing")


def _stepped(original: torch.Tensor, grad: torch.Tensor, lam: float) -> torch.Tensor:
    """``original + lam * grad`` in ``original``'s dtype: computed in fp32 at least, then cast, so low-precision
    weights get one rounding only."""
    dtype = torch.promote_types(original.dtype, torch.float32)
    return (original.to(dtype) + lam * grad.to(dtype)).to(original.dtype)


def _set(param: torch.Tensor, original: torch.Tensor, grad: torch.Tensor, lam: float) -> None:
    with torch.no_grad():
        param.copy_(_stepped(original, grad, lam))


@contextmanager
def apply_step(param: torch.Tensor, grad: torch.Tensor, lam: float) -> Iterator[torch.Tensor]:
    """Temporarily set ``param <- param + lam * grad`` in place; restored bit-exactly on exit."""
    _check(param, grad, "")
    original = param.detach().clone()
    try:
        _set(param, original, grad.to(param.device), lam)
        yield param
    finally:
        with torch.no_grad():
            param.copy_(original)


def search_step_size(
    param: torch.nn.Parameter,
    grad: torch.Tensor,
    evaluate: Callable[[], dict[str, float]],
    target: Target = Target(),
    max_evals: int = 10,
    lambda0: float | None = None,
    layer_name: str = "",
    rtol: float = 1e-3,
    progress: bool = True,
    baseline: dict | None = None,
    evaluate_forget: Callable[[], dict[str, float]] | None = None,
    evaluate_guard: Callable[[], dict[str, float]] | None = None,
    stop_on_guard: float | None = None,
    margin: float = 1.0,
    evaluate_forget_many: Callable[[torch.Tensor], Sequence[dict[str, float]]] | None = None,
    batch: int = 1,
) -> SearchResult:
    """Binary search of ``lambda > 0`` for the update ``param <- theta + lambda * grad``.

    ``grad`` is the forget gradient (``+lambda g_f`` ascends the forget loss). ``evaluate()`` is
    called once on the unedited model (the baseline, not counted in ``max_evals``) and once per
    step, and returns metrics such as ``{"forget_top5": 0.0, "retain_top1": 0.9, "utility": 0.6}``.
    The lower bound starts at ``lambda = 0`` (the unedited model); the upper one is unset until the
    target is reached, and the search stops early once ``hi - lo <= rtol * hi`` (slugkit's own
    shortcut; ``rtol=0`` runs all ``max_evals`` evaluations as the authors do).

    Forget accuracy need not fall monotonically with lambda, so bisection may bracket the wrong
    interval; whatever happens, ``best_lambda`` is a lambda whose measured metrics met ``target``
    (the highest score among them), or ``None`` with status "target-not-reached".

    Two shortcuts that change no decision: ``baseline`` (the unedited model's metrics, when the caller
    already has them) replaces the first ``evaluate()``; ``evaluate_forget()`` (only the forget metric,
    e.g. on the concept's pictures alone) is called first at every step, and ``evaluate()`` only when it
    reached the target, so a step that did not reach it records the forget metrics alone (its retain and
    utility never decide anything: only steps that met the target are ranked).

    ``evaluate_guard()``: the metrics of ``target``'s guard, when they are costly (e.g. judged pictures of the
    concept's neighbours), measured only where they decide: on the unedited model (unless ``baseline`` has them)
    and, after the search, at the one step it would return. If that step breaks the guard, it does not meet the
    target and the search ends "target-not-reached" (the caller may try another layer); other steps are not
    checked, so in the trace ``met`` means "reached" wherever the guard metrics are absent.

    ``stop_on_guard`` (slugkit's own, for a caller that walks on to another layer): a number ``k``; a step that has
    not reached the forget target yet but already breaks ``target``'s guard by ``k`` times its tolerance (e.g. with
    ``k=2``, the other names 20 points down where 10 are allowed) ends the search, "target-not-reached". Every later
    step would be larger (the bracket's lower end only grows), so if the damage grows with lambda none of them could
    meet the target, and the remaining evaluations are saved. A ``k`` above 1 keeps searching a layer that only
    just breaks the guard, so its reached steps stay available to a caller that keeps the best one when no layer
    meets the target. Needs the guard metrics in ``evaluate()``.

    ``margin`` > 1 (slugkit's own, for a target measured on a sample, e.g. 16 judged pictures): once the search has
    its step, ``margin`` times it is evaluated too (one more trace step) and returned instead when it also meets
    the target (with the guard, if any, measured there first); otherwise the step itself is (guard measured on it
    then). The smallest step that cleared the sample sits on its edge, and other samples fall on both sides of it.

    ``evaluate_forget_many(weights)`` with ``batch`` = K > 1 (slugkit's own, for time): the doubling phase measures
    its next K points (lam, 2 lam, 4 lam, ...) in one call. ``weights`` is ``(K, *param.shape)``, the layer's
    weights at each of them (``param`` itself holds the original weights during the call); it returns the
    ``evaluate_forget()`` metrics of each, in order. The search then goes on exactly as the sequential one: it
    records a batched point as a step only when it gets there (so the trace, the bracket, ``best_lambda`` and the
    status are those of the sequential search), and the points past the first that reached the target are never
    recorded: they are listed in ``result.unused_lambdas`` (at most K - 1 per search, the price of the batch;
    bisection never asks for them, as they lie above the bracket). A batch never holds a point beyond
    ``max_evals`` steps. A batched step's ``seconds`` is its share of the batch's time (plus its full
    evaluation, if it reached the target). Needs ``evaluate_forget`` (bisection's single steps); without
    ``evaluate_forget_many``, ``batch`` changes nothing.
    """
    _check(param, grad, layer_name)
    for given, name in ((evaluate_guard, "evaluate_guard"), (stop_on_guard, "stop_on_guard")):
        if given is not None and not target.guards:
            raise ValueError(f"{name} needs a target with a guard (guard_metric and guard_tolerance)")
    if stop_on_guard is not None and evaluate_guard is not None:
        raise ValueError("stop_on_guard reads the guard metrics at every step: give them in evaluate(), not in "
                         "evaluate_guard")
    if max_evals < 1:
        raise ValueError(f"max_evals must be >= 1, got {max_evals}")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    if not (math.isfinite(margin) and margin >= 1):
        raise ValueError(f"margin must be a finite number >= 1, got {margin}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a whole number >= 1 (the step sizes measured per call), got {batch!r}")
    if evaluate_forget_many is not None and evaluate_forget is None:
        raise ValueError("evaluate_forget_many needs evaluate_forget too (the same metrics for bisection's single "
                         "steps)")
    original = param.detach().clone()
    grad = grad.detach().to(param.device)
    if lambda0 is None:
        lambda0 = 0.1 * torch.linalg.vector_norm(original, dtype=torch.float64).item() / (
            torch.linalg.vector_norm(grad, dtype=torch.float64).item()
        )
    if not (math.isfinite(lambda0) and lambda0 > 0):
        raise ValueError(f"lambda0 must be a positive finite number, got {lambda0} for {layer_name!r}")

    trace: list[SearchStep] = []
    try:
        baseline = dict(evaluate()) if baseline is None else dict(baseline)
        if evaluate_guard is not None and not all(m in baseline for m in target.guards):
            baseline.update(evaluate_guard())  # the weights are still the original ones
        if target.reached(baseline):
            warnings.warn(
                f"the unedited model already has {target.forget_metric}={baseline[target.forget_metric]} "
                f"<= {target.threshold}: nothing to unlearn", stacklevel=2,
            )  # fmt: skip
        lo, hi = 0.0, None
        lam = float(lambda0)
        batched: dict[float, tuple[dict, float]] = {}  # lam -> (forget metrics, seconds) measured ahead in a batch

        def measure_ahead(step: int, lam: float) -> None:
            """The forget metrics of the next doubling points from ``lam``, in one call (none past ``max_evals``)."""
            lams = [lam]
            while len(lams) < min(batch, max_evals - step):
                lams.append(2 * lams[-1])
            with torch.no_grad():
                param.copy_(original)
            t = time.perf_counter()
            weights = torch.stack([_stepped(original, grad, x) for x in lams])
            found = list(evaluate_forget_many(weights))
            if len(found) != len(lams):
                raise ValueError(f"evaluate_forget_many returned {len(found)} results for {len(lams)} step sizes")
            seconds = (time.perf_counter() - t) / len(lams)
            batched.update((x, (dict(m), seconds)) for x, m in zip(lams, found))

        def measure(step: int, lam: float) -> SearchStep:
            _set(param, original, grad, lam)
            t = time.perf_counter()
            metrics, ahead = batched.pop(lam, (None, 0.0))
            if metrics is None:
                metrics = dict(evaluate_forget()) if evaluate_forget is not None else {}
            if evaluate_forget is None or target.reached(metrics):
                metrics = dict(evaluate())
            reached = target.reached(metrics)
            met = reached if evaluate_guard is not None else target.met(metrics, baseline)
            return SearchStep(step, lam, metrics, reached, met, ahead + time.perf_counter() - t)

        for step in tqdm(range(max_evals), desc=f"step size {layer_name}".strip(), leave=False, disable=not progress):
            if evaluate_forget_many is not None and batch > 1 and hi is None and lam not in batched:
                measure_ahead(step, lam)
            trace.append(measure(step, lam))
            last = trace[-1]
            if stop_on_guard is not None and not last.reached and all(m in last.metrics for m in target.guards) \
                    and not target.scaled_guard(stop_on_guard).within_guard(last.metrics, baseline):
                break  # not there yet and already far past the guard: every later step is larger
            if last.reached:
                hi = lam
            else:
                lo = lam
            if hi is None:
                lam = 2 * lam
            else:
                if rtol > 0 and hi - lo <= rtol * hi:
                    break
                lam = (lo + hi) / 2
        met = [s for s in trace if s.met]
        best = max(met, key=lambda s: (target.score(s.metrics), -s.lam)) if met else None
        order = [best] if best is not None else []
        if best is not None and margin > 1:  # the step with a margin, preferred when it meets the target too
            trace.append(measure(len(trace), best.lam * margin))
            if trace[-1].met:
                order.insert(0, trace[-1])
        best = None
        for candidate in order:
            if evaluate_guard is not None:  # the guard, at the step the search would return
                _set(param, original, grad, candidate.lam)
                t = time.perf_counter()
                candidate.metrics.update(evaluate_guard())
                candidate.seconds += time.perf_counter() - t
                candidate.met = target.met(candidate.metrics, baseline)
            if candidate.met:
                best = candidate
                break
    finally:
        with torch.no_grad():
            param.copy_(original)

    unused = sorted(batched)
    if best is not None:
        return SearchResult(layer_name, float(lambda0), best.lam, best.metrics, baseline, "ok", trace, unused)
    return SearchResult(layer_name, float(lambda0), None, None, baseline, "target-not-reached", trace, unused)

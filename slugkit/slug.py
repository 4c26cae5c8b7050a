"""SLUG end to end: gradients -> layer table -> step-size search -> patch, with a report.

>>> import slugkit
>>> clip = slugkit.load_clip("toy-clip")
>>> result = slugkit.unlearn(clip, "Captain Zorp")      # doctest: +SKIP
>>> print(result.summary())                             # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import distributed
from .adapters.base import CLIPAdapter
from .adapters.host import FORGET_TEXTS, SEARCHES, Host, HostRecipe
from .bounds import check_batch_size, check_finite_weights, check_fraction, check_max_evals, check_retain_set, check_seed
from .data.pairs import EmptyForgetSet, ImageTextPairs, pair_loader
from .eval.metrics import release_memory
from .fingerprint import tensor_digest, to_jsonable
from .gradients import GradientStore, Gradients, compute_gradients, project_out
from .layer_identification import candidate_infos, layer_table, select_layers
from .models.loading import TOY_MODELS
from .patch import Patch, scope_fingerprint
from .profile import peak_rss_mb, stage
from .rundir import atomic_run_dir
from .step_size_search import SearchResult, Target, apply_step, search_step_size
from .tasks import Evaluator, Task, data_task, toy_task

# Named bundles of the choices that change results. "slugkit" is the default; "reference" reproduces the
# authors' open_clip code: their candidate set, their stop rule, exactly 10 evaluations, no early stop.
PRESETS = {
    "slugkit": {"candidates": "default", "forget_metric": "forget_top5", "max_evals": 10, "rtol": 0.05},
    "reference": {"candidates": "reference", "forget_metric": "forget_top5", "max_evals": 10, "rtol": 0.0},
}
# The retain set of the retain gradient: "shared" (default) is one fixed, seeded set per model and data source,
# the same for every concept, so its gradient is computed once and reused (the authors' train_grads.pt);
# "per-concept" draws it from the pairs that do not name the concept, recomputed for every concept.
RETAIN_SETS = ("shared", "per-concept")


# The layer policies that stop at the first layer whose search meets the target (see select_layers)
STOP_AT_FIRST_MET = ("deepest-first", "deepest-block", "cheapest-first")
# From this size on, a run on the user's own data defaults to policy "cheapest-first" (see default_policy)
REAL_SIZE_PARAMETERS = 50_000_000


def default_policy(adapter: CLIPAdapter, data=None) -> str:
    """The layer policy :func:`unlearn` uses when none is given: "pareto" (every Pareto layer, the authors' open_clip
    code), except "cheapest-first" for a run on the user's own ``data`` with a model of at least
    :data:`REAL_SIZE_PARAMETERS` parameters. There a search of every Pareto layer costs tens of minutes on a CPU (each
    evaluation of an early vision edit reruns nearly the whole tower on every picture); "cheapest-first" searches the
    text tower's Pareto layers first and stops at the first that meets the target. A departure from the authors, named
    in ``report.json`` (``policy``); ``policy="pareto"`` (``--policy pareto``) restores their search."""
    if data is not None and sum(p.numel() for p in adapter.model.parameters()) >= REAL_SIZE_PARAMETERS:
        return "cheapest-first"
    return "pareto"


def model_bytes(model) -> int:
    """Bytes of all parameters as held in memory."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class UnlearnResult:
    """Everything one SLUG run produced. ``before``/``after`` are report-split metrics."""

    model: str
    concept: str
    task: str
    gradients: Gradients
    table: pd.DataFrame
    searches: list[SearchResult]
    layer: str | None
    tower: str | None
    step_size: float | None
    status: str
    patch: Patch | None
    before: dict
    after: dict
    seconds: float
    peak_rss_mb: float
    model_bytes: int
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    preset: str = "slugkit"
    candidates: str = "default"
    target: str = ""
    retain_set: str = "shared"  # "shared", "per-concept", or "task" (a task built without a shared set)
    policy: str = "pareto"  # the layer policy the run used (see default_policy)

    step_search: SearchResult | None = None  # the chosen layer's step size searched again (``step_evaluator``)
    step_searches: list[SearchResult] = field(default_factory=list)  # every second search, in order (the last is step_search)
    host: str | None = None  # set by :func:`unlearn_host`: the model that embeds the edited tower
    host_metrics: dict = field(default_factory=dict)  # the host's NAME_before / NAME_after metrics
    edited_model_bytes: int | None = None  # bytes of the host's edited tower
    profile: dict | None = None  # seconds and peak memory per stage (slugkit.profile.Profiler.to_dict), if profiled
    no_patch: dict | None = None  # when no patch was made: why, and the step size that came closest
    relaxed: str | None = None  # when the second search's relaxed stop rule made the patch: what it accepted
    search: str | None = None  # set by :func:`unlearn_host`: where the step size was searched (see SEARCHES)
    projected_off: list[str] = field(default_factory=list)  # concepts whose forget gradients the edit is orthogonal to
    # the second search's evaluations on the host: {"forget": its baseline and steps, "guard": the guard's}
    step_evaluations: dict = field(default_factory=dict)
    refused: list[dict] = field(default_factory=list)  # {"layer", "why"} of every searched layer that met nothing
    fallback: str | None = None  # set when no layer met a guarded target and the best reached step was kept anyway

    @property
    def chosen_search(self) -> SearchResult | None:
        """The search that gave the step size: :attr:`step_search` when there was one, else the search of the
        chosen layer (``None`` when no layer met the target)."""
        if self.step_search is not None:
            return self.step_search
        return next((s for s in self.searches if s.layer == self.layer), None)

    @property
    def unlearn_seconds(self) -> float:
        """Wall time of the method itself: gradients, layer identification and step-size search(es)."""
        return sum(self.timings.get(k, 0.0) for k in ("gradients", "layer_identification", "step_size_search",
                                                      "step_size_search_again"))

    @property
    def report_seconds(self) -> float:
        """Wall time of the before/after evaluation (the CLIP report split, and the host's metrics)."""
        return self.timings.get("report", 0.0) + self.timings.get("host_report", 0.0)

    def report(self, patch_bytes: int | None = None) -> dict:
        """The ``report.json`` contract of design.md (accuracies as fractions in [0, 1])."""
        b, a = self.before, self.after
        return to_jsonable({
            "model": self.model, "concept": self.concept, "task": self.task,
            "layer": self.layer, "tower": self.tower, "step_size": self.step_size, "status": self.status,
            "warnings": list(self.warnings),
            "preset": self.preset, "candidates": self.candidates, "target": self.target, "policy": self.policy,
            # the authors' code returns the last lambda its search tried; slugkit the best one that met the target
            "last_lambda": self.chosen_search.last_lambda if self.chosen_search else None,
            "last_met": self.chosen_search.last_met if self.chosen_search else None,
            "projected_off": list(self.projected_off),
            "retain_set": self.retain_set, "retain_pairs": self.gradients.meta.get("retain_pairs"),
            "retain_batches": self.gradients.meta.get("retain_batches"),
            "forget_acc_before": b.get("forget_top1"), "forget_acc_after": a.get("forget_top1"),
            "forget_top5_before": b.get("forget_top5"), "forget_top5_after": a.get("forget_top5"),
            "retain_acc_before": b.get("retain_top1"), "retain_acc_after": a.get("retain_top1"),
            "utility_before": b.get("utility"), "utility_after": a.get("utility"),
            "metrics_before": b, "metrics_after": a,
            "seconds": round(self.seconds, 2), "unlearn_seconds": round(self.unlearn_seconds, 2),
            "report_seconds": round(self.report_seconds, 2), "timings": self.timings,
            "unlearn_cpu_seconds": self.timings.get("unlearn_cpu_seconds"),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "patch_bytes": patch_bytes if patch_bytes is not None else (self.patch.nbytes if self.patch else 0),
            "model_bytes": self.model_bytes,
            "layers_tried": [s.layer for s in self.searches],
            "layers_refused": list(self.refused), "guard_fallback": self.fallback,
            "search": [s.to_dict() for s in self.searches],
            "step_search": self.step_search.to_dict() if self.step_search else None,
            "layers_searched_again": [s.layer for s in self.step_searches],
            "step_evaluations": self.step_evaluations,
            "no_patch": self.no_patch,
            "relaxed_target": self.relaxed,
            "layer_table": self.table.assign(shape=self.table["shape"].map(list)).to_dict(orient="records"),
        } | ({"host": self.host, "clip_model": self.model, "search_mode": self.search,
              "edited_model_bytes": self.edited_model_bytes, **self.host_metrics} if self.host else {})
          | ({"profile": self.profile} if self.profile is not None else {}))  # fmt: skip

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``report.json`` (and ``patch.safetensors`` when a patch was found); returns the folder.

        The run is written into a temporary folder beside ``out_dir`` and renamed into place once, so a
        reader sees the previous run, this run, or nothing. A non-empty ``out_dir`` is refused unless
        ``overwrite`` (then the whole previous run is replaced; see :mod:`slugkit.rundir`). Under a
        process group only rank 0 writes (every process holds the same result).
        """
        if not distributed.is_writer():
            return Path(out_dir)
        with atomic_run_dir(out_dir, overwrite, what="unlearn") as tmp:
            patch_bytes = 0
            if self.patch is not None:
                patch_bytes = self.patch.save(tmp / "patch.safetensors").stat().st_size
            (tmp / "report.json").write_text(json.dumps(self.report(patch_bytes), indent=2))
        return Path(out_dir)

    def summary(self) -> str:
        """A short human-readable table of the run."""
        def pct(x):
            return "  n/a" if x is None or not math.isfinite(x) else f"{100 * x:5.1f}%"

        b, a = self.before, self.after
        lines = [f"SLUG on {self.model}: forget {self.concept!r} -> {self.status}",
                 f"  stop rule {self.target or 'n/a'}, {self.candidates} candidates, layer policy {self.policy} "
                 f"(preset {self.preset}"
                 + (f", step size searched on: {self.search})" if self.host else ")"),
                 f"  layer {self.layer} ({self.tower} tower), step size {self.step_size:.4g}"
                 if self.layer else "  no layer met the target; the model is unchanged",
                 f"  {'':20s}{'before':>8s}{'after':>8s}"]
        for label, key in (("forget top-1", "forget_top1"), ("forget top-5", "forget_top5"),
                           ("retain top-1", "retain_top1"), ("utility", "utility")):
            lines.append(f"  {label:20s}{pct(b.get(key)):>8s}{pct(a.get(key)):>8s}")
        if self.host:
            lines.append(f"  on the host {self.host}:")
            for key in sorted(k[:-len("_before")] for k in self.host_metrics if k.endswith("_before")):
                lines.append(f"  {key:20s}{pct(self.host_metrics[key + '_before']):>8s}"
                             f"{pct(self.host_metrics.get(key + '_after')):>8s}")
        patch = f"{self.patch.nbytes / 1024:.0f} KiB" if self.patch else "none"
        lines.append(f"  {len(self.searches)} layer(s) tried, {self.seconds:.1f} s, peak memory "
                     f"{self.peak_rss_mb:.0f} MiB, patch {patch} "
                     f"({100 * (self.patch.nbytes if self.patch else 0) / self.model_bytes:.2f}% of the model)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


REPORT_TIMING_KEYS = frozenset({"seconds", "unlearn_seconds", "unlearn_cpu_seconds", "report_seconds", "timings",
                                "peak_rss_mb"})  # what differs between two runs of the same case


def cache_embeddings(evaluator: Evaluator, store: GradientStore | None) -> Evaluator:
    """``evaluator.cache()``; with a ``store``, an evaluator whose ``cache`` takes one (``embeddings_in_store``)
    reads the unedited model's embeddings from it, or computes and stores them. Not in a data-parallel run: each
    process embeds its own shard of the pictures, and only rank 0 writes to the store."""
    if store is not None and getattr(evaluator, "embeddings_in_store", False) and not distributed.active():
        return evaluator.cache(store=store)
    return evaluator.cache()


def untimed(report):
    """``report`` (a ``report.json`` dict) without its timing keys at any depth (the search trace times each step):
    what two runs of the same case must agree on, e.g. one process against several."""
    if isinstance(report, dict):
        return {k: untimed(v) for k, v in report.items() if k not in REPORT_TIMING_KEYS}
    if isinstance(report, list):
        return [untimed(v) for v in report]
    return report


REPORT_METRICS = ("forget_top1", "retain_top1", "utility")  # a run without any of these is "incomplete"
STATUS_INCOMPLETE = "incomplete"  # a patch met the target, but a report metric could not be measured


def unmeasured(before: dict, after: dict, evaluator=None) -> tuple[list[str], list[str]]:
    """``(missing report metrics, warnings)``: metrics that are absent or not finite, one warning each."""
    missing, warns = [], []
    for key in sorted(set(before) | set(after) | set(REPORT_METRICS)):
        when = [w for w, m in (("before", before), ("after", after))
                if not isinstance(m.get(key), (int, float)) or not math.isfinite(m[key])]
        if not when:
            continue
        if key in REPORT_METRICS:
            missing.append(key)
        why = getattr(evaluator, "why_unmeasured", lambda k: None)(key) or "there was nothing to measure it on"
        warns.append(f"{key} could not be measured {' and '.join(when)} the edit ({why}); it is null in report.json")
    return missing, warns


def guard_change(target: Target, baseline: dict, metrics: dict) -> str:
    """``"retain_top1 1 -> 0.387, utility 0.993 -> 0.942"``: each guarded metric ``metrics`` has, from its baseline."""
    return ", ".join(f"{m} {baseline[m]:.3g} -> {metrics[m]:.3g}" for m in target.guards if m in metrics)


def broke_guard(target: Target, searches: Sequence[SearchResult]) -> list[str]:
    """One phrase per step of ``searches`` that reached ``target``'s forget rule but not its guard."""
    return [f"step size {st.lam:.4g} on {s.layer} reached it but not the guard ("
            + guard_change(target, s.baseline, st.metrics) + ")"
            for s in searches for st in s.trace
            if target.guards and st.reached and not st.met and all(m in st.metrics for m in target.guards)]


def refusal(target: Target, search: SearchResult) -> dict:
    """``{"layer", "why"}``: why the search of one layer met no step size (the guard it broke, else how close its
    forget metric came)."""
    broke = broke_guard(target, [search])
    last = search.trace[-1] if search.trace else None
    if last is not None and not last.reached and all(m in last.metrics for m in target.guards) \
            and not target.within_guard(last.metrics, search.baseline):  # search_step_size(stop_on_guard=k)
        broke.append(f"step size {last.lam:.4g} broke the guard before reaching {target.forget_metric} <= "
                     f"{target.threshold:g} ({target.forget_metric} {float(last.metrics[target.forget_metric]):.3g}, "
                     f"{guard_change(target, search.baseline, last.metrics)})")
    if broke:
        return {"layer": search.layer, "why": "; ".join(broke)}
    step = search.closest(target)
    closest = (f"; the closest was {target.forget_metric} = {float(step.metrics[target.forget_metric]):.4g} at step "
               f"size {step.lam:.4g}") if step else ""
    return {"layer": search.layer, "why": f"no step size reached {target.forget_metric} <= {target.threshold:g}"
                                          f"{closest}"}


def guard_fallback(target: Target, searches: Sequence[SearchResult]) -> tuple[SearchResult | None, str | None]:
    """When no layer met a guarded ``target``: the search of the best-scoring step that reached its forget rule on
    any layer, set to that step (``best_lambda``, ``best_metrics``), and one sentence saying so; ``(None, None)``
    when no step reached it. The returned search keeps its trace; its ``status`` says "ok" for the patch."""
    reached = [(s, st) for s in searches for st in s.trace if st.reached]
    if not reached:
        return None, None
    search, step = max(reached, key=lambda c: (target.score(c[1].metrics), -c[1].lam))
    kept = replace(search, best_lambda=step.lam, best_metrics=dict(step.metrics), status="ok")
    return kept, (f"no searched layer ({', '.join(s.layer for s in searches)}) met {target.describe()}; kept the "
                  f"best-scoring step that reached {target.forget_metric} <= {target.threshold:g}: step size "
                  f"{step.lam:.4g} on {search.layer} ({guard_change(target, search.baseline, step.metrics)})")


def accept_relaxed(adapter, direction: dict, step_searches: Sequence[SearchResult], target: Target, threshold: float,
                   guard=None, towers: dict | None = None, blocks: dict | None = None
                   ) -> tuple[SearchResult | None, str | None]:
    """The relaxed stop rule of a second search that never reached ``target`` (slugkit's own, see
    :data:`slugkit.adapters.sd.RELAXED_THRESHOLD`): ``(search result, one sentence)`` for the evaluation whose forget
    metric came closest, if it is at most ``threshold`` and (with a ``guard``, measured there) within the guard;
    ``(None, None)`` when some step reached the target (the rule was reachable: a guard or a layer refused it) or
    nothing came close enough, ``(None, sentence)`` when the guard refused the closest step."""
    steps = [(s, st) for s in step_searches for st in s.trace]
    if not steps or any(st.reached for _, st in steps):
        return None, None
    search, step = min(steps, key=lambda c: (float(c[1].metrics[target.forget_metric]), c[1].lam))
    value = float(step.metrics[target.forget_metric])
    if value > threshold:
        return None, None
    how = (f"no step size reached {target.describe()} on {', '.join(s.layer for s in step_searches)}; the relaxed "
           f"rule {target.forget_metric} <= {threshold:.4g} accepts the closest, step size {step.lam:.4g} on "
           f"{search.layer} ({target.forget_metric} = {value:.4g})")
    if guard is not None:
        with apply_step(adapter.parameter(search.layer), direction[search.layer], step.lam):
            step.metrics.update(guard(edited_tower=towers[search.layer], block=int(blocks[search.layer])))
        if not target.within_guard(step.metrics, search.baseline):
            return None, how + f" but it broke the guard ({guard_change(target, search.baseline, step.metrics)})"
    step.met = True
    return SearchResult(search.layer, search.lambda0, step.lam, step.metrics, search.baseline, "ok",
                        search.trace), how


def explain_no_patch(target: Target, searches: Sequence[SearchResult],
                     step_searches: Sequence[SearchResult] = ()) -> dict:
    """Why a run made no patch, and the step size that came closest to the stop rule.

    ``step_searches`` (the second searches, on the host's own outputs, when there were any) are the ones that
    decided; otherwise every layer's search. Returns ``{"why", "layer", "closest_lambda", "closest_forget",
    "forget_metric", "evaluations", "broke_guard"}`` (``closest_*`` and ``forget_metric`` describe the closest
    evaluation, ``evaluations`` counts them, ``broke_guard`` lists the steps that reached the forget rule but not
    ``target``'s guard), ``why`` one sentence for ``report.json`` and the summary.
    """
    pool = list(step_searches) or list(searches)
    where = (f"the second search of {', '.join(s.layer for s in pool)} (on the host's own outputs) met no step size"
             if step_searches else f"no step size of the {len(pool)} searched layer(s) met it")
    tried = [(s, s.closest(target)) for s in pool if s.trace]
    evaluations = sum(len(s.trace) for s in pool)
    if not tried:
        return {"why": f"stop rule {target.describe()}: {where} (nothing was evaluated)", "layer": None,
                "closest_lambda": None, "closest_forget": None, "forget_metric": target.forget_metric,
                "evaluations": 0, "broke_guard": []}
    search, step = min(tried, key=lambda c: (float(c[1].metrics[target.forget_metric]), c[1].lam))
    value = float(step.metrics[target.forget_metric])
    broke = broke_guard(target, pool)
    why = (f"stop rule {target.describe()}: {where}; the closest was step size {step.lam:.4g} on {search.layer} "
           f"with {target.forget_metric} = {value:.4g} ({evaluations} evaluations)" + "".join(f"; {b}" for b in broke)
           + ", so no patch was made and the model is unchanged")
    return {"why": why, "layer": search.layer, "closest_lambda": step.lam, "closest_forget": value,
            "forget_metric": target.forget_metric, "evaluations": evaluations, "broke_guard": broke}


def make_task(adapter: CLIPAdapter, concept: str, data=None, classes: Sequence[str] | None = None,
              seed: int = 0) -> Task:
    """The toy task for toy models without ``data``; a user-data task otherwise."""
    if data is None:
        if classes:
            raise ValueError("classes= (--classes) only applies with data= (--data): the toy world measures the "
                             "concept against every other class of its attribute")
        if adapter.name not in TOY_MODELS:
            raise ValueError(f"{adapter.name!r} is not a toy model: pass data= (an image folder, a CSV or "
                             "webdataset shards) and classes= (names to tell the concept apart from)")
        return toy_task(adapter, concept, seed=seed)
    return data_task(adapter, concept, data, classes or [], seed=seed)


def resolve_preset(preset: str = "slugkit", candidates: str | None = None, target: Target | None = None,
                   max_evals: int | None = None, rtol: float | None = None) -> dict:
    """The settings a run uses: the preset's, with explicit values overriding "slugkit" defaults.

    ``preset="reference"`` fixes every setting it names; an explicit value that contradicts it raises.
    Returns ``{"candidates", "target", "max_evals", "rtol"}``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    if preset == "reference":
        given = {"candidates": candidates, "forget_metric": target and target.forget_metric,
                 "max_evals": max_evals, "rtol": rtol}
        clash = {k: v for k, v in given.items() if v is not None and v != p[k]}
        if target is not None and (target.threshold != 0 or target.guard_metric is not None):
            clash["target"] = target.describe()
        if clash:
            fixed = ", ".join(f"{k}={v!r}" for k, v in p.items())
            raise ValueError(f"preset 'reference' fixes {fixed} (stop rule forget_top5 <= 0); got {clash}: "
                             "drop these arguments or use preset='slugkit'")
    return {"candidates": candidates or p["candidates"],
            "target": target or Target(forget_metric=p["forget_metric"]),
            "max_evals": p["max_evals"] if max_evals is None else max_evals,
            "rtol": p["rtol"] if rtol is None else rtol}


def unlearn(adapter: CLIPAdapter, concept: str, *, data: str | ImageTextPairs | None = None,
            classes: Sequence[str] | None = None, task: Task | None = None, layers: Sequence[str] | None = None,
            policy: str | None = None,
            include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None,
            tower: str | None = None, preset: str = "slugkit", candidates: str | None = None,
            target: Target | None = None, max_evals: int | None = None, rtol: float | None = None,
            batch_size: int = 64, seed: int = 0, store: GradientStore | str | Path | None = None,
            retain: str = "shared", full_trace: bool = False, search_evaluator: Evaluator | None = None,
            step_evaluator: Evaluator | None = None, step_start: str = "rule", step_rtol: float | None = None,
            project_off: Sequence[Task] = (), max_layers: int | None = None, fallback: bool = False,
            guard_stop: float | None = None, search_batch: int = 1, progress: bool = True) -> UnlearnResult:
    """Run SLUG: forget ``concept`` by editing one layer of ``adapter.model``.

    The model is left unchanged; apply ``result.patch`` to edit it. ``policy`` is "pareto" (try every
    Pareto layer, keep the best), "deepest" (the deepest Pareto layer of ``tower``, default text),
    "deepest-first" (the Pareto layers of ``tower`` deepest first, stopping at the first whose search meets
    the target), "cheapest-first" (every Pareto layer, text tower first, then vision, each deepest first, stopping at
    the first whose search meets the target) or a parameter name. The default (:func:`default_policy`) is "pareto",
    as the authors' open_clip code, except for a run on your own ``data`` with a real-size model (at least
    :data:`REAL_SIZE_PARAMETERS` parameters): "cheapest-first" there, slugkit's departure for time, since every
    evaluation of a vision edit reruns all pictures from the edited block on (a ViT-B-32 edit in vision block 0:
    about 35 s per evaluation on 600 pictures and 2 cores, 10 per layer); ``policy="pareto"`` restores the authors'.
    ``layers`` limits the candidates to these parameter names (default: all).
    "pareto" searches every Pareto layer, as the authors do, in the layer table's order (vision, then text, block by
    block, so an evaluator's cached activations only ever move forward); which layer wins does not depend on that
    order (the highest score; on a tie, the earlier layer). A vision layer in an early block costs the most per
    evaluation (everything after it reruns), which is why every step is first measured on the forget pictures alone.

    - ``candidates``: "default" (2-D attention and MLP weights of every block) or "reference" (the
      authors' open_clip set: every parameter except biases, ``logit_scale``, positional and token
      embeddings). ``include``/``exclude`` filter them by kind (e.g. "mlp_fc") or name regex; an
      ``include`` entry that is a parameter name or kind outside the set adds it.
    - ``target`` defaults to forget top-5 = 0 (the authors' rule); ``Target("forget_top1")`` is weaker.
    - Each layer's search stops after ``max_evals`` evaluations (default 10) or once lambda is
      bracketed within ``rtol`` (relative, default 0.05: slugkit's shortcut; 0 = never stop early).
    - ``preset="reference"`` reproduces the authors' choices (reference candidates, top-5 rule, exactly
      10 evaluations, ``rtol=0``); the report then also shows their returned lambda (the last one tried).
    - ``retain``: "shared" (default) computes the retain gradient on the task's concept-independent retain
      set (``task.shared_retain``), over every default candidate layer, once per model: it is kept in memory
      for this process and in ``store``, and reused by every later concept; "per-concept" uses the task's
      retain pairs without the concept (recomputed per concept). Retain gradients use equal contrastive
      batches of ``batch_size`` pairs (the remainder is dropped).
    - ``store`` also keeps what the evaluators embed with the unedited model (the toy task's search and report
      pictures, :meth:`~slugkit.eval.zeroshot.ConceptEvaluator.cache`): the report's "before" half is the same for
      every concept, so it is computed once per model and read back by every later run; the numbers are the same.
    - The search measures the forget metric first (on the concept's pictures alone, when the evaluator has
      ``forget_metrics``) and the rest only at step sizes that reach the target: a step that does not reach
      it records its forget metrics alone. ``full_trace=True`` measures everything at every step (for plots
      of the whole trace); the chosen layer and step size are the same either way. ``search_batch`` = K > 1
      measures the doubling phase's forget metrics K step sizes at a time, in one batched pass, where the
      evaluator can (:meth:`~slugkit.eval.zeroshot.ConceptEvaluator.forget_metrics_many`; other layers and
      evaluators search one step at a time): the same steps are recorded and the same layer and step size chosen
      (:func:`search_step_size` ``evaluate_forget_many``).
    - The report's before/after metrics: when the task searches and reports on the same evaluator (user data), they
      are the search's own measurements (its baseline, and the chosen step's metrics: the patch sets the same
      weights), so nothing is evaluated again; otherwise (the toy task reports on held-out test pictures, a host
      searches on its outputs) the report evaluator measures the unedited and the patched model.
    - ``search_evaluator``: search every chosen layer's step size on it instead of the task's evaluator
      (e.g. a host's answers, :func:`unlearn_host` ``search="host"``); the report still uses the task's.
    - ``step_evaluator``: the layer is chosen as always (every layer's search on the task's evaluator),
      then that one layer's step size is searched again, with the same target, on ``step_evaluator``
      (e.g. a host's judged generations, :func:`unlearn_host` ``search="generation"``); the patch takes
      that step size (``result.step_search``). When it meets nothing there, the next best layer that met the
      target on the task's evaluator is searched again, up to :data:`SECOND_SEARCH_LAYERS` layers
      (``result.step_searches``; a warning per failed layer), and no patch is made when none meets it. When no
      layer met the target on the task's evaluator, the second search runs on the layer that came closest (a
      warning says so): the task's evaluator then only chooses the layer. ``step_start``:
      where that second search starts, "rule" (``lambda_0 = 0.1 ||theta|| / ||g_f||``, as every search) or
      "found" (the first search's step size, a guess for the upper bracket: doubled when it does not reach
      the target, bisected from 0 when it does); ``step_rtol`` its early-stop tolerance (default ``rtol``).
    - ``project_off``: tasks of other concepts (e.g. the other characters, each forget picture paired as this
      task pairs its own). Their forget gradients are computed too (same loaders and store), and every searched
      layer's edit direction is its forget gradient minus the projection on their span
      (:func:`~slugkit.gradients.project_out`: to first order, the step leaves their forget losses unchanged).
      The layer table still reads the unprojected gradients; ``result.gradients.forget`` keeps them, the patch
      holds the projected step. Default: none (SLUG's own direction).
    - ``max_layers``: search at most this many of the policy's layers (default: all), e.g. a walk of two.
    - ``fallback``: when no searched layer meets a guarded ``target`` (``guard_metric``), keep the best-scoring
      step that reached its forget rule on any of them instead of making no patch (``result.fallback`` says so;
      without a guard it changes nothing). Either way ``result.refused`` names every searched layer that did not
      meet the target and why (report.json ``layers_refused``).
    - ``guard_stop``: in a walk (``policy`` "deepest-first", "deepest-block", "cheapest-first") with a guarded
      ``target``, give up a layer at the first step that has not reached the forget rule yet but already breaks the
      guard by ``guard_stop`` times its tolerance (:func:`search_step_size` ``stop_on_guard``), for time; default
      None: every layer's search runs to its end.

    Inputs are bounded (see :mod:`slugkit.bounds`): ``seed`` in 0..2**31-1, ``batch_size`` in 2..4096,
    ``max_evals`` in 1..100, ``rtol`` in [0, 1]; non-finite weights and a retain set of fewer than 2
    pairs are refused before any gradient work. ``result.status`` is "ok", "target-not-reached" (no
    layer met the target; no patch) or "incomplete" (a patch met the target but forget, retain or
    utility accuracy could not be measured: it is null in the report, explained in ``result.warnings``).
    Without a patch, ``result.no_patch`` (``report.json`` ``no_patch``, and a warning) says why and which
    step size came closest (:func:`explain_no_patch`).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    timings = {}
    policy = default_policy(adapter, data) if policy is None else policy
    settings = resolve_preset(preset, candidates, target, max_evals, rtol)
    candidates, target, max_evals, rtol = (settings[k] for k in ("candidates", "target", "max_evals", "rtol"))
    seed, batch_size, max_evals = check_seed(seed), check_batch_size(batch_size), check_max_evals(max_evals)
    check_fraction("rtol", rtol)
    if step_start not in ("rule", "found"):
        raise ValueError(f"step_start must be 'rule' or 'found', got {step_start!r}")
    if step_rtol is not None:
        check_fraction("step_rtol", step_rtol)
    check_fraction("target threshold", target.threshold)
    check_finite_weights(adapter.model, adapter.name)  # before any data or gradient work
    if retain not in RETAIN_SETS:
        raise ValueError(f"retain must be one of {', '.join(map(repr, RETAIN_SETS))}, got {retain!r}")
    with stage("data"):  # the toy world's pictures are drawn (or read from their cache) here
        task = task or make_task(adapter, concept, data, classes, seed)
    retain_set = "task" if retain == "shared" and task.shared_retain is None else retain
    retain_pairs = task.shared_retain if retain_set == "shared" else task.retain
    check_retain_set(len(retain_pairs), task.concept)
    names = getattr(task.search_evaluator, "classes", None)  # the names a user-data evaluator chooses among
    if target.forget_metric == "forget_top5" and names is not None and len(names) <= 5:
        raise ValueError(f"the stop rule forget_top5 <= 0 needs at least 6 names to choose among (the concept and "
                         f"5 others) but the task has {len(names)}: pass more classes or target=Target('forget_top1') "
                         "(--target top1)")
    if isinstance(store, (str, Path)):
        store = GradientStore(store)
    infos = candidate_infos(adapter, candidates, include=include, exclude=exclude)
    if layers is not None:
        infos = [i for i in infos if i.name in set(layers)]
        if not infos:
            raise ValueError(f"none of the {len(layers)} requested layers is a {candidates!r} candidate left by "
                             f"include/exclude (e.g. {list(layers)[:3]})")

    t = time.perf_counter()
    forget_loader = pair_loader(task.forget, adapter, batch_size=batch_size)
    retain_loader = pair_loader(retain_pairs, adapter, batch_size=batch_size, equal_batches=True)
    layer_names = [i.name for i in infos]
    # the retain gradient covers every default candidate too, so one cached g_r serves any subset (a host's tower)
    retain_layers = sorted(set(layer_names) | {i.name for i in adapter.candidate_layers()})
    grads = compute_gradients(adapter, forget_loader, retain_loader, layers=layer_names, store=store,
                              progress=progress, retain_layers=retain_layers, reuse_retain=retain_set == "shared")
    others = [compute_gradients(adapter, pair_loader(o.forget, adapter, batch_size=batch_size), retain_loader,
                                layers=layer_names, store=store, progress=False, retain_layers=retain_layers,
                                reuse_retain=retain_set == "shared").forget for o in project_off]
    timings["gradients"] = round(time.perf_counter() - t, 2)
    release_memory()  # the gradient stage's float64 sums and activations go back to the OS before the search

    t = time.perf_counter()
    with stage("layer_table"):
        table = layer_table(adapter, grads, infos=infos)
        layers = select_layers(table, policy, tower)
        if max_layers is not None:
            if max_layers < 1:
                raise ValueError(f"max_layers must be >= 1 (or None: every layer of the policy), got {max_layers}")
            layers = layers[:max_layers]
    towers = dict(zip(table["name"], table["tower"]))
    blocks = dict(zip(table["name"], table["block"]))
    direction = {name: project_out(grads.forget[name], [o[name] for o in others]) for name in layers}
    timings["layer_identification"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    evaluator = search_evaluator or task.search_evaluator
    with stage("search_cache"):  # embeddings of the unedited model, reused by every evaluation
        first = {}  # the block of each tower's first searched layer: prepared before cache(), which then
        for name in layers:  # finishes the towers from there (one pass through each tower instead of two)
            first.setdefault(towers[name], int(blocks[name]))
        for tower_, block_ in first.items():
            evaluator.prepare(tower_, block_)
        baseline = cache_embeddings(evaluator, store).baseline()  # the unedited model's: one for every layer
    forget_only = None if full_trace else getattr(evaluator, "forget_metrics", None)
    # a walk with a guard whose evaluator measures it at every step may give up a layer at the first step that breaks
    # the guard by guard_stop times its tolerance before reaching the forget target (search_step_size(stop_on_guard=))
    walk_on_guard = guard_stop is not None and bool(target.guards) and policy in STOP_AT_FIRST_MET \
        and forget_only is None
    searches = []
    for name in layers:
        with stage(f"search/{name}"):
            t_, b_ = towers[name], int(blocks[name])
            evaluator.prepare(t_, b_)  # model still unedited here
            many = forget_only and search_batch > 1 and getattr(evaluator, "batches", None) \
                and evaluator.batches(name, t_, b_) and (lambda w: evaluator.forget_metrics_many(name, w, t_, b_))
            searches.append(search_step_size(
                adapter.parameter(name), direction[name], lambda: evaluator(edited_tower=t_, block=b_), target,
                max_evals=max_evals, layer_name=name, rtol=rtol, progress=progress, baseline=baseline,
                evaluate_forget=forget_only and (lambda: forget_only(edited_tower=t_, block=b_)),
                stop_on_guard=guard_stop if walk_on_guard else None, evaluate_forget_many=many or None,
                batch=search_batch))
        if policy in STOP_AT_FIRST_MET and searches[-1].status == "ok":
            break  # the first layer in the policy's order whose step size met the target
    timings["step_size_search"] = round(time.perf_counter() - t, 2)

    met = [s for s in searches if s.status == "ok"]
    best = max(met, key=lambda s: target.score(s.best_metrics), default=None)
    step_searches, warns, relaxed_used, relaxed_note = [], [], None, None
    refused = [refusal(target, s) for s in searches if s.status != "ok"]
    fell_back = None
    if best is None and fallback and target.guards and step_evaluator is None:
        best, fell_back = guard_fallback(target, searches)
        if fell_back:
            warns.append(fell_back)
    step_target = target
    if step_evaluator is not None:
        best = None
        if met:  # the best-scoring layers on the task's evaluator first (``max`` above picks the first of them)
            order = sorted(met, key=lambda s: target.score(s.best_metrics), reverse=True)[:SECOND_SEARCH_LAYERS]
            tries = [(s.layer, s.best_lambda, f"{s.layer} met the target at step size {s.best_lambda:.4g} on the "
                      f"task's evaluator") for s in order]
        elif any(s.trace for s in searches):  # the task's evaluator only chooses the layer: the closest one
            closest = explain_no_patch(target, searches)
            how = (f"no layer met the target on the task's evaluator; the second search ran on the one that came "
                   f"closest, {closest['layer']} ({target.forget_metric} = {closest['closest_forget']:.4g} at step "
                   f"size {closest['closest_lambda']:.4g})")
            tries = [(closest["layer"], closest["closest_lambda"], how)]
            warns.append(how)
        else:
            tries = []
        # a host evaluator with a guard (judged outputs of the concept's neighbours) adds it to the stop rule
        guard = getattr(step_evaluator, "guard", None)
        step_target = target if guard is None else replace(
            target, guard_metric=step_evaluator.guard_metrics, guard_tolerance=step_evaluator.guard_tolerance)
        t = time.perf_counter()
        for i, (layer, found, how) in enumerate(tries):
            edited_tower, edited_block = towers[layer], int(blocks[layer])
            with stage(f"search_again/{layer}"):
                step_evaluator.cache()
                step_evaluator.prepare(edited_tower, edited_block)
                step_searches.append(search_step_size(
                    adapter.parameter(layer), direction[layer],
                    lambda: step_evaluator(edited_tower=edited_tower, block=edited_block), step_target,
                    max_evals=max_evals, lambda0=found if step_start == "found" else None, layer_name=layer,
                    rtol=rtol if step_rtol is None else step_rtol, progress=progress,
                    # the unedited host is the same for every layer: its outputs are judged once
                    baseline=step_searches[0].baseline if step_searches else None,
                    evaluate_guard=guard and (lambda: guard(edited_tower=edited_tower, block=edited_block)),
                    margin=getattr(step_evaluator, "margin", 1.0)))
            if step_searches[-1].status == "ok":
                best = step_searches[-1]
                break
            warns.append(f"{how}, but no step size of the second search met it"
                         + "".join(f" ({b})" for b in broke_guard(step_target, step_searches[-1:]))
                         + ("; the second search tries the next one" if i + 1 < len(tries) else ""))
        relaxed = getattr(step_evaluator, "relaxed_threshold", None)
        if best is None and relaxed is not None:
            best, relaxed_note = accept_relaxed(adapter, direction, step_searches, step_target, relaxed, guard,
                                                towers, blocks)
            relaxed_used = relaxed_note if best is not None else None
            if relaxed_used is not None:
                warns.append(relaxed_used)
        if tries:
            timings["step_size_search_again"] = round(time.perf_counter() - t, 2)
    step_search = step_searches[-1] if step_searches else None
    step_evaluations = {}
    if step_searches:
        guards = step_target.guards
        step_evaluations = {"forget": 1 + sum(len(s.trace) for s in step_searches),
                            "guard": bool(guards) + sum(all(m in st.metrics for m in guards)
                                                        for s in step_searches for st in s.trace) if guards else 0}
    no_patch = None
    if best is None:
        no_patch = explain_no_patch(step_target if step_searches else target, searches, step_searches)
        if step_evaluator is not None and relaxed_note is not None:  # the relaxed rule's step broke the guard
            no_patch["why"] = no_patch["why"].removesuffix(", so no patch was made and the model is unchanged") + (
                f"; {relaxed_note}, so no patch was made and the model is unchanged")
            no_patch["relaxed"] = relaxed_note
        warns.append(no_patch["why"])
    # CPU time of the method, every thread of this process: on a crowded machine wall time mostly measures the
    # others; for CPU-bound work this bounds the wall time on an idle machine (with one thread; less with more)
    timings["unlearn_cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    t = time.perf_counter()
    report = task.report_evaluator
    # The search already measured the report's quantities when the report evaluator is the search's (user data:
    # the same pictures) and the step size comes from that search: its baseline is "before", and the chosen
    # step's metrics are "after" (the search set the weights exactly as the patch does: the same fp32 delta
    # lambda * g_f added to the same original weights), so the report evaluates nothing again.
    measured = report is evaluator and (best is None or any(best is s for s in searches))
    if best is not None:  # activations upstream of the edit serve both the before and the after pass
        edited_tower, edited_block = towers[best.layer], int(blocks[best.layer])
    with stage("report"):
        if measured:
            before = dict(baseline)
        else:
            if best is not None:
                report.prepare(edited_tower, edited_block)
            if report is not evaluator:  # the search's evaluator still holds the unedited model's embeddings
                cache_embeddings(report, store)  # the same for every concept: read from the store after the first
            before = report.baseline()
    patch, after = None, before
    if best is not None:
        with stage("patch"):
            scope = adapter.patch_scope(best.layer)
            patch = Patch.from_step(adapter.name, task.concept, best.layer, best.best_lambda,
                                    direction[best.layer], scope_fingerprint(adapter.model, scope),
                                    best.best_metrics, scope=scope,
                                    base_digest=tensor_digest(adapter.parameter(best.layer)))
        if measured:
            after = dict(best.best_metrics)
        else:
            with stage("report"):
                patch.apply(adapter.model)
                try:
                    after = report(edited_tower=edited_tower, block=edited_block)
                finally:
                    patch.revert(adapter.model)
        patch.metrics = {"search": best.best_metrics, "report_before": before, "report_after": after}
    timings["report"] = round(time.perf_counter() - t, 2)
    missing, unmeasured_warns = unmeasured(before, after, report)
    warns += unmeasured_warns
    status = "target-not-reached" if best is None else STATUS_INCOMPLETE if missing else "ok"
    return UnlearnResult(
        model=adapter.name, concept=task.concept, task=task.description, gradients=grads, table=table,
        searches=searches, layer=best.layer if best else None, tower=towers[best.layer] if best else None,
        step_size=best.best_lambda if best else None, status=status,
        patch=patch, before=before, after=after, seconds=time.perf_counter() - start,
        peak_rss_mb=peak_rss_mb(), model_bytes=model_bytes(adapter.model), timings=timings, warnings=warns,
        preset=preset, candidates=candidates, target=target.describe(), retain_set=retain_set,
        step_search=step_search, step_searches=step_searches, no_patch=no_patch, step_evaluations=step_evaluations,
        relaxed=relaxed_used,
        projected_off=[o.concept for o in project_off], policy=policy, refused=refused, fallback=fell_back)


# With a second search (search="generation"/"refine"), how many of the layers that met the target on the CLIP it may
# try, best-scoring first, before it gives up: a layer the CLIP ranks first can still fail on the host's outputs
SECOND_SEARCH_LAYERS = 2
REFINE_RTOL = 0.25  # search="refine" (see slugkit.adapters.host.SEARCHES) stops once hi - lo <= REFINE_RTOL * hi


class _HostSearch(Evaluator):
    """The :class:`~slugkit.tasks.Evaluator` protocol around a host's generation evaluator (no caching:
    every call regenerates from the current weights)."""

    def __init__(self, evaluate):
        self.evaluate = evaluate
        if getattr(evaluate, "guard", None) is not None:  # the host's retain guard (see search_step_size)
            self.guard_metrics, self.guard_tolerance = tuple(evaluate.guard_metrics), float(evaluate.guard_tolerance)
            self.guard = lambda edited_tower=None, block=None: dict(evaluate.guard())
        # the host's step margin and relaxed stop rule (see search_step_size and accept_relaxed), if it has them
        self.margin = float(getattr(evaluate, "margin", 1.0))
        self.relaxed_threshold = getattr(evaluate, "relaxed_threshold", None)

    def __call__(self, edited_tower: str | None = None, block: int | None = None) -> dict:
        return dict(self.evaluate(edited_tower=edited_tower, block=block))


def resolve_host_recipe(host: Host, preset: str | None, given: dict) -> tuple[str | None, dict]:
    """``(preset name, settings)`` of a run on ``host``: the host's recipe ``preset`` (default
    ``host.default_preset``) with the explicitly ``given`` settings (``None`` = not given) applied over it.

    A host without recipes (``host.presets`` empty) returns ``(None, given)``: ``preset`` then keeps its CLIP
    meaning. A ``fixed`` recipe (the authors') refuses a given setting that contradicts it.
    """
    if not host.presets:
        return None, given
    name = preset or host.default_preset
    if name not in host.presets:
        raise ValueError(f"preset must be one of {sorted(host.presets)} for {host.name!r}, got {preset!r}")
    recipe: HostRecipe = host.presets[name]
    settings = recipe.settings()
    clash = {k: v for k, v in given.items() if v is not None and k in settings and v != settings[k]}
    if recipe.fixed and clash:
        fixed = ", ".join(f"{k}={v.describe() if isinstance(v, Target) else v!r}" for k, v in settings.items())
        shown = {k: v.describe() if isinstance(v, Target) else v for k, v in clash.items()}
        raise ValueError(f"preset {name!r} on {host.name!r} fixes {fixed}; got {shown}: drop these arguments or "
                         f"use another preset ({', '.join(sorted(set(host.presets) - {name}))})")
    return name, settings | {k: v for k, v in given.items() if v is not None}


def unlearn_host(host: Host, concept: str, *, clip: CLIPAdapter | None = None, preset: str | None = None,
                 search: str | None = None, forget_text: str | None = None, policy: str | None = None,
                 tower: str | None = None, candidates: str | None = None, target: Target | None = None,
                 max_evals: int | None = None, rtol: float | None = None, project_others: bool | None = None,
                 data=None, classes: Sequence[str] | None = None, seed: int = 0, progress: bool = True,
                 **kwargs) -> UnlearnResult:
    """SLUG on a model that embeds a CLIP tower (Stable Diffusion, LLaVA).

    Runs :func:`unlearn` on the matching CLIP (``clip``, default ``load_clip(host.clip_name)``) with the
    candidates restricted to layers the host reads (its tower, blocks up to ``host.max_block``), then
    measures the host before and after the tower-scoped patch. ``host.check_concept`` refuses a concept the
    host cannot measure before any work.

    - ``preset``: a host with recipes (``host.presets``, e.g. LLaVA: "reference" = the authors', "slugkit",
      "orthogonal", "guarded" (its default), "clip-side") takes every setting below from the recipe (default
      ``host.default_preset``); explicit
      arguments override it, except that the authors' recipe refuses contradicting ones. For a host without
      recipes (SD), ``preset`` keeps its CLIP meaning (:data:`PRESETS`).
    - ``search`` (default: the recipe's, else ``host.search``: "generation" for Stable Diffusion): "clip"
      searches lambda on the CLIP's forget target (fast). "generation" chooses the layer the same way, then
      searches that layer's lambda again on the host's own outputs (judged pictures, answers): the forget
      target then holds where it matters, at the cost of about ten host evaluations. "refine" is that second
      search started at the CLIP's lambda and stopped once the bracket is within :data:`REFINE_RTOL` (a few
      host evaluations). "host" chooses the layer from the layer table alone (``policy``, e.g. "deepest") and
      searches its lambda on the host's outputs only (the authors' LLaVA code).
    - ``forget_text`` (default ``host.forget_text``): "captions" computes the forget gradient on the forget
      pictures' own captions, "name" pairs every forget picture with the concept's bare name instead.
    - ``project_others`` (default: the recipe's, as in LLaVA's "orthogonal" and "guarded", else
      ``host.project_others``, e.g. ``SDHost(project_others=True)``) also computes the forget gradients of
      ``host.other_concepts(concept)`` (each on its own pictures, paired as the concept's are; with ``data``, a
      concept without pictures in it is left out with a warning) and edits along the forget gradient minus its
      projection on their span (``unlearn(project_off=...)``).
    - A recipe's ``max_layers``, ``fallback`` and ``guard_stop`` go to :func:`unlearn` (LLaVA's "guarded": a walk of
      two layers with a retain and VQA guard on the search pictures).

    Other keyword arguments go to :func:`unlearn`. ``result.patch`` applies to the CLIP and to the host.
    """
    host.check_concept(concept)  # before loading anything: a concept the host cannot measure fails at once
    given = dict(search=search, forget_text=forget_text, policy=policy, tower=tower, candidates=candidates,
                 target=target, max_evals=max_evals, rtol=rtol, project_others=project_others)
    recipe, settings = resolve_host_recipe(host, preset, given)
    if recipe is not None:
        kwargs["preset"] = "slugkit"  # the recipe sets everything a CLIP preset would
    elif preset is not None:
        kwargs["preset"] = preset
    search = settings.pop("search") or host.search
    forget_text = settings.pop("forget_text") or host.forget_text
    search_options = settings.pop("search_options", None) or {}
    project_others = settings.pop("project_others")
    project_others = host.project_others if project_others is None else bool(project_others)
    settings = {k: v for k, v in settings.items() if v is not None}
    settings.setdefault("tower", host.tower)  # only the host's tower has candidates ("deepest" needs it named)
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(map(repr, SEARCHES))}, got {search!r}")
    if forget_text not in FORGET_TEXTS:
        raise ValueError(f"forget_text must be one of {', '.join(map(repr, FORGET_TEXTS))}, got {forget_text!r}")
    if clip is None:
        from .models.loading import load_clip

        with stage("load"):
            clip = load_clip(host.clip_name)
    allowed = [info.name for info in clip.candidate_layers() if host.accepts(info)]
    if not allowed:
        raise ValueError(f"{clip.name!r} has no candidate layer that {host.name!r} reads "
                         f"({host.tower} tower, blocks <= {host.max_block})")
    task = kwargs.pop("task", None) or make_task(clip, concept, data, classes, seed)
    if forget_text == "name":
        task = task.with_forget_caption(task.concept)
    if project_others:  # the other concepts' tasks, their forget pictures paired as the concept's are
        kwargs["project_off"], unseen = [], []
        for other in host.other_concepts(task.concept):
            known = None if data is None else [c for c in [task.concept, *(classes or [])] if c != other]
            try:
                o = make_task(clip, other, data, known, seed)
            except EmptyForgetSet:  # your data has no picture of it (the toy world has pictures of every concept)
                if data is None:
                    raise
                unseen.append(other)
                continue
            kwargs["project_off"].append(o.with_forget_caption(o.concept) if forget_text == "name" else o)
        if unseen:
            warnings.warn(f"no picture of {', '.join(map(repr, unseen))} in the data: the edit is not kept orthogonal "
                          f"to {'its' if len(unseen) == 1 else 'their'} forget gradient", stacklevel=2)
    if search != "clip":
        on_host = _HostSearch(host.generation_evaluator(task.concept, clip, **search_options))
        kwargs["search_evaluator" if search == "host" else "step_evaluator"] = on_host
    if search == "refine":
        kwargs.update(step_start="found", step_rtol=REFINE_RTOL)
    result = unlearn(clip, concept, task=task, layers=allowed, seed=seed, progress=progress, **settings, **kwargs)
    if recipe is not None:
        result.preset = recipe
    if result.patch is not None and result.patch.scope != host.scope:
        raise ValueError(f"the patch of {result.layer!r} is scoped to {result.patch.scope!r}, not to the "
                         f"{host.scope!r} tower {host.name!r} embeds")
    t = time.perf_counter()  # the host's side: its metrics before/after the patch, the bytes the patch edits
    if result.patch is not None:
        with stage("host_report"):
            result.host_metrics = host.report_metrics(result.concept, result.patch, progress=progress)
            result.host_metrics["patch_footprint"] = host.patch_footprint(result.patch)
    result.timings["host_report"] = round(time.perf_counter() - t, 2)
    result.host, result.edited_model_bytes, result.search = host.name, host.edited_model_bytes(), search
    result.peak_rss_mb = peak_rss_mb()
    return result

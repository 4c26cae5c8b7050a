"""Several concepts at once, as the SLUG paper does it (appendix): one layer per concept, one composed patch.

1. Each concept's forget gradient is computed on the *original* model (one retain gradient for the set).
2. Each concept gets its own layer from its own Pareto front: every Pareto layer's step size is searched
   for that concept alone, then the layers are assigned greedily, the concept with the fewest working
   layers first: each tries its best few layers no other concept took (a shared layer only when its front
   leaves no free working layer) together with the edits already chosen, and keeps the one that holds every
   target with the least damage (:func:`assign_layers`).
3. Each step size is searched again with the *other* concepts' updates applied, concept after concept,
   from its solo step size (so it can shrink when the others' edits already help); a second round runs
   when some concept's forget target no longer holds once all updates are in.
4. The updates become one patch (:func:`slugkit.patch.compose`): ``theta_l += sum_c lambda_c g_f,c`` over
   the concepts ``c`` that edit layer ``l``.

slugkit adds one step the paper does not have, the **retain repair** (``repair=True``, the default;
:func:`repair_direction`). Edits that each cost 0-3 retain points cost 19 together on the toy CLIP: each one
narrows the margins of the same retain classes without flipping them, together they flip whole classes (forgetting
Captain Zorp in the vision tower and Rex Calloway in the text tower sends every picture of Lumi Okafor to "Pip
Marlowe"), and no choice of layers avoids it. A gradient taken on the original model cannot see that; so after
step 3 the retain gradient is computed once more *on the composed model* (training pairs that name none of the
concepts), on the edited layers only, and projected off the span of the concepts' forget gradients on each layer:
either those of the original model alone, or those and the ones taken again on the composed model (the first can
walk a concept's forgetting back, Mira Quell's with Captain Zorp alone; the second costs more utility with Rex
Calloway). ``theta_l -= mu ||theta_l|| d_l / ||d_l||`` is added with the projection and the ``mu`` of
:data:`REPAIR_STEPS` that keep every forget target and score best (``mu = 0`` when none does better than the
unrepaired patch). One more gradient pass (retain pairs and each concept's forget pairs, edited layers only) and
``2 len(REPAIR_STEPS)`` evaluations.

Example::

    result = unlearn_many(load_clip("toy-clip"), ["Captain Zorp", "Mira Quell", "Rex Calloway"])
    result.per_concept["Mira Quell"]["layer"], result.after["forget_top5"], result.repair["step"]
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .adapters.base import CLIPAdapter
from .atlas import retain_gradient, toy_retain_pairs
from .bounds import check_batch_size, check_finite_weights, check_max_evals, check_seed
from .data.pairs import ImageTextPairs, mentions, pair_loader
from .eval.metrics import ConceptSetEvaluator, concept_label, resolve_concepts
from .fingerprint import tensor_digest, to_jsonable
from .gradients import Gradients, accumulate_gradients
from .layer_identification import candidate_infos, layer_table, select_layers
from .patch import Patch, compose, scope_fingerprint
from .slug import STATUS_INCOMPLETE, UnlearnResult, model_bytes, peak_rss_mb, resolve_preset, unmeasured
from .step_size_search import SearchResult, Target, search_step_size
from .tasks import toy_task


#: the retain repair's step sizes ``mu`` (fraction of each edited layer's norm), tried in this order
REPAIR_STEPS = (0.02, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28, 0.32)


def forget_key(metric: str, concept: str) -> str:
    """The per-concept metric key of :class:`~slugkit.eval.metrics.ConceptSetEvaluator`: ``forget_top5[NAME]``."""
    return f"{metric}[{concept}]"


def toy_set_worlds(names: Sequence[str], seed: int = 0, n_val: int = 500, n_test: int = 2000):
    """``(val, test)`` MiniCanvas splits for forgetting ``names`` together: every val picture of the concepts
    plus the first ``n_val`` others (as :func:`~slugkit.tasks.toy_task` does for one), and the test split."""
    from .data.minicanvas import ATTRIBUTES, cached_split, find_concept

    attribute = find_concept(names[0])["attribute"]
    pool = cached_split(2000, seed, "val")
    shows = np.isin(pool.labels(attribute), [ATTRIBUTES[attribute].index(n) for n in names])
    val = pool.take(np.sort(np.r_[np.flatnonzero(shows), np.flatnonzero(~shows)[:n_val]]))
    return val, cached_split(n_test, seed, "test")


@contextlib.contextmanager
def added(adapter: CLIPAdapter, deltas: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily ``theta_l += delta_l`` for every layer in ``deltas``; restored bit-exactly on exit."""
    originals = {n: adapter.parameter(n).detach().clone() for n in deltas}
    try:
        with torch.no_grad():
            for n, d in deltas.items():
                p = adapter.parameter(n)
                p.copy_((p.float() + d.to(p.device, torch.float32)).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for n, original in originals.items():
                adapter.parameter(n).copy_(original)


def repair_direction(retain_grad: torch.Tensor, forget_grads: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The retain repair's unit step on one layer: ``-||theta|| d / ||d||`` where ``d`` is ``retain_grad`` with its
    components along ``forget_grads`` removed (Gram-Schmidt in float64), so a step ``mu`` times it descends the
    retain loss by ``mu`` of the layer's norm without moving along any concept's forget gradient. All zero when
    less than a millionth of ``retain_grad``'s norm is left (rounding, not a direction)."""
    basis: list[torch.Tensor] = []
    for g in forget_grads:
        v = g.detach().flatten().double().clone()
        for q in basis:
            v -= (v @ q) * q
        if v.norm() > 1e-6 * float(g.norm()):  # a dependent gradient adds no direction
            basis.append(v / v.norm())
    d = retain_grad.detach().flatten().double().clone()
    for q in basis:
        d -= (d @ q) * q
    norm = float(d.norm())
    if norm <= 1e-6 * float(retain_grad.norm()):
        return torch.zeros_like(retain_grad, dtype=torch.float32)
    scale = torch.linalg.vector_norm(weight.detach(), dtype=torch.float64).item() / norm
    return (-scale * d).reshape(retain_grad.shape).float()


def pairs_naming_none(pairs: ImageTextPairs, concepts: Sequence[str]) -> ImageTextPairs:
    """The pairs whose caption names none of ``concepts`` (the retain repair's data)."""
    keep = [i for i, c in enumerate(pairs.captions()) if not any(mentions(c, n) for n in concepts)]
    if not keep:
        raise ValueError(f"every retain pair names one of {list(concepts)}: the retain repair has no data")
    return pairs.subset(keep)


def assign_layers(options: dict[str, list[tuple[str, float]]], evaluate=None, max_tries: int = 4) -> dict[str, str]:
    """One layer per concept, chosen greedily.

    ``options[c]``: the layers where ``c``'s own search met its target, each with its solo score (higher is
    better). Concepts with fewer options choose first. Each considers its ``max_tries`` best layers that no earlier
    concept took (all of its layers when every one is taken). Without ``evaluate`` it takes the best by solo
    score. With it, ``evaluate({concept: layer, ...})`` measures edits together and returns ``(every target
    reached, score)``: each concept takes the candidate that, with the edits chosen before it, keeps every target
    and scores best (collateral damage between edits is measured, not guessed), and the greedy pass is repeated
    with each concept choosing first in turn, keeping the best whole assignment. Returns ``{concept: layer}`` in
    ``options`` order (concepts without options get none).
    """
    first = sorted(options, key=lambda c: (len(options[c]), list(options).index(c)))
    memo: dict[frozenset, tuple[bool, float]] = {}

    def measured(assignment: dict[str, str]) -> tuple[bool, float]:
        key = frozenset(assignment.items())
        if key not in memo:
            ok, score = evaluate(assignment)
            memo[key] = (bool(ok), float(score))
        return memo[key]

    def greedy(order: list[str]) -> dict[str, str]:
        taken: set[str] = set()
        chosen: dict[str, str] = {}
        for c in order:
            ranked = [layer for layer, _ in sorted(options[c], key=lambda o: -o[1])]
            if not ranked:
                continue
            tries = ([layer for layer in ranked if layer not in taken] or ranked)[:max_tries]
            if evaluate is None or len(tries) == 1:
                chosen[c] = tries[0]
            else:
                chosen[c] = max(tries, key=lambda layer: measured(chosen | {c: layer}))
            taken.add(chosen[c])
        return {c: chosen[c] for c in options if c in chosen}

    if evaluate is None:
        return greedy(first)
    candidates = [greedy(first[k:] + first[:k]) for k in range(len(first))]
    return max(candidates, key=lambda a: measured(a) if a else (False, float("-inf")))


@dataclass
class ManyResult(UnlearnResult):
    """An :class:`~slugkit.slug.UnlearnResult` for several concepts: ``layer``, ``tower`` and ``step_size`` are
    lists (one entry per concept, in ``concepts`` order), ``per_concept`` holds each concept's numbers and the
    ``joint_searches`` the step-size searches run with the other concepts' updates applied."""

    concepts: list[str] = field(default_factory=list)
    per_concept: dict = field(default_factory=dict)
    joint_searches: list[SearchResult] = field(default_factory=list)
    rounds: int = 0
    repair: dict = field(default_factory=dict)  # the retain repair: step, layers, retain pairs, what each step gave
    concept_gradients: dict = field(default_factory=dict)  # {concept: Gradients}, forget gradient per concept

    def report(self, patch_bytes: int | None = None) -> dict:
        """``report.json``: the single-concept keys for the whole forget set, plus ``concepts``, ``per_concept``
        ``{NAME: {forget_top1_after, forget_top5_after, layer, step_size, ...}}`` and the joint searches."""
        out = super().report(patch_bytes)
        out |= to_jsonable({"concepts": self.concepts, "per_concept": self.per_concept, "rounds": self.rounds,
                            "joint_search": [s.to_dict() for s in self.joint_searches],
                            "repair": self.repair})
        return out

    def summary(self) -> str:
        def pct(x):
            return "  n/a" if x is None or not math.isfinite(x) else f"{100 * x:5.1f}%"

        b, a = self.before, self.after
        lines = [f"SLUG on {self.model}: forget {len(self.concepts)} concepts at once -> {self.status}",
                 f"  {'concept':18s}{'layer':50s}{'step size':>10s}{'top-1':>8s}{'top-5':>8s}"]
        for c, p in self.per_concept.items():
            lines.append(f"  {c[:18]:18s}{str(p['layer'])[:50]:50s}{p['step_size'] or float('nan'):10.4g}"
                         f"{pct(p['forget_top1_after']):>8s}{pct(p['forget_top5_after']):>8s}")
        lines.append(f"  {'':20s}{'before':>8s}{'after':>8s}")
        for label, key in (("forget top-1 (all)", "forget_top1"), ("forget top-5 (all)", "forget_top5"),
                           ("retain top-1", "retain_top1"), ("utility", "utility")):
            lines.append(f"  {label:20s}{pct(b.get(key)):>8s}{pct(a.get(key)):>8s}")
        patch = f"{self.patch.nbytes / 1024:.0f} KiB" if self.patch else "none"
        repair = "no retain repair" if not self.repair else f"retain repair {self.repair['step']:g}" + (
            f" (off the {self.repair['projected_off']} forget gradients)" if self.repair["step"] else "")
        lines.append(f"  {len(set(self.layer or []) - {None})} distinct layer(s), {self.rounds} joint round(s), "
                     f"{repair}, {self.seconds:.1f} s, patch {patch}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def unlearn_many(adapter: CLIPAdapter, concepts: Sequence[str], *, policy: str = "pareto",
                 include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None,
                 tower: str | None = None, candidates: str | None = None, target: Target | None = None,
                 max_evals: int | None = None, rtol: float | None = None, max_rounds: int = 2, repair: bool = True,
                 batch_size: int = 64, seed: int = 0, n_retain: int = 1024, n_val: int = 500, n_test: int = 2000,
                 progress: bool = True) -> ManyResult:
    """Forget several toy-world concepts of one attribute at once (e.g. three characters), one layer each.

    ``policy``/``tower``/``include``/``exclude``/``candidates`` choose each concept's candidate layers as in
    :func:`slugkit.unlearn` (default: every Pareto layer of its own front); ``target`` (default forget top-5 = 0)
    applies to each concept on its own pictures. The retain gradient of layer identification is one for the set:
    SLUG's shared retain set, ``n_retain`` seeded training pairs (:func:`slugkit.atlas.retain_gradient`; it may
    show the concepts). See the module docstring for the procedure; ``max_rounds`` bounds the joint rounds;
    ``repair=False`` leaves out slugkit's retain repair (the paper's procedure alone). The model is left
    unchanged; ``result.patch`` is the composed patch.
    """
    start = time.perf_counter()
    names, attribute = resolve_concepts(concepts)
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"expected at least two different concepts (slugkit.unlearn forgets one), got {names}")
    from .models.loading import TOY_MODELS

    if adapter.name not in TOY_MODELS:
        raise ValueError(f"forgetting several concepts at once runs on the toy world models {', '.join(TOY_MODELS)} "
                         f"for now, got {adapter.name!r}; forget one concept at a time with your data")
    settings = resolve_preset("slugkit", candidates, target, max_evals, rtol)
    candidates, target, max_evals, rtol = (settings[k] for k in ("candidates", "target", "max_evals", "rtol"))
    seed, batch_size, max_evals = check_seed(seed), check_batch_size(batch_size), check_max_evals(max_evals)
    check_finite_weights(adapter.model, adapter.name)
    infos = candidate_infos(adapter, candidates, include=include, exclude=exclude)
    layers = [i.name for i in infos]
    timings: dict[str, float] = {}

    # 1. gradients on the original model: each concept's forget gradient, one retain gradient
    t = time.perf_counter()
    tasks = {n: toy_task(adapter, n, seed=seed, n_val=n_val, n_test=n_test) for n in names}
    retain_pairs = toy_retain_pairs(seed, n_retain)
    g_r = retain_gradient(adapter, layers, retain_pairs, batch_size=batch_size, progress=progress)
    grads = {n: Gradients(accumulate_gradients(adapter, pair_loader(tasks[n].forget, adapter, batch_size=batch_size),
                                               "forget", layers, desc=f"forget gradient {n}", progress=progress),
                          g_r, {"model": adapter.name, "retain_pairs": n_retain - n_retain % min(batch_size, n_retain),
                                "retain_batches": n_retain // min(batch_size, n_retain)})
             for n in names}
    timings["gradients"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    tables = {n: layer_table(adapter, grads[n], infos=infos) for n in names}
    towers = dict(zip(tables[names[0]]["name"], tables[names[0]]["tower"]))
    blocks = dict(zip(tables[names[0]]["name"], tables[names[0]]["block"].astype(int)))
    timings["layer_identification"] = round(time.perf_counter() - t, 2)

    val, test = toy_set_worlds(names, seed, n_val, n_test)
    targets = {n: Target(forget_key(target.forget_metric, n), target.threshold, target.score_metrics) for n in names}

    def search(n: str, layer: str, evaluator: ConceptSetEvaluator, lambda0: float | None = None) -> SearchResult:
        """Search ``n``'s step size on ``layer``; ``evaluator`` has cached the model as it is now."""
        evaluator.prepare(towers[layer], blocks[layer])
        return search_step_size(adapter.parameter(layer), grads[n].forget[layer],
                                lambda: evaluator(edited_tower=towers[layer], block=blocks[layer]), targets[n],
                                max_evals=max_evals, lambda0=lambda0, layer_name=layer, rtol=rtol, progress=False)

    # 2. each concept alone on every layer of its own front; then one layer per concept
    t = time.perf_counter()
    solo: dict[str, list[SearchResult]] = {}
    unedited = ConceptSetEvaluator(adapter, val, names).cache()
    for n in tqdm(names, desc="layers per concept", disable=not progress):
        solo[n] = [search(n, layer, unedited) for layer in select_layers(tables[n], policy, tower)]
    options = {n: [(s.layer, targets[n].score(s.best_metrics)) for s in solo[n] if s.status == "ok"] for n in names}
    solo_lam = {(n, s.layer): s.best_lambda for n in names for s in solo[n] if s.status == "ok"}

    def deltas(assignment: dict[str, str], lams: dict[str, float], skip: str | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for n, layer in assignment.items():
            if n != skip:
                d = lams[n] * grads[n].forget[layer]
                out[layer] = out[layer] + d if layer in out else d
        return out

    def together_with(update: dict[str, torch.Tensor]) -> dict:
        with added(adapter, update):
            return ConceptSetEvaluator(adapter, val, names).cache().baseline()

    def together(assignment: dict[str, str], lams: dict[str, float]) -> dict:
        return together_with(deltas(assignment, lams))

    def evaluate(assignment: dict[str, str]) -> tuple[bool, float]:
        m = together(assignment, {n: solo_lam[(n, layer)] for n, layer in assignment.items()})
        return all(targets[n].reached(m) for n in assignment), target.score(m)

    chosen = assign_layers(options, evaluate)
    lam = {n: solo_lam[(n, chosen[n])] for n in chosen}
    timings["step_size_search"] = round(time.perf_counter() - t, 2)
    warns = [f"no layer of {n!r}'s Pareto front met the target on its own: {n!r} is not forgotten"
             for n in names if n not in chosen]

    # 3. each step size again with the others' updates applied, until every target holds together
    t = time.perf_counter()
    joint: list[SearchResult] = []
    rounds = 0
    final = None
    for rounds in range(1, max_rounds + 1):
        for n in tqdm(list(chosen), desc=f"joint round {rounds}", disable=not progress):
            with added(adapter, deltas(chosen, lam, skip=n)):
                s = search(n, chosen[n], ConceptSetEvaluator(adapter, val, names).cache(), lambda0=lam[n])
            joint.append(s)
            if s.status == "ok":
                lam[n] = s.best_lambda
        final = together(chosen, lam)
        if all(targets[n].reached(final) for n in chosen):
            break
    timings["step_size_search_again"] = round(time.perf_counter() - t, 2)

    # 3b. slugkit's retain repair: the retain gradient on the composed model, off the forget gradients
    fix: dict[str, torch.Tensor] = {}
    repair_info: dict = {}
    if repair and chosen:
        t = time.perf_counter()
        edited = sorted(set(chosen.values()))
        clean = pairs_naming_none(retain_pairs, names)
        with added(adapter, deltas(chosen, lam)):  # the gradients where the repair starts: the composed model
            g_fix = accumulate_gradients(adapter, pair_loader(clean, adapter, batch_size=batch_size), "retain", edited,
                                         desc="retain gradient, composed model", progress=progress)
            g_here = {n: accumulate_gradients(adapter, pair_loader(tasks[n].forget, adapter, batch_size=batch_size),
                                              "forget", edited, desc=f"forget gradient {n}, composed model",
                                              progress=progress) for n in names}
        bases = {"original": lambda layer: [grads[n].forget[layer] for n in names],
                 "original+composed": lambda layer: [grads[n].forget[layer] for n in names]
                 + [g_here[n][layer] for n in names]}
        units = {b: {layer: repair_direction(g_fix[layer], basis(layer), adapter.parameter(layer)) for layer in edited}
                 for b, basis in bases.items()}

        def rank(m: dict) -> tuple[bool, float]:  # every forget target first, then the score
            return all(targets[n].reached(m) for n in chosen), target.score(m)

        tried, unrepaired, best_mu, best_basis = [], final, 0.0, None
        update = deltas(chosen, lam)
        for b, mu in tqdm([(b, mu) for b in units for mu in REPAIR_STEPS], desc="retain repair", disable=not progress):
            m = together_with({layer: update[layer] + mu * units[b][layer] for layer in edited})
            tried.append({"projected_off": b, "step": mu, "targets_reached": rank(m)[0], "metrics": m})
            if rank(m)[0] and rank(m) > rank(final):
                best_mu, best_basis, final = mu, b, m
        fix = {layer: best_mu * units[best_basis][layer] for layer in edited} if best_mu > 0 else {}
        repair_info = {"step": best_mu, "projected_off": best_basis, "layers": edited, "retain_pairs": len(clean),
                       "unrepaired": unrepaired, "tried": tried}
        timings["retain_repair"] = round(time.perf_counter() - t, 2)
    missed = [n for n in chosen if final is not None and not targets[n].reached(final)]
    if missed:
        warns.append(f"with every update applied, {missed} still miss the target on the search split after "
                     f"{rounds} joint round(s)")

    # 4. one composed patch, measured on the held-out test split
    t = time.perf_counter()
    report = ConceptSetEvaluator(adapter, test, names)
    before = report.cache().baseline()
    patch, after = None, before
    if chosen:
        scopes = {adapter.patch_scope(chosen[n]) for n in chosen}
        scope = scopes.pop() if len(scopes) == 1 else ""
        base = scope_fingerprint(adapter.model, scope)
        patch = compose([Patch.from_step(adapter.name, n, chosen[n], lam[n], grads[n].forget[chosen[n]], base,
                                         scope=scope, base_digest=tensor_digest(adapter.parameter(chosen[n])))
                         for n in chosen])
        if fix:
            patch = replace(patch, deltas={k: v + fix[k] for k, v in patch.deltas.items()},
                            metrics=patch.metrics | {"retain_repair": {"step": repair_info["step"],
                                                                        "layers": repair_info["layers"]}})
        patch.apply(adapter.model)
        try:
            after = report()
        finally:
            patch.revert(adapter.model)
        patch.metrics |= {"report_before": before, "report_after": after}
    timings["report"] = round(time.perf_counter() - t, 2)
    missing, unmeasured_warns = unmeasured(before, after, report)
    warns += unmeasured_warns
    ok = len(chosen) == len(names) and not missed
    status = "target-not-reached" if not ok else STATUS_INCOMPLETE if missing else "ok"
    per_concept = {n: {"layer": chosen.get(n), "tower": towers.get(chosen.get(n)), "step_size": lam.get(n),
                       "solo_step_size": next((s.best_lambda for s in solo[n] if s.layer == chosen.get(n)), None),
                       "layers_met_alone": [layer for layer, _ in options[n]],
                       "forget_top1_before": before.get(forget_key("forget_top1", n)),
                       "forget_top5_before": before.get(forget_key("forget_top5", n)),
                       "forget_top1_after": after.get(forget_key("forget_top1", n)),
                       "forget_top5_after": after.get(forget_key("forget_top5", n))} for n in names}
    table = pd.concat([tables[n].assign(concept=n) for n in names], ignore_index=True)
    return ManyResult(
        model=adapter.name, concept=concept_label(names), task=f"{len(names)} concepts of attribute {attribute}, "
        f"MiniCanvas seed {seed}: search on {len(val)} val images, report on {len(test)} test images",
        gradients=grads[names[0]], table=table, searches=[s for n in names for s in solo[n]],
        layer=[chosen.get(n) for n in names], tower=[towers.get(chosen.get(n)) for n in names],
        step_size=[lam.get(n) for n in names], status=status, patch=patch, before=before, after=after,
        seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb(), model_bytes=model_bytes(adapter.model),
        timings=timings, warnings=warns, candidates=candidates, target=target.describe() + " on each concept",
        concepts=names, per_concept=per_concept, joint_searches=joint, rounds=rounds, repair=repair_info,
        concept_gradients=grads)

"""Stages 1 and 2 without stage 3: where a concept lives in a model, and what editing there would cost.

- :func:`identify_layers` (``slugkit layers``): one concept's forget and retain gradients and its layer
  table (importance, alignment, Pareto, kind, tower, block), on any model and data ``unlearn`` accepts;
  nothing is unlearned.
- :func:`build_atlas` (``slugkit atlas``): every concept of the toy world at once, with one shared
  retain gradient: concept x layer matrices of importance and alignment, each concept's Pareto
  layers, and the cosine between concepts' forget gradients on every layer.
- :func:`similarity_vs_damage`: does that cosine, on the layer SLUG edits to forget concept A, predict
  how much the edit hurts concept B?

Example::

    report = identify_layers(load_clip("toy-clip"), "Captain Zorp")
    report.table[report.table["pareto"]]
    atlas = build_atlas(load_clip("toy-clip"))
    atlas.importance.loc["Captain Zorp"].nlargest(3)
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .adapters.base import TOWERS, CLIPAdapter
from .bounds import check_batch_size, check_finite_weights, check_retain_set, check_seed
from .data.pairs import ImageTextPairs, pair_loader
from .fingerprint import to_jsonable
from . import gradients
from .gradients import GradientStore, Gradients, accumulate_gradients, compute_gradients
from .layer_identification import candidate_infos, layer_table
from .rundir import atomic_run_dir


# ----------------------------------------------------------------------------------------------------
# The retain gradient shared by the atlas and unlearn_many
# ----------------------------------------------------------------------------------------------------
def retain_gradient(adapter: CLIPAdapter, layers: Sequence[str], pairs: ImageTextPairs, *, batch_size: int = 64,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """``g_r`` of ``layers``: the contrastive retain loss over ``pairs`` in equal batches of ``batch_size``.

    The one place the atlas and :func:`slugkit.multi.unlearn_many` obtain their retain gradient: SLUG's
    per-model one (:func:`slugkit.gradients.retain_gradient`, kept in memory, so 38 concepts and
    :func:`slugkit.unlearn` share one pass). Returns ``{name: fp32 CPU tensor}``.
    """
    loader = pair_loader(pairs, adapter, batch_size=batch_size, equal_batches=True)
    return gradients.retain_gradient(adapter, loader, layers, progress=progress)


def toy_retain_pairs(seed: int = 0, n_retain: int | None = None) -> ImageTextPairs:
    """SLUG's shared retain set of the toy world: the one :func:`slugkit.tasks.toy_task` gives every concept
    (a seeded sample of the MiniCanvas training pairs, whatever the concept)."""
    from .data.minicanvas import cached_split
    from .data.pairs import shared_retain_set

    return shared_retain_set(cached_split(2000, seed, "train"), n_retain, seed)


# ----------------------------------------------------------------------------------------------------
# One concept: `slugkit layers`
# ----------------------------------------------------------------------------------------------------
@dataclass
class LayerReport:
    """Stages 1-2 for one concept: the gradients and the layer table (one row per candidate layer)."""

    model: str
    concept: str
    task: str
    gradients: Gradients
    table: pd.DataFrame
    seconds: float
    timings: dict = field(default_factory=dict)

    @property
    def pareto(self) -> list[str]:
        """The Pareto layers, in table order (vision tower first, shallow to deep)."""
        return list(self.table.loc[self.table["pareto"], "name"])

    def records(self) -> list[dict]:
        """The table as JSON-safe rows (``shape`` as a list)."""
        return to_jsonable(self.table.assign(shape=self.table["shape"].map(list)).to_dict(orient="records"))

    def to_dict(self) -> dict:
        """What ``layers.json`` holds: the run's provenance, the Pareto layers and every row of the table."""
        meta = self.gradients.meta
        return to_jsonable({"model": self.model, "concept": self.concept, "task": self.task,
                            "forget_batches": meta.get("forget_batches"), "retain_pairs": meta.get("retain_pairs"),
                            "retain_batches": meta.get("retain_batches"), "seconds": round(self.seconds, 2),
                            "timings": self.timings, "pareto": self.pareto, "layers": self.records()})

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``layers.csv``, ``layers.json``, ``heatmap.png`` and ``pareto.png`` into ``out_dir``, atomically
        (same folder rules as ``slugkit unlearn``: see :mod:`slugkit.rundir`)."""
        import matplotlib.pyplot as plt

        from .viz.figures import layer_heatmap, pareto_figure

        with atomic_run_dir(out_dir, overwrite, what="layers") as tmp:
            self.table.assign(shape=self.table["shape"].map(lambda s: "x".join(map(str, s)))).to_csv(
                tmp / "layers.csv", index=False)
            (tmp / "layers.json").write_text(json.dumps(self.to_dict(), indent=2))
            for name, fig in (("heatmap.png", layer_heatmap(self.table, "importance")),
                              ("pareto.png", pareto_figure(self.table))):
                fig.savefig(tmp / name, dpi=110, bbox_inches="tight")
                plt.close(fig)
        return Path(out_dir)

    def summary(self) -> str:
        """The Pareto layers of each tower as a short table."""
        lines = [f"layers of {self.model} for {self.concept!r}: {len(self.table)} candidates, "
                 f"{len(self.pareto)} on the Pareto front ({self.seconds:.1f} s)",
                 f"  {'layer':52s}{'importance':>12s}{'alignment':>11s}"]
        for _, r in self.table[self.table["pareto"]].iterrows():
            lines.append(f"  {r['name'][:52]:52s}{r['importance']:12.4g}{r['alignment']:11.3f}")
        return "\n".join(lines)


def identify_layers(adapter: CLIPAdapter, concept: str, *, data=None, classes: Sequence[str] | None = None,
                    task=None, include: str | Sequence[str] | None = None,
                    exclude: str | Sequence[str] | None = None, tower: str | None = None,
                    candidates: str = "default", batch_size: int = 64, seed: int = 0,
                    store: GradientStore | str | Path | None = None, progress: bool = True) -> LayerReport:
    """Stages 1-2 of SLUG for ``concept``: exactly the gradients and layer table :func:`slugkit.unlearn` would
    compute with the same arguments, without searching a step size (the model is not changed).

    ``data``/``classes``, ``include``/``exclude``, ``candidates``, ``batch_size``, ``seed`` and ``store`` mean
    what they mean for :func:`slugkit.unlearn`; ``tower`` keeps only that tower's candidate layers.
    """
    from .slug import make_task

    start = time.perf_counter()
    seed, batch_size = check_seed(seed), check_batch_size(batch_size)
    check_finite_weights(adapter.model, adapter.name)
    task = task or make_task(adapter, concept, data, classes, seed)
    check_retain_set(len(task.retain), task.concept)
    infos = candidate_infos(adapter, candidates, include=include, exclude=exclude)
    if tower is not None:
        towers = sorted({i.tower for i in infos})
        infos = [i for i in infos if i.tower == tower]
        if not infos:
            raise ValueError(f"tower must be one of {towers}, got {tower!r}")
    if isinstance(store, (str, Path)):
        store = GradientStore(store)
    t = time.perf_counter()
    retain = task.shared_retain if task.shared_retain is not None else task.retain  # as unlearn's default
    layer_names = [i.name for i in infos]
    grads = compute_gradients(adapter, pair_loader(task.forget, adapter, batch_size=batch_size),
                              pair_loader(retain, adapter, batch_size=batch_size, equal_batches=True),
                              layers=layer_names, store=store, progress=progress, reuse_retain=True,
                              retain_layers=sorted(set(layer_names) | {i.name for i in adapter.candidate_layers()}))
    timings = {"gradients": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    table = layer_table(adapter, grads, infos=infos)
    timings["layer_identification"] = round(time.perf_counter() - t, 2)
    return LayerReport(adapter.name, task.concept, task.description, grads, table, time.perf_counter() - start,
                       timings)


# ----------------------------------------------------------------------------------------------------
# Every concept of the toy world: `slugkit atlas`
# ----------------------------------------------------------------------------------------------------
@dataclass
class Atlas:
    """Stages 1-2 for many concepts with one shared retain gradient.

    - ``concepts``: one row per concept (name, kind, attribute, forget_pairs), in world order.
    - ``layers``: one row per candidate layer (name, tower, block, kind, shape), in forward order.
    - ``importance`` / ``alignment`` / ``pareto``: concept x layer frames (index concept name, columns layer
      name); the front is computed per concept and tower, as :func:`~slugkit.layer_identification.layer_table`.
    - ``cosine``: ``(n_layers, n_concepts, n_concepts)`` cosine between concepts' forget gradients per layer.
    - ``forget`` (``{concept: {layer: tensor}}``) and ``retain`` (``{layer: tensor}``): the gradients themselves.
    """

    model: str
    concepts: pd.DataFrame
    layers: pd.DataFrame
    importance: pd.DataFrame
    alignment: pd.DataFrame
    pareto: pd.DataFrame
    cosine: np.ndarray
    forget: dict
    retain: dict
    meta: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.concepts["name"])

    def _concept(self, name: str) -> str:
        from .data.minicanvas import find_concept

        found = find_concept(name)["name"]
        if found not in self.importance.index:
            raise KeyError(f"{found!r} is not in this atlas; it holds {self.names[:4]}...")
        return found

    def table(self, concept: str) -> pd.DataFrame:
        """``concept``'s layer table (the columns :func:`~slugkit.layer_identification.layer_table` gives)."""
        c = self._concept(concept)
        return self.layers.assign(importance=self.importance.loc[c].to_numpy(),
                                  alignment=self.alignment.loc[c].to_numpy(), pareto=self.pareto.loc[c].to_numpy())

    def pareto_layers(self, concept: str) -> list[str]:
        """``concept``'s Pareto layers, in forward order."""
        row = self.pareto.loc[self._concept(concept)]
        return list(row.index[row.to_numpy()])

    def similarity(self, layer: str) -> pd.DataFrame:
        """Concept x concept cosine between forget gradients on ``layer``."""
        if layer not in self.importance.columns:
            raise KeyError(f"{layer!r} is not a candidate layer of this atlas; layers include "
                           f"{list(self.importance.columns[:3])}")
        k = list(self.importance.columns).index(layer)
        return pd.DataFrame(self.cosine[k], index=self.names, columns=self.names)

    def mean_similarity(self) -> pd.DataFrame:
        """Concept x concept cosine averaged over every candidate layer."""
        return pd.DataFrame(self.cosine.mean(0), index=self.names, columns=self.names)

    def shared_pareto(self, concepts: Sequence[str]) -> pd.DataFrame:
        """Pareto layers of ``concepts`` (rows: layers on some front; columns: concepts; True = on its front),
        the layers on several fronts first: where forgetting them together may collide."""
        cs = [self._concept(c) for c in concepts]
        sub = self.pareto.loc[cs].T
        sub = sub[sub.any(axis=1)]
        return sub.assign(_n=sub.sum(axis=1)).sort_values("_n", ascending=False, kind="stable").drop(columns="_n")

    def summary(self) -> pd.DataFrame:
        """Per concept: kind, number of Pareto layers, the most important layer and its tower."""
        best = self.importance.idxmax(axis=1)
        tower = dict(zip(self.layers["name"], self.layers["tower"]))
        return self.concepts.set_index("name")[["kind"]].assign(
            pareto_layers=self.pareto.sum(axis=1), most_important=best, tower=best.map(tower))

    def save(self, out_dir: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        """``importance.csv``, ``alignment.csv``, ``pareto.csv``, ``cosine.npz``, ``atlas.json`` and (with
        ``figures``) ``clustermap.png``, ``where.png`` and ``similarity.png`` into ``out_dir``, atomically."""
        import matplotlib.pyplot as plt

        with atomic_run_dir(out_dir, overwrite, what="atlas") as tmp:
            for name in ("importance", "alignment", "pareto"):
                getattr(self, name).to_csv(tmp / f"{name}.csv")
            np.savez_compressed(tmp / "cosine.npz", cosine=self.cosine, layers=np.array(self.layers["name"]),
                                concepts=np.array(self.names))
            (tmp / "atlas.json").write_text(json.dumps(to_jsonable({
                "model": self.model, "meta": self.meta,
                "concepts": self.concepts.to_dict(orient="records"),
                "layers": self.layers.assign(shape=self.layers["shape"].map(list)).to_dict(orient="records"),
                "pareto": {c: self.pareto_layers(c) for c in self.names}}), indent=1))
            if figures:
                from .viz import atlas as viz

                for name, fig in (("clustermap.png", viz.atlas_clustermap(self)), ("where.png", viz.where_concepts_live(self)),
                                  ("similarity.png", viz.concept_similarity(self))):
                    fig.savefig(tmp / name, dpi=100, bbox_inches="tight")
                    plt.close(fig)
        return Path(out_dir)


def _pareto_rows(importance: np.ndarray, alignment: np.ndarray, towers: np.ndarray) -> np.ndarray:
    from .layer_identification import pareto_front

    out = np.zeros_like(importance, dtype=bool)
    for t in np.unique(towers):
        cols = towers == t
        for i in range(importance.shape[0]):
            out[i, cols] = pareto_front(importance[i, cols], alignment[i, cols])
    return out


def build_atlas(adapter: CLIPAdapter, concepts: Sequence[str] | None = None, *, seed: int = 0,
                max_forget: int = 64, n_retain: int = 1024, batch_size: int = 64,
                candidates: str = "default", progress: bool = True) -> Atlas:
    """The atlas of a toy model: every concept's forget gradient (at most ``max_forget`` seeded forget pairs of the
    2000 training pairs a toy task draws from), one retain gradient (``n_retain`` seeded pairs,
    :func:`retain_gradient`), and the matrices of :class:`Atlas`. ``concepts`` default: all 38 of MiniCanvas."""
    import random

    from tqdm.auto import tqdm

    from .data.minicanvas import cached_split, concepts as world_concepts, find_concept
    from .data.pairs import forget_retain_sets
    from .models.loading import TOY_MODELS

    if adapter.name not in TOY_MODELS:
        raise ValueError(f"the atlas covers the toy world's concepts, so it needs a toy model ({', '.join(TOY_MODELS)}), "
                         f"got {adapter.name!r}; use `slugkit layers --data ...` for one concept of your data")
    seed, batch_size = check_seed(seed), check_batch_size(batch_size)
    if max_forget < 1:
        raise ValueError(f"max_forget must be a positive number of pairs, got {max_forget}")
    check_finite_weights(adapter.model, adapter.name)
    items = world_concepts() if concepts is None else [find_concept(c) for c in concepts]
    rank = {t: k for k, t in enumerate(TOWERS)}  # the order of layer_table: vision first, shallow to deep
    infos = sorted(candidate_infos(adapter, candidates), key=lambda i: (rank.get(i.tower, len(rank)), i.block))
    layers = [i.name for i in infos]
    start = time.perf_counter()
    retain = retain_gradient(adapter, layers, toy_retain_pairs(seed, n_retain), batch_size=batch_size,
                             progress=progress)
    train = cached_split(2000, seed, "train")
    forget, n_pairs = {}, []
    for c in tqdm(items, desc="forget gradients per concept", disable=not progress):
        idx = forget_retain_sets(train, c["name"], n_retain=1, seed=seed)[0].indices
        idx = sorted(random.Random(seed).sample(idx, min(max_forget, len(idx))))
        loader = pair_loader(train.subset(idx), adapter, batch_size=batch_size)
        forget[c["name"]] = accumulate_gradients(adapter, loader, "forget", layers, progress=False)
        n_pairs.append(len(idx))
    names = [c["name"] for c in items]
    weight_norm = np.array([torch.linalg.vector_norm(adapter.parameter(n).detach(), dtype=torch.float64).item()
                            for n in layers])
    unit_r = {n: retain[n].reshape(-1).double() / torch.linalg.vector_norm(retain[n].double()) for n in layers}
    imp = np.zeros((len(names), len(layers)))
    ali = np.zeros_like(imp)
    cosine = np.zeros((len(layers), len(names), len(names)))
    for k, layer in enumerate(layers):
        g = torch.stack([forget[c][layer].reshape(-1).double() for c in names])
        norms = torch.linalg.vector_norm(g, dim=1).clamp_min(1e-30)
        unit = g / norms[:, None]
        imp[:, k] = norms.numpy() / weight_norm[k]
        ali[:, k] = (unit @ unit_r[layer]).abs().clamp(max=1).numpy()
        cosine[k] = (unit @ unit.T).numpy()
    towers = np.array([i.tower for i in infos])
    frame = lambda a: pd.DataFrame(a, index=pd.Index(names, name="concept"), columns=layers)  # noqa: E731
    layer_rows = pd.DataFrame([{"name": i.name, "tower": i.tower, "block": i.block, "kind": i.kind,
                                "shape": tuple(i.shape)} for i in infos])
    concept_rows = pd.DataFrame([{"name": c["name"], "kind": c["kind"], "attribute": c["attribute"],
                                  "forget_pairs": n} for c, n in zip(items, n_pairs)])
    return Atlas(adapter.name, concept_rows, layer_rows, frame(imp), frame(ali),
                 frame(_pareto_rows(imp, ali, towers)), cosine, forget, retain,
                 meta={"seed": seed, "max_forget": max_forget, "retain_pairs": n_retain - n_retain % batch_size,
                       "seconds": round(time.perf_counter() - start, 2)})


# ----------------------------------------------------------------------------------------------------
# A prediction to test with the atlas: does gradient similarity foretell collateral damage?
# ----------------------------------------------------------------------------------------------------
@dataclass
class DamageTest:
    """``pairs``: one row per (A forgotten, B measured) with the cosine of their forget gradients on A's edited
    layer and B's top-1 drop; ``edits``: the edit made for each A; ``rho``/``p``: Spearman over the pairs."""

    pairs: pd.DataFrame
    edits: pd.DataFrame
    rho: float
    p: float
    rho_same_attribute: float
    p_same_attribute: float

    def summary(self) -> str:
        def verdict(rho: float, p: float) -> str:
            if not np.isfinite(rho):
                return "too few pairs"
            sign = "positive" if rho > 0 else "negative"
            return f"rho = {rho:.3f} (p = {p:.2g}): {sign}, {'significant' if p < 0.05 else 'not significant'} at p < 0.05"

        return (f"{len(self.pairs)} pairs from {len(self.edits)} edits. All pairs: {verdict(self.rho, self.p)}. "
                f"Pairs of one attribute: {verdict(self.rho_same_attribute, self.p_same_attribute)}.")


def default_sources(atlas: Atlas, per_kind: int = 2) -> list[str]:
    """The first ``per_kind`` concepts of each kind in the atlas: the A's of :func:`similarity_vs_damage`."""
    return [n for _, g in atlas.concepts.groupby("kind", sort=False) for n in list(g["name"])[:per_kind]]


def similarity_vs_damage(adapter: CLIPAdapter, atlas: Atlas, sources: Sequence[str] | None = None, *,
                         seed: int = 0, max_evals: int = 10, n_test: int = 1000, progress: bool = True) -> DamageTest:
    """Forget each concept A of ``sources`` (default :func:`default_sources`) by one SLUG edit and measure every
    other concept B of the atlas: damage = B's top-1 (its attribute, on its test pictures) before minus after.

    A's layer: of A's Pareto layers, the one with the largest importance / alignment (tried in that order, at most
    three, until one meets forget top-5 = 0), with A's atlas forget gradient and the usual step-size search on A's
    toy task. Predictor: the cosine of A's and B's forget gradients on that layer (the atlas's ``cosine``).
    """
    from scipy.stats import spearmanr
    from tqdm.auto import tqdm

    from .data.minicanvas import cached_split
    from .eval.zeroshot import zero_shot
    from .step_size_search import apply_step, search_step_size
    from .tasks import toy_task

    sources = default_sources(atlas) if sources is None else [atlas._concept(c) for c in sources]
    kinds = atlas.concepts.set_index("name")
    world = cached_split(n_test, seed, "test")
    per_class = lambda scores: {n: v for s in scores.values() for n, v in s["per_concept"].items()}  # noqa: E731
    before = per_class(zero_shot(adapter, world))
    towers = dict(zip(atlas.layers["name"], atlas.layers["tower"]))
    blocks = dict(zip(atlas.layers["name"], atlas.layers["block"].astype(int)))
    edits, rows = [], []
    for a in tqdm(sources, desc="edits", disable=not progress):
        t = atlas.table(a)
        front = t[t["pareto"]].assign(ratio=lambda d: d["importance"] / d["alignment"].clip(lower=1e-12))
        task = toy_task(adapter, a, seed=seed)
        evaluator = task.search_evaluator.cache()
        found = None
        for layer in list(front.sort_values("ratio", ascending=False)["name"])[:3]:
            evaluator.prepare(towers[layer], blocks[layer])
            s = search_step_size(adapter.parameter(layer), atlas.forget[a][layer],
                                 lambda: evaluator(edited_tower=towers[layer], block=blocks[layer]),
                                 max_evals=max_evals, layer_name=layer, rtol=0.05, progress=False)
            if s.status == "ok":
                found = s
                break
        if found is None:
            edits.append({"concept": a, "layer": None, "step_size": None})
            continue
        with apply_step(adapter.parameter(found.layer), atlas.forget[a][found.layer], found.best_lambda):
            after = per_class(zero_shot(adapter, world))
        edits.append({"concept": a, "layer": found.layer, "step_size": found.best_lambda,
                      "forget_top1_after": after[a]})
        sim = atlas.similarity(found.layer)[a]
        for b in atlas.names:
            if b != a and np.isfinite(before.get(b, np.nan)):
                rows.append({"forgotten": a, "measured": b, "layer": found.layer, "cosine": float(sim[b]),
                             "damage": 100 * (before[b] - after[b]),
                             "same_attribute": bool(kinds.at[a, "attribute"] == kinds.at[b, "attribute"])})
    pairs = pd.DataFrame(rows)
    if len(pairs) < 3:
        raise ValueError(f"only {len(pairs)} pairs measured: no edit met the target for {sources}")
    rho, p = spearmanr(pairs["cosine"], pairs["damage"])
    same = pairs[pairs["same_attribute"]]
    rho_s, p_s = spearmanr(same["cosine"], same["damage"]) if len(same) >= 3 else (np.nan, np.nan)
    return DamageTest(pairs, pd.DataFrame(edits), float(rho), float(p), float(rho_s), float(p_s))

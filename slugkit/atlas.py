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

from .adapters.base import CLIPAdapter
from .bounds import check_batch_size, check_finite_weights, check_retain_set, check_seed
from .data.pairs import ImageTextPairs, pair_loader
from .fingerprint import model_fingerprint, to_jsonable
from .gradients import GradientStore, Gradients, accumulate_gradients, compute_gradients
from .layer_identification import candidate_infos, layer_table
from .rundir import atomic_run_dir


# ----------------------------------------------------------------------------------------------------
# The retain gradient shared by the atlas and unlearn_many
# ----------------------------------------------------------------------------------------------------
_RETAIN_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def retain_gradient(adapter: CLIPAdapter, layers: Sequence[str], pairs: ImageTextPairs, *, batch_size: int = 64,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """``g_r`` of ``layers``: the contrastive retain loss over ``pairs`` in equal batches of ``batch_size``.

    The one place the atlas and :func:`slugkit.multi.unlearn_many` obtain their retain gradient (kept in
    memory per model weights, pairs and layers, so 38 concepts share one pass). Returns
    ``{name: fp32 CPU tensor}``.
    """
    key = (model_fingerprint(adapter.model), getattr(pairs, "origin", ""), tuple(getattr(pairs, "indices", ())),
           len(pairs), tuple(layers), batch_size)
    if key not in _RETAIN_CACHE:
        loader = pair_loader(pairs, adapter, batch_size=batch_size, equal_batches=True)
        _RETAIN_CACHE.clear()  # one entry: gradients of a whole model are not small
        _RETAIN_CACHE[key] = accumulate_gradients(adapter, loader, "retain", layers, progress=progress)
    return _RETAIN_CACHE[key]


def toy_retain_pairs(seed: int = 0, n_retain: int = 1024, exclude: Sequence[str] = ()) -> ImageTextPairs:
    """A seeded sample of ``n_retain`` MiniCanvas training pairs (of the 2000 a toy task draws from) whose
    captions name none of ``exclude``."""
    import random

    from .data.minicanvas import cached_split
    from .data.pairs import mentions

    train = cached_split(2000, seed, "train")
    captions = train.captions()
    pool = [i for i, c in enumerate(captions) if not any(mentions(c, n) for n in exclude)]
    if n_retain > len(pool):
        raise ValueError(f"n_retain={n_retain} is larger than the {len(pool)} training pairs that name none of "
                         f"{list(exclude)}")
    return train.subset(sorted(random.Random(seed).sample(pool, n_retain)))


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
    grads = compute_gradients(adapter, pair_loader(task.forget, adapter, batch_size=batch_size),
                              pair_loader(task.retain, adapter, batch_size=batch_size, equal_batches=True),
                              layers=[i.name for i in infos], store=store, progress=progress)
    timings = {"gradients": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    table = layer_table(adapter, grads, infos=infos)
    timings["layer_identification"] = round(time.perf_counter() - t, 2)
    return LayerReport(adapter.name, task.concept, task.description, grads, table, time.perf_counter() - start,
                       timings)

"""Stage 2 of SLUG: rank single layers by importance and gradient alignment, keep the Pareto front.

- importance ``I_l = ||g_f,l||_F / ||theta_l||_F`` (higher = the forget loss pulls harder on the layer)
- alignment  ``A_l = |cos(vec g_f,l, vec g_r,l)|`` (lower = a forget step disturbs the retain loss less)

Example::

    table = layer_table(adapter, grads)
    select_layers(table, "deepest", tower="text")
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from slugkit.adapters.base import LAYER_KINDS, TOWERS, CLIPAdapter, LayerInfo
from slugkit.gradients import Gradients

POLICIES = ("pareto", "deepest", "deepest-first", "deepest-block", "cheapest-first")
# "cheapest-first" searches the text tower's Pareto layers before the vision tower's: a text edit re-embeds only the
# distinct texts (names and captions), a vision edit every picture from the edited block on
CHEAPEST_FIRST_TOWERS = ("text", "vision")
COLUMNS = [
    "name", "tower", "block", "kind", "shape",
    "importance", "alignment", "grad_norm", "weight_norm", "pareto",
]  # fmt: skip


def _norm(x: torch.Tensor) -> float:
    return torch.linalg.vector_norm(x.detach(), dtype=torch.float64).item()


def importance(g_f: torch.Tensor, theta: torch.Tensor) -> float:
    """``||g_f||_F / ||theta||_F`` for a gradient and the weight it belongs to (same shape)."""
    if g_f.shape != theta.shape:
        raise ValueError(f"gradient shape {tuple(g_f.shape)} differs from weight shape {tuple(theta.shape)}")
    w = _norm(theta)
    if w == 0:
        raise ValueError("importance is undefined for an all-zero weight")
    return _norm(g_f) / w


def alignment(g_f: torch.Tensor, g_r: torch.Tensor) -> float:
    """``|cos(vec g_f, vec g_r)|`` in ``[0, 1]``."""
    if g_f.shape != g_r.shape:
        raise ValueError(f"forget gradient shape {tuple(g_f.shape)} differs from retain {tuple(g_r.shape)}")
    a, b = g_f.detach().reshape(-1).double(), g_r.detach().to(g_f.device).reshape(-1).double()
    na, nb = torch.linalg.vector_norm(a).item(), torch.linalg.vector_norm(b).item()
    if na == 0 or nb == 0:
        raise ValueError("alignment is undefined when a gradient is all zero")
    return min(1.0, abs(torch.dot(a, b).item()) / (na * nb))


def pareto_front(importance: Sequence[float], alignment: Sequence[float]) -> np.ndarray:
    """Boolean mask ``(n,)`` of non-dominated points.

    Point ``i`` is dominated iff some ``j`` has strictly higher importance AND strictly lower
    alignment; ties in either coordinate do not dominate, so duplicates are kept together.
    """
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    ali = np.asarray(alignment, dtype=np.float64).reshape(-1)
    if imp.shape != ali.shape:
        raise ValueError(f"importance has {imp.size} values but alignment has {ali.size}")
    if np.isnan(imp).any() or np.isnan(ali).any():
        raise ValueError("pareto_front got NaN importance or alignment")
    front = np.ones(imp.size, dtype=bool)
    order = np.argsort(-imp, kind="stable")
    best = np.inf  # lowest alignment among points of strictly higher importance than the current group
    i = 0
    while i < order.size:
        j = i
        while j < order.size and imp[order[j]] == imp[order[i]]:
            j += 1
        group = order[i:j]
        front[group] = ~(best < ali[group])
        best = min(best, ali[group].min())
        i = j
    return front


def _matches(info, patterns: Sequence[str]) -> bool:
    return any(p == info.kind if p in LAYER_KINDS else (p == info.name or re.search(p, info.name))
               for p in patterns)


def _as_list(x) -> list[str]:
    return [x] if isinstance(x, str) else list(x or [])


def candidate_infos(
    adapter: CLIPAdapter,
    candidates: str = "default",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[LayerInfo]:
    """The layers SLUG considers: candidate set ``candidates``, then ``include`` / ``exclude``.

    Entries of ``include`` / ``exclude`` are layer kinds (e.g. ``"mlp_fc"``, ``"norm"``), exact
    parameter names, or regexes searched in the name. An ``include`` entry that is a kind or an exact
    parameter name outside the set *adds* those parameters (e.g. ``include=["visual.proj"]`` on the
    default set); then only layers matching some ``include`` entry and no ``exclude`` entry are kept.
    """
    include, exclude = _as_list(include), _as_list(exclude)
    infos = adapter.candidate_layers(candidates)
    names = {i.name for i in infos}
    params = dict(adapter.model.named_parameters())
    extra = [p for p in include if p not in LAYER_KINDS and p not in names and p in params]
    added_kinds = [p for p in include if p in LAYER_KINDS and not any(i.kind == p for i in infos)]
    if extra or added_kinds:
        wanted = {adapter.layer_info(p).name for p in extra}  # raises for parameters of no tower
        everything = adapter.describe_parameters()
        order = {i.name: k for k, i in enumerate(everything)}
        infos = sorted(infos + [i for i in everything if i.name not in names
                                and (i.name in wanted or i.kind in added_kinds)], key=lambda i: order[i.name])
    selected = [i for i in infos if (not include or _matches(i, include)) and not _matches(i, exclude)]
    if not selected:
        raise ValueError(f"no candidate layer left in the {candidates!r} set after include={include} and "
                         f"exclude={exclude}")
    return selected


def layer_table(
    adapter: CLIPAdapter,
    grads: Gradients,
    layers: Sequence[str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    candidates: str = "default",
    infos: Sequence[LayerInfo] | None = None,
) -> pd.DataFrame:
    """One row per candidate layer with its importance, alignment and Pareto membership.

    The layers are ``infos`` if given (e.g. from :func:`candidate_infos`), else
    ``candidate_infos(adapter, candidates, include, exclude)``; ``layers`` then restricts them, and
    defaults to every one with gradients in ``grads``. The Pareto front is computed per tower.
    Columns: name, tower, block, kind, shape, importance, alignment, grad_norm (``||g_f||_F``),
    weight_norm (``||theta||_F``), pareto.
    """
    if infos is None:
        infos = candidate_infos(adapter, candidates, include=include, exclude=exclude)
    infos = {info.name: info for info in infos}
    if layers is None:
        names = [n for n in infos if n in grads.forget and n in grads.retain]
    else:
        names = list(layers)
        unknown = [n for n in names if n not in infos]
        if unknown:
            raise KeyError(f"{unknown[:5]} are not candidate layers of {adapter.name!r}; "
                           f"candidates include {list(infos)[:5]}")
        missing = [n for n in names if n not in grads.forget or n not in grads.retain]
        if missing:
            raise KeyError(f"no forget/retain gradients for {missing[:5]}: recompute with these layers")
    wanted = set(names)
    selected = [info for name, info in infos.items() if name in wanted]  # candidate order = forward order
    if not selected:
        raise ValueError("no candidate layer left: check `layers`, `include` and `exclude`")

    rows = []
    for info in selected:
        g_f, g_r = grads.forget[info.name], grads.retain[info.name]
        hint = f"the forget set may not reach the {info.tower} tower, or the layer is unused"
        if not torch.isfinite(g_f).all():
            raise ValueError(f"forget gradient of layer {info.name!r} is not finite; {hint}")
        grad_norm = _norm(g_f)
        if grad_norm == 0:
            raise ValueError(f"forget gradient of layer {info.name!r} is all zero; {hint}")
        if not torch.isfinite(g_r).all() or _norm(g_r) == 0:
            raise ValueError(f"retain gradient of layer {info.name!r} is all zero or not finite; "
                             f"the retain set may not reach the {info.tower} tower")
        theta = adapter.parameter(info.name)
        if tuple(theta.shape) != tuple(g_f.shape):
            raise ValueError(f"gradient of {info.name!r} has shape {tuple(g_f.shape)} but the weight "
                             f"has {tuple(theta.shape)}: the gradients belong to another model")
        weight_norm = _norm(theta)
        if weight_norm == 0:
            raise ValueError(f"weight {info.name!r} is all zero: importance is undefined")
        rows.append({
            "name": info.name, "tower": info.tower, "block": info.block, "kind": info.kind,
            "shape": tuple(info.shape), "importance": grad_norm / weight_norm,
            "alignment": alignment(g_f, g_r), "grad_norm": grad_norm, "weight_norm": weight_norm,
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS[:-1])
    table["pareto"] = False
    for _, idx in table.groupby("tower").groups.items():
        sub = table.loc[idx]
        table.loc[idx, "pareto"] = pareto_front(sub["importance"], sub["alignment"])
    rank = {t: i for i, t in enumerate(TOWERS)}
    table["_rank"] = table["tower"].map(lambda t: rank.get(t, len(rank)))
    table = table.sort_values(["_rank", "tower", "block"], kind="stable").drop(columns="_rank")
    return table.reset_index(drop=True)


def select_layers(table: pd.DataFrame, policy: str = "pareto", tower: str | None = None) -> list[str]:
    """Layers to try in stage 3.

    - ``"pareto"``: every Pareto layer (of ``tower`` if given), in table order.
    - ``"deepest"``: the deepest Pareto layer of ``tower`` (default ``"text"``): highest block,
      and within that block the one latest in the forward pass (the authors' Hugging Face choice).
    - ``"deepest-first"``: every Pareto layer of ``tower`` (default ``"text"``), deepest first (the order
      ``"deepest"`` picks in), for a caller that stops at the first layer whose search meets its target.
    - ``"deepest-block"``: the deepest Pareto layer of ``tower`` (default ``"text"``), then every other candidate of
      its block (on the front or not), the latest in the forward pass first: a walk for a caller that stops at the
      first layer whose search meets a guarded target (LLaVA's default recipe tries the first two).
    - ``"cheapest-first"``: every Pareto layer (of ``tower`` if given), the cheapest to evaluate first: the text
      tower's, then the vision tower's (:data:`CHEAPEST_FIRST_TOWERS`), each deepest first (an evaluation reruns
      the tower from the edited block on), for a caller that stops at the first layer whose search meets its target.
    - any other string: that exact parameter name.
    """
    if tower is not None and tower not in set(table["tower"]):
        raise ValueError(f"tower {tower!r} not in the table (towers: {sorted(set(table['tower']))})")
    if policy == "pareto":
        rows = table[table["pareto"]]
        if tower is not None:
            rows = rows[rows["tower"] == tower]
        return list(rows["name"])
    if policy in ("deepest", "deepest-first"):
        tower = tower or "text"
        order = _deepest_first(table, tower)
        if not order:
            raise ValueError(f"no Pareto layer in the {tower!r} tower")
        return order[:1] if policy == "deepest" else order
    if policy == "deepest-block":
        first = select_layers(table, "deepest", tower)[0]
        rows = table[(table["tower"] == (tower or "text")) & (table["block"] == table.loc[table["name"] == first,
                                                                                            "block"].iloc[0])]
        rest = [n for n in reversed(list(rows["name"])) if n != first]
        return [first, *rest]
    if policy == "cheapest-first":
        towers = [tower] if tower is not None else list(CHEAPEST_FIRST_TOWERS)
        towers += sorted(set(table["tower"]) - set(towers)) if tower is None else []
        return [name for t in towers for name in _deepest_first(table, t)]
    if policy in set(table["name"]):
        return [policy]
    raise KeyError(
        f"{policy!r} is neither a policy {POLICIES} nor a layer of the table; "
        f"layers include {list(table['name'][:5])}"
    )


def _deepest_first(table: pd.DataFrame, tower: str) -> list[str]:
    """The Pareto layers of ``tower``: highest block first, and within a block the latest in the forward pass first."""
    rows = table[table["pareto"] & (table["tower"] == tower)]
    return list(rows.assign(_pos=range(len(rows))).sort_values(["block", "_pos"], ascending=False)["name"])

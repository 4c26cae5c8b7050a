"""Figures of a layer atlas (:class:`slugkit.atlas.Atlas`): concepts x layers, where each kind of concept lives,
and how similar concepts' forget gradients are.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show()``.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import figures  # noqa: F401  (sets the seaborn theme once)
from .figures import TOWER_COLOURS, block_label

KIND_ORDER = ("character", "object", "style", "colour")
KIND_COLOURS = dict(zip(KIND_ORDER, sns.color_palette("colorblind", 8)[2:6]))


def _layer_labels(atlas) -> list[str]:
    return [f"{t[0]}{block_label(b)}.{k}" for t, b, k in zip(atlas.layers["tower"], atlas.layers["block"],
                                                            atlas.layers["kind"])]


def atlas_clustermap(atlas, value: str = "importance"):
    """Seaborn clustered heatmap of concepts (rows) x layers (columns) of ``log10 value``.

    Rows are clustered (similar concepts side by side), columns keep forward order; the side bars colour
    rows by kind of concept and columns by tower. Returns the figure of the cluster grid."""
    data = getattr(atlas, value)
    if value == "importance":
        shown, label = np.log10(data.clip(lower=1e-12)), "log10 importance ‖g_f‖/‖θ‖"
    else:
        shown, label = data.astype(float), figures.LAYER_METRICS.get(value, value)
    shown = shown.set_axis(_layer_labels(atlas), axis=1)
    kinds = atlas.concepts.set_index("name")["kind"]
    row_colours = kinds.map(KIND_COLOURS).rename("kind")
    col_colours = pd.Series(list(atlas.layers["tower"].map(TOWER_COLOURS)), index=shown.columns, name="tower")
    grid = sns.clustermap(shown, row_cluster=True, col_cluster=False, cmap="mako", row_colors=row_colours,
                          col_colors=col_colours, figsize=(15, 10), dendrogram_ratio=(0.08, 0.04),
                          cbar_kws={"label": label}, xticklabels=True, yticklabels=True)
    grid.ax_heatmap.set_xlabel("layer (tower v/t, block.kind), forward order")
    grid.ax_heatmap.set_ylabel("concept (rows clustered)")
    grid.ax_heatmap.tick_params(axis="x", labelsize=6)
    grid.ax_heatmap.tick_params(axis="y", labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS.values()]
    handles += [plt.Rectangle((0, 0), 1, 1, color=c) for c in TOWER_COLOURS.values()]
    grid.figure.legend(handles, [*KIND_COLOURS, *(f"{t} tower" for t in TOWER_COLOURS)], loc="upper right",
                       ncol=6, fontsize=8, frameon=False)
    grid.figure.suptitle(f"{value} of every concept on every layer of {atlas.model}: rows that cluster together "
                         "pull on the same layers", y=1.01, fontsize=11)
    return grid.figure


def kind_profile(atlas) -> pd.DataFrame:
    """Long frame: for each kind of concept, tower and block, the mean share of the concept's total importance
    that lies in that block (``share``) and the mean number of its Pareto layers there (``pareto``)."""
    share = atlas.importance.div(atlas.importance.sum(axis=1), axis=0)
    rows = []
    kinds = atlas.concepts.set_index("name")["kind"]
    for (tower, block), cols in atlas.layers.groupby(["tower", "block"])["name"]:
        cols = list(cols)
        for kind, group in kinds.groupby(kinds):
            names = list(group.index)
            rows.append({"kind": kind, "tower": tower, "block": int(block),
                         "share": float(share.loc[names, cols].sum(axis=1).mean()),
                         "pareto": float(atlas.pareto.loc[names, cols].sum(axis=1).mean())})
    return pd.DataFrame(rows)


def where_concepts_live(atlas):
    """Per tower, by depth: the share of each kind's importance (top) and its Pareto layers (bottom)."""
    prof = kind_profile(atlas)
    towers = list(dict.fromkeys(atlas.layers["tower"]))
    order = [k for k in KIND_ORDER if k in set(prof["kind"])]
    fig, axes = plt.subplots(2, len(towers), figsize=(5.2 * len(towers), 7), squeeze=False, sharex="col")
    for j, tower in enumerate(towers):
        sub = prof[prof["tower"] == tower]
        for i, (col, ylabel) in enumerate((("share", "share of the concept's importance"),
                                           ("pareto", "Pareto layers per concept"))):
            ax = axes[i][j]
            sns.lineplot(data=sub, x="block", y=col, hue="kind", hue_order=order, palette=KIND_COLOURS,
                         marker="o", ax=ax, legend="brief" if i == j == 0 else False)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("block (0 = nearest the input)")
            ax.set_title(f"{tower} tower")
    fig.suptitle("Where each kind of concept lives: importance share and Pareto layers by tower and depth "
                 "(mean over the kind's concepts)", fontsize=11)
    fig.tight_layout()
    return fig


def concept_similarity(atlas, layer: str | None = None):
    """Concept x concept cosine between forget gradients on ``layer`` (default: the mean over every layer),
    concepts grouped by kind."""
    sim = atlas.mean_similarity() if layer is None else atlas.similarity(layer)
    kinds = atlas.concepts.set_index("name")["kind"]
    order = sorted(sim.index, key=lambda n: (KIND_ORDER.index(kinds[n]) if kinds[n] in KIND_ORDER else 9,
                                             list(sim.index).index(n)))
    sim = sim.loc[order, order]
    fig, ax = plt.subplots(figsize=(10, 8.5))
    sns.heatmap(sim, cmap="vlag", vmin=-1, vmax=1, square=True, ax=ax, xticklabels=True, yticklabels=True,
                cbar_kws={"label": "cosine of forget gradients", "shrink": 0.7})
    ax.tick_params(labelsize=7)
    edges = np.cumsum([sum(kinds[n] == k for n in order) for k in KIND_ORDER])[:-1]
    for e in edges:
        ax.axhline(e, color="black", lw=0.8)
        ax.axvline(e, color="black", lw=0.8)
    off = sim.to_numpy()[~np.eye(len(sim), dtype=bool)]
    where = "mean over every candidate layer" if layer is None else layer
    ax.set_title(f"Do concepts share a forget direction? ({where}; off-diagonal median {np.median(off):.2f})\n"
                 "blocks on the diagonal: character, object, style, colour", fontsize=10)
    fig.tight_layout()
    return fig


def damage_figure(pairs: pd.DataFrame, rho: float, p: float):
    """Retain damage on B vs forget-gradient cosine of A and B on A's edited layer, one point per pair."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    sns.scatterplot(data=pairs, x="cosine", y="damage", hue="same_attribute", style="same_attribute", ax=ax,
                    palette="colorblind", s=40, alpha=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("cos(g_f of A, g_f of B) on the layer edited to forget A")
    ax.set_ylabel("damage on B: top-1 before - after (points)")
    ax.set_title(f"Does gradient similarity predict collateral damage? Spearman ρ = {rho:.2f} (p = {p:.2g}, "
                 f"{len(pairs)} pairs)", fontsize=10)
    ax.legend(title="A and B share an attribute", fontsize=8)
    fig.tight_layout()
    return fig


def layer_column(atlas, layer: str):
    """One layer of the atlas: every concept's importance on it (bars, Pareto concepts hatched) and the cosine
    between concepts' forget gradients on it."""
    kinds = atlas.concepts.set_index("name")["kind"]
    imp = atlas.importance[layer]
    on_front = atlas.pareto[layer]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1, 1.1]})
    ax.bar(range(len(imp)), imp.to_numpy(), color=[KIND_COLOURS.get(kinds[n], "grey") for n in imp.index],
           hatch=None, edgecolor=["black" if f else "none" for f in on_front], linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(imp)), imp.index, rotation=90, fontsize=7)
    ax.set_ylabel("importance ‖g_f‖/‖θ‖ (log)")
    ax.set_title(f"every concept on {layer}\n(black outline: the layer is on that concept's Pareto front; "
                 f"{int(on_front.sum())} concepts)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS.values()]
    ax.legend(handles, list(KIND_COLOURS), fontsize=7, loc="upper right")
    sim = atlas.similarity(layer)
    sns.heatmap(sim, cmap="vlag", vmin=-1, vmax=1, square=True, ax=ax2, xticklabels=True, yticklabels=True,
                cbar_kws={"label": "cosine of forget gradients", "shrink": 0.7})
    ax2.tick_params(labelsize=6)
    ax2.set_title("cosine between concepts' forget gradients on this layer", fontsize=9)
    fig.tight_layout()
    return fig


def name_cosines(adapter, world, attribute: str = "identity") -> pd.DataFrame:
    """Mean cosine between the pictures of each class of ``attribute`` (rows) and each class's zero-shot prompt
    (columns), on the MiniCanvas pictures of ``world``: the diagonal is how strongly each picture says its name."""
    import torch

    from ..data.minicanvas import ATTRIBUTES
    from ..eval.zeroshot import embed_images, embed_prompts

    with torch.no_grad():
        sims = (embed_images(adapter, world.images) @ embed_prompts(adapter, [attribute])[attribute].T).numpy()
    labels = world.labels(attribute)
    names = ATTRIBUTES[attribute]
    rows = {n: sims[labels == i].mean(0) for i, n in enumerate(names) if (labels == i).any()}
    return pd.DataFrame(rows, index=names).T.rename_axis(index="pictures of", columns="prompt")


def name_cosines_figure(before: pd.DataFrame, after: pd.DataFrame, forgotten=()):
    """The :func:`name_cosines` matrix before and after an edit, side by side, forgotten rows marked."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2), sharey=True)
    lo = float(min(before.to_numpy().min(), after.to_numpy().min()))
    hi = float(max(before.to_numpy().max(), after.to_numpy().max()))
    for ax, (label, m) in zip(axes, (("before", before), ("after", after))):
        sns.heatmap(m, ax=ax, cmap="mako", vmin=lo, vmax=hi, square=True, cbar=ax is axes[1],
                    cbar_kws={"label": "mean cosine(picture, prompt)", "shrink": 0.7})
        ax.set_title(f"{label} forgetting {', '.join(forgotten) or 'nothing'}", fontsize=10)
        ax.tick_params(labelsize=7)
        for name in forgotten:
            if name in m.index:
                i = list(m.index).index(name)
                ax.add_patch(plt.Rectangle((0, i), m.shape[1], 1, fill=False, edgecolor="red", lw=1.5))
    fig.suptitle("Identity x name cosine: a forgotten character's row (red) loses its bright diagonal cell; "
                 "the other rows should not change", fontsize=11)
    fig.tight_layout()
    return fig

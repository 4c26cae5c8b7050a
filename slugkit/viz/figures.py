"""Static figures (matplotlib + seaborn). Every interactive explorer falls back to one of these.

All functions return a ``matplotlib.figure.Figure`` and never call ``plt.show()``.
"""
from __future__ import annotations

import matplotlib

if not hasattr(matplotlib, "_slugkit_backend_checked"):
    import os

    if not os.environ.get("DISPLAY") and "ipykernel" not in __import__("sys").modules:
        matplotlib.use("Agg")
    matplotlib._slugkit_backend_checked = True

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from ..data.minicanvas import ATTRIBUTES, MiniCanvas

sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
TOWER_COLOURS = dict(zip(("vision", "text"), sns.color_palette("colorblind", 2)))


def sample_sheet(world: MiniCanvas, n: int = 48, cols: int = 8, captions: bool = True):
    """A grid of the first ``n`` samples of ``world`` with their captions."""
    n = min(n, len(world))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * (1.9 if captions else 1.6)))
    for k, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(world.images[k], interpolation="nearest")
            if captions:
                ax.set_title(_wrap(world[k][1], 18), fontsize=6.5)
    fig.suptitle(f"MiniCanvas ({world.split} split, seed {world.seed}): characters and objects with captions",
                 fontsize=11)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def confusion_matrices(scores: dict, attributes=None):
    """One row-normalised zero-shot confusion matrix per attribute (from ``zero_shot`` output)."""
    attributes = list(attributes or scores)
    fig, axes = plt.subplots(1, len(attributes), figsize=(5.2 * len(attributes), 5))
    for ax, a in zip(np.atleast_1d(axes), attributes):
        cm = scores[a]["confusion"].astype(float)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        names = ATTRIBUTES[a]
        sns.heatmap(cm, ax=ax, vmin=0, vmax=1, cmap="viridis", cbar=False, square=True,
                    xticklabels=names, yticklabels=names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{a}: top-1 {100 * scores[a]['top1']:.1f}%")
    fig.suptitle("Zero-shot confusion (rows sum to 1): a bright diagonal means the class is recognised")
    fig.tight_layout()
    return fig


def layer_scatter(table: pd.DataFrame, chosen: str | None = None):
    """Importance vs alignment of every candidate layer, one panel per tower, Pareto front joined."""
    towers = list(dict.fromkeys(table["tower"]))
    fig, axes = plt.subplots(1, len(towers), figsize=(6 * len(towers), 4.6), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        sub = table[table["tower"] == tower]
        sns.scatterplot(data=sub, x="importance", y="alignment", hue="kind", style="pareto", s=70, ax=ax,
                        style_order=[True, False], markers={True: "o", False: "X"})
        front = sub[sub["pareto"]].sort_values("importance")
        ax.plot(front["importance"], front["alignment"], "k--", lw=1, label="Pareto front")
        for _, r in front.iterrows():
            ax.annotate(f"{r['block']}.{r['kind']}", (r["importance"], r["alignment"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        if chosen is not None and chosen in set(sub["name"]):
            r = sub[sub["name"] == chosen].iloc[0]
            ax.scatter([r["importance"]], [r["alignment"]], s=260, facecolors="none", edgecolors="red", lw=2,
                       label="chosen layer")
        ax.set_xlabel("importance  ||g_f|| / ||θ||")
        ax.set_ylabel("alignment  |cos(g_f, g_r)|")
        ax.set_title(f"{tower} tower")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Good layers sit bottom-right: strongly pulled by the forget loss, little overlap with retain")
    fig.tight_layout()
    return fig


LAYER_METRICS = {  # table column -> colour-bar label (with units)
    "importance": "importance ‖g_f‖/‖θ‖",
    "alignment": "alignment |cos(g_f, g_r)|",
    "grad_norm": "forget-gradient norm ‖g_f‖",
    "weight_norm": "weight norm ‖θ‖",
}
_WHAT_TO_NOTICE = {
    "importance": "bright cells are layers the forget loss pulls hardest on, relative to their size",
    "alignment": "dark cells are layers whose forget step barely moves the retain loss",
    "grad_norm": "where the forget gradient is large before normalising by the weight",
    "weight_norm": "weight sizes: importance divides the gradient norm by these",
}


def kind_order(kinds) -> list[str]:
    """Layer kinds in forward order (known kinds first, then unknown ones alphabetically)."""
    from ..adapters.base import LAYER_KINDS

    kinds = list(dict.fromkeys(kinds))
    return [k for k in LAYER_KINDS if k in kinds] + sorted(k for k in kinds if k not in LAYER_KINDS)


def block_label(block) -> str:
    """``"3"`` for a transformer block; ``"pre"`` for block < 0 (embeddings, parameters before the blocks)."""
    return "pre" if int(block) < 0 else str(int(block))


def layer_grid(table: pd.DataFrame, tower: str, value: str = "importance") -> pd.DataFrame:
    """``value`` of one tower as a blocks (rows, ascending) x kinds (columns) frame; NaN where no layer.

    Any block number (including -1 or one past the last block) and any kind are kept; a second
    layer of the same (block, kind) keeps the first value.
    """
    if value not in table:
        raise KeyError(f"the layer table has no column {value!r}; columns are {list(table.columns)}")
    sub = table[table["tower"] == tower]
    if sub.empty:
        raise ValueError(f"no layer of tower {tower!r} in the table (towers: {sorted(set(table['tower']))})")
    grid = sub.pivot_table(index="block", columns="kind", values=value, aggfunc="first", dropna=False)
    return grid.reindex(index=sorted(set(sub["block"])), columns=kind_order(sub["kind"])).astype(float)


def positive_range(values) -> tuple[float, float]:
    """(vmin, vmax) of the positive finite values, for a log colour scale (falls back to (1e-6, 1))."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 1e-6, 1.0
    lo, hi = float(v.min()), float(v.max())
    return (lo, hi) if hi > lo else (lo / 2, hi * 2)


def layer_heatmap(table: pd.DataFrame, value: str = "importance", chosen: str | None = None, log: bool = True,
                  cmap: str = "mako", annotate: bool = True, title: str | None = None):
    """``value`` per block (rows) and layer kind (columns), one panel per tower.

    Log colour scale shared by the towers (``log=False`` for signed values); Pareto layers carry a
    white dot, the ``chosen`` layer a red frame. Unknown kinds and blocks outside the transformer
    (e.g. -1 for embeddings) get their own column / row.
    """
    from matplotlib.colors import LogNorm, Normalize

    towers = list(dict.fromkeys(table["tower"]))
    grids = {t: layer_grid(table, t, value) for t in towers}
    allv = np.concatenate([g.to_numpy().ravel() for g in grids.values()])
    if log:
        norm = LogNorm(*positive_range(allv))
    else:
        finite = allv[np.isfinite(allv)]
        norm = Normalize(float(finite.min()), float(finite.max())) if finite.size else Normalize(0, 1)
    width = sum(1.3 + 0.75 * g.shape[1] for g in grids.values()) + 1.2
    height = 1.6 + 0.32 * max(g.shape[0] for g in grids.values())
    fig, axes = plt.subplots(1, len(towers), figsize=(max(width, 6), max(height, 3.2) + 0.8), squeeze=False,
                             gridspec_kw={"width_ratios": [g.shape[1] for g in grids.values()]}, layout="constrained")
    image = None
    for ax, tower in zip(axes[0], towers):
        grid = grids[tower]
        data = np.ma.masked_invalid(grid.to_numpy())
        if log:
            data = np.ma.masked_where(~(data > 0), data)
        image = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [block_label(b) for b in grid.index], fontsize=8)
        ax.set_xlabel("layer kind")
        ax.set_ylabel("block (0 = nearest the input)")
        ax.grid(False)
        sub = table[table["tower"] == tower]
        rows, cols = {b: i for i, b in enumerate(grid.index)}, {k: j for j, k in enumerate(grid.columns)}
        if annotate and grid.size <= 200:
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    v = grid.iat[i, j]
                    if np.isfinite(v):
                        shade = norm(v) if (not log or v > 0) else 0.0
                        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                                color="black" if shade > 0.6 else "white")
        if "pareto" in sub:
            front = sub[sub["pareto"].astype(bool)]
            ax.scatter([cols[k] + 0.36 for k in front["kind"]], [rows[b] - 0.3 for b in front["block"]], s=18,
                       marker="o", facecolor="white", edgecolor="black", linewidth=0.6, zorder=3,
                       label="Pareto layer", gid=f"pareto:{tower}")
        if chosen is not None and chosen in set(sub["name"]):
            r = sub[sub["name"] == chosen].iloc[0]
            ax.add_patch(plt.Rectangle((cols[r["kind"]] - 0.5, rows[r["block"]] - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2.5, zorder=4, gid="chosen"))
        ax.set_title(f"{tower} tower")
    label = LAYER_METRICS.get(value, value)
    fig.colorbar(image, ax=list(axes[0]), label=label + (" (log scale)" if log else ""), shrink=0.9, pad=0.02)
    fig.suptitle(title or f"{label}: {_WHAT_TO_NOTICE.get(value, 'one cell per layer')} "
                          "(white dot: Pareto layer)", fontsize=10)
    return fig


def _layer_points(ax, sub: pd.DataFrame, tower: str, colour):
    """All candidate layers of one tower as one scatter, the Pareto front as a second one, joined."""
    ax.scatter(sub["importance"], sub["alignment"], s=28, color=colour, alpha=0.55, edgecolor="none",
               label="candidate layer", gid=f"layers:{tower}")
    front = sub[sub["pareto"].astype(bool)].sort_values("importance")
    ax.scatter(front["importance"], front["alignment"], s=70, facecolor="none", edgecolor="black", lw=1.3,
               label="Pareto layer", gid=f"front:{tower}")
    ax.plot(front["importance"], front["alignment"], "k--", lw=0.9, gid=f"front-line:{tower}")
    for _, r in front.iterrows():
        ax.annotate(f"{block_label(r['block'])}.{r['kind']}", (r["importance"], r["alignment"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")


def pareto_figure(table: pd.DataFrame, chosen: str | None = None, trace: pd.DataFrame | None = None):
    """Importance vs alignment per tower (one point per candidate layer, the front ringed and joined).

    With ``trace`` (a ``SearchResult.to_frame()``), a last panel shows the chosen layer's search.
    """
    towers = list(dict.fromkeys(table["tower"]))
    n = len(towers) + (trace is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 4.2), squeeze=False)
    palette = sns.color_palette("colorblind", max(len(towers), 2))
    for k, (ax, tower) in enumerate(zip(axes[0], towers)):
        sub = table[table["tower"] == tower]
        _layer_points(ax, sub, tower, TOWER_COLOURS.get(tower, palette[k]))
        if chosen is not None and chosen in set(sub["name"]):
            r = sub[sub["name"] == chosen].iloc[0]
            ax.scatter([r["importance"]], [r["alignment"]], s=260, facecolors="none", edgecolors="red", lw=2,
                       label="chosen layer", gid="chosen")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("importance ‖g_f‖/‖θ‖ (log)")
        ax.set_ylabel("alignment |cos(g_f, g_r)|")
        ax.set_title(f"{tower} tower: {int(sub['pareto'].sum())} of {len(sub)} layers on the front")
        ax.legend(fontsize=7, loc="best")
    if trace is not None:
        ax = axes[0][-1]
        _draw_search(ax, trace)
        ax.set_title(_wrap(f"search on {chosen}", 40) if chosen else "step-size search", fontsize=8)
    fig.suptitle("Pareto front: no other layer is both more important and less aligned; "
                 "good layers sit bottom-right", fontsize=10)
    fig.tight_layout()
    return fig


def _draw_search(ax, trace: pd.DataFrame, metrics=("forget_top1", "forget_top5", "retain_top1", "utility")):
    colours = dict(zip(metrics, sns.color_palette("colorblind", len(metrics))))
    frame = trace.sort_values("lam")
    for m in metrics:
        if m in frame:
            ax.plot(frame["lam"], 100 * frame[m], "o-", ms=4, color=colours[m], label=m)
    first = next((m for m in metrics if m in trace), None)
    if first is not None:
        for _, r in trace.iterrows():
            ax.annotate(str(int(r["step"])), (r["lam"], 100 * r[first]), fontsize=7, xytext=(2, 4),
                        textcoords="offset points")
    best = trace[trace["best"].astype(bool)] if "best" in trace else trace.iloc[:0]
    if len(best):
        ax.axvline(best["lam"].iloc[0], color="k", ls=":", label="chosen λ")
    ax.set_xscale("log")
    ax.set_xlabel("step size λ (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=7)


CURVE_METRICS = ("forget_top1", "forget_top5", "retain_top1", "utility")


def step_size_axes(ax, curve: pd.DataFrame, lam: float | None = None, trace: pd.DataFrame | None = None,
                   layer: str = "", xlim: tuple[float, float] | None = None) -> dict:
    """Draw metric curves against λ on ``ax``; returns the artists a live view updates.

    Keys: ``"curve:<metric>"`` (Line2D), ``"current"`` (the current-λ line) and ``"current_label"``.
    """
    colours = dict(zip(CURVE_METRICS, sns.color_palette("colorblind", len(CURVE_METRICS))))
    frame = curve.sort_values("lam") if len(curve) else curve
    artists = {}
    for m in CURVE_METRICS:
        if m in frame or not len(frame):
            x = frame["lam"] if len(frame) else []
            y = 100 * frame[m] if len(frame) else []
            (artists[f"curve:{m}"],) = ax.plot(x, y, "-", lw=1.6, color=colours[m], label=m, gid=f"curve:{m}")
    if trace is not None and len(trace):
        for m in CURVE_METRICS:
            if m in trace:
                ax.scatter(trace["lam"], 100 * trace[m], s=30, color=colours[m], edgecolor="black", lw=0.8,
                           zorder=3, gid=f"search:{m}")
        key = next(m for m in CURVE_METRICS if m in trace)
        for _, r in trace.iterrows():
            ax.annotate(str(int(r["step"])), (r["lam"], 100 * r[key]), fontsize=7, xytext=(3, 5),
                        textcoords="offset points")
        best = trace[trace["best"].astype(bool)] if "best" in trace else trace.iloc[:0]
        if len(best):
            ax.axvline(best["lam"].iloc[0], color="grey", ls=":", lw=1.2, label="search's best λ")
        ax.scatter([], [], s=30, color="white", edgecolor="black", label="search steps (numbered)")
    x0 = lam if lam is not None else 1.0
    artists["current"] = ax.axvline(x0, color="red", lw=1.8, gid="current", visible=lam is not None)
    ax.plot([], [], color="red", lw=1.8, label="current λ")  # legend entry (the live line is redrawn alone)
    artists["current_label"] = ax.text(x0, 104, f" λ = {x0:.3g}", color="red", fontsize=8, va="bottom",
                                       visible=lam is not None)
    ax.set_xscale("log")
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel("step size λ (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    where = f"{layer}\n" if layer else ""
    ax.set_title(f"{where}forget accuracy falls as λ grows; too far and retain / utility fall too", fontsize=9,
                 pad=14)
    return artists


def step_size_explorer_figure(curve: pd.DataFrame, lam: float | None = None, trace: pd.DataFrame | None = None,
                              strip: dict | None = None, layer: str = "", figsize=(7.5, 3.6), dpi: float = 100,
                              xlim: tuple[float, float] | None = None):
    """Metrics against λ (log x) with the binary-search steps overlaid and the current λ marked.

    ``curve``: one row per evaluated λ (column ``lam`` plus metric columns, fractions). ``trace``: the
    search's ``to_frame()`` (its steps are drawn as numbered black-edged markers). ``strip``:
    ``{"images": (N, H, W, 3) uint8, "predictions": [str], "truth": [str]}`` drawn as a row of
    pictures under the plot, titled with the top prediction at ``lam`` (red when it is not the truth).
    """
    n_strip = 0 if strip is None else len(strip["images"])
    if n_strip:
        fig = plt.figure(figsize=(figsize[0], figsize[1] + 1.7), dpi=dpi)
        gs = fig.add_gridspec(2, n_strip, height_ratios=[figsize[1], 1.5])
        ax = fig.add_subplot(gs[0, :])
        strip_axes = [fig.add_subplot(gs[1, k]) for k in range(n_strip)]
    else:
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        strip_axes = []
    step_size_axes(ax, curve, lam, trace, layer, xlim)
    for k, sax in enumerate(strip_axes):
        sax.imshow(strip["images"][k], interpolation="nearest")
        sax.set_xticks([])
        sax.set_yticks([])
        pred, truth = strip["predictions"][k], strip["truth"][k]
        sax.set_title(_wrap(pred, 12), fontsize=7, color="black" if pred == truth else "firebrick")
        sax.set_xlabel(_wrap(truth, 12), fontsize=6.5, color="dimgrey")
    if n_strip:
        strip_axes[0].set_ylabel("answer at λ\n(true below)", fontsize=7)
    fig.tight_layout()
    return fig


def layer_cosines(vectors: dict, names=None) -> pd.DataFrame:
    """Cosine similarity between every pair of equally shaped tensors in ``vectors`` (NaN across shapes).

    ``vectors``: ``{name: tensor}`` (e.g. ``grads.forget``). Returns a square frame indexed by name.
    """
    import torch

    names = list(names if names is not None else vectors)
    flat = {n: torch.as_tensor(vectors[n]).detach().reshape(-1).double() for n in names}
    unit = {n: v / max(torch.linalg.vector_norm(v).item(), 1e-30) for n, v in flat.items()}
    shapes = {n: tuple(torch.as_tensor(vectors[n]).shape) for n in names}
    out = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            b = names[j]
            if shapes[a] == shapes[b]:
                out[i, j] = out[j, i] = float(torch.dot(unit[a], unit[b]))
    return pd.DataFrame(out, index=names, columns=names)


def forget_retain_cosine(forget: dict, retain: dict, names=None) -> pd.Series:
    """Signed ``cos(g_f, g_r)`` per layer (alignment is its absolute value)."""
    import torch

    names = list(names if names is not None else forget)
    vals = []
    for n in names:
        a, b = forget[n].reshape(-1).double(), retain[n].reshape(-1).double()
        vals.append(float(torch.dot(a, b) / max(float(a.norm() * b.norm()), 1e-30)))
    return pd.Series(vals, index=names, name="cos_forget_retain")


def gradient_similarity_figure(table: pd.DataFrame, grads, tower: str | None = None):
    """Left: cosine between the forget gradients of equally shaped layers (one tower), ordered by kind
    then block. Right: signed cos(g_f, g_r) per layer of every tower (blocks x kinds)."""
    tower = tower or table["tower"].iloc[0]
    sub = table[table["tower"] == tower].copy()
    sub["_k"] = sub["kind"].map({k: i for i, k in enumerate(kind_order(sub["kind"]))})
    sub = sub.sort_values(["_k", "block"], kind="stable")
    names = list(sub["name"])
    cos = layer_cosines(grads.forget, names)
    signed = table.assign(cos_forget_retain=forget_retain_cosine(grads.forget, grads.retain,
                                                                 table["name"]).to_numpy())
    towers = list(dict.fromkeys(table["tower"]))
    fig = plt.figure(figsize=(6 + 3.4 * len(towers), 5.6), layout="constrained")
    gs = fig.add_gridspec(1, 1 + len(towers), width_ratios=[2.2] + [1] * len(towers))
    values = cos.to_numpy()
    off = np.abs(values[~np.eye(len(values), dtype=bool) & np.isfinite(values)])
    span = float(np.nanmax(np.abs(signed["cos_forget_retain"]))) or 1.0
    ax = fig.add_subplot(gs[0, 0])
    labels = [f"{block_label(b)}.{k}" for b, k in zip(sub["block"], sub["kind"])]
    im = ax.imshow(np.ma.masked_invalid(cos.to_numpy()), cmap="vlag", vmin=-1, vmax=1, interpolation="nearest")
    step = max(1, len(labels) // 30)
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=90, fontsize=6)
    ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=6)
    ax.set_xlabel("layer (block.kind)")
    ax.set_ylabel("layer (block.kind)")
    ax.grid(False)
    median = f"median |cos| off the diagonal {np.median(off):.2f}" if off.size else "no two layers share a shape"
    ax.set_title(f"{tower} tower: cos between forget gradients\n({median}; blank: shapes differ)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine")
    for k, t in enumerate(towers):
        axr = fig.add_subplot(gs[0, 1 + k])
        grid = layer_grid(signed, t, "cos_forget_retain")
        im2 = axr.imshow(np.ma.masked_invalid(grid.to_numpy()), cmap="vlag", vmin=-span, vmax=span, aspect="auto",
                         interpolation="nearest")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid.iat[i, j]):
                    axr.text(j, i, f"{grid.iat[i, j]:.2f}", ha="center", va="center", fontsize=6)
        axr.set_xticks(range(grid.shape[1]), grid.columns, rotation=40, ha="right", fontsize=7)
        axr.set_yticks(range(grid.shape[0]), [block_label(b) for b in grid.index], fontsize=7)
        axr.set_xlabel("layer kind")
        axr.set_ylabel("block")
        axr.grid(False)
        axr.set_title(f"{t} tower: cos(g_f, g_r)", fontsize=9)
    fig.colorbar(im2, ax=axr, shrink=0.7, label="signed cos(g_f, g_r)")
    fig.suptitle(f"Left: do layers share a forget direction? Right: |cos(g_f, g_r)| <= {span:.2f} everywhere; "
                 "the smaller, the less a forget step moves the retain loss", fontsize=10)
    return fig


def two_losses(forget_images, forget_captions, forget_cos, retain_images, retain_captions, retain_sims,
               losses: dict | None = None):
    """The two SLUG losses on batches you can see.

    Top row: forget pairs titled with ``1 - cos(v, t)`` (the forget loss averages these). Bottom:
    retain pictures; right: the retain batch's scaled similarity ``s V T^T`` whose diagonal the
    contrastive loss pushes up.
    """
    k = len(forget_images)
    m = len(retain_images)
    cols = max(k, m)
    fig = plt.figure(figsize=(1.6 * cols + 4.5, 4.4))
    gs = fig.add_gridspec(2, cols + 1, width_ratios=[1] * cols + [2.6])
    for i in range(cols):
        for row, (imgs, caps) in enumerate(((forget_images, forget_captions), (retain_images, retain_captions))):
            ax = fig.add_subplot(gs[row, i])
            ax.axis("off")
            if i < len(imgs):
                ax.imshow(imgs[i], interpolation="nearest")
                extra = f"\n1−cos = {1 - forget_cos[i]:.2f}" if row == 0 else ""
                ax.set_title(_wrap(caps[i], 16) + extra, fontsize=6.5)
    ax = fig.add_subplot(gs[:, cols])
    sns.heatmap(np.asarray(retain_sims), ax=ax, cmap="mako", cbar=True, square=True, annot=m <= 8, fmt=".0f",
                annot_kws={"fontsize": 6}, cbar_kws={"label": "s · cos(v_i, t_j)"})
    ax.set_xlabel("caption j")
    ax.set_ylabel("picture i")
    ax.set_title("retain batch: the contrastive loss wants a bright diagonal", fontsize=8)
    text = ""
    if losses:
        text = " — " + ", ".join(f"{k} = {v:.3f}" for k, v in losses.items())
    fig.suptitle("Top: forget pairs, pulled apart by the forget loss 1−cos(v, t); bottom: retain pairs" + text,
                 fontsize=9)
    fig.tight_layout()
    return fig


def step_size_curve(search_frame: pd.DataFrame, metrics=("forget_top1", "retain_top1", "utility"),
                    title: str | None = None):
    """Metrics against the step size lambda for every evaluation of one search (trace order marked)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    frame = search_frame.sort_values("lam")
    for m in metrics:
        if m in frame:
            ax.plot(frame["lam"], 100 * frame[m], "o-", label=m)
    for _, r in search_frame.iterrows():
        ax.annotate(str(int(r["step"])), (r["lam"], 100 * r[metrics[0]]), fontsize=7, xytext=(2, 4),
                    textcoords="offset points")
    best = search_frame[search_frame.get("best", False) == True]  # noqa: E712
    if len(best):
        ax.axvline(best["lam"].iloc[0], color="k", ls=":", label="chosen λ")
    ax.set_xscale("log")
    ax.set_xlabel("step size λ (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8)
    ax.set_title(title or "The search wants the smallest λ that drives forget accuracy to 0")
    fig.tight_layout()
    return fig


def before_after(images: np.ndarray, before: list[str], after: list[str], truth: list[str], cols: int = 6):
    """Images with the model's top-1 answer before and after unlearning (red = wrong)."""
    n = len(images)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.4))
    for k, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k], interpolation="nearest")
        ok_b, ok_a = before[k] == truth[k], after[k] == truth[k]
        ax.set_title(f"before: {before[k]}\nafter: {after[k]}", fontsize=7,
                     color="black" if ok_a else "firebrick")
        if not ok_b:
            ax.title.set_color("grey")
    fig.suptitle("Zero-shot answers before / after unlearning (red: the answer changed to a wrong name)")
    fig.tight_layout()
    return fig

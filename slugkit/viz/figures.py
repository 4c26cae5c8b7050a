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


def layer_heatmap(table: pd.DataFrame, value: str = "importance"):
    """``value`` per block (rows) and layer kind (columns), one panel per tower."""
    towers = list(dict.fromkeys(table["tower"]))
    fig, axes = plt.subplots(1, len(towers), figsize=(4.5 * len(towers), 4), squeeze=False)
    for ax, tower in zip(axes[0], towers):
        grid = table[table["tower"] == tower].pivot(index="block", columns="kind", values=value)
        sns.heatmap(grid, ax=ax, cmap="mako", annot=True, fmt=".2g", annot_kws={"fontsize": 7}, cbar=False)
        ax.set_title(f"{tower} tower: {value}")
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

"""Static figures of attributions before vs after unlearning (the widget's fallback draws these too).

All functions return a ``matplotlib.figure.Figure`` and never call ``plt.show()``.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from ..viz import figures as _theme  # noqa: F401  (sets the seaborn theme once)
from .mask import mask_mass, resize_masks

CMAP = "PuOr_r"  # diverging, colour-blind safe: orange = raises the cosine, purple = lowers it
STATE_COLOURS = dict(zip(("before", "after"), sns.color_palette("colorblind", 2)))


def _limit(*maps) -> float:
    v = max(float(np.nanpercentile(np.abs(m), 99.5)) for m in maps)
    return v if v > 0 else 1.0


def _outline(ax, mask):
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask, float), levels=[0.5], colors="k", linewidths=0.8)


def heatmaps(image, before, after, mask=None, caption: str = "", method: str = "",
             scores: tuple[float, float] | None = None):
    """One picture, then its attribution maps before and after on one shared, symmetric colour scale.

    ``image`` uint8 ``(H, W, 3)``; ``before``/``after`` ``(S, S)`` attribution maps; ``mask`` ``(H, W)``
    (outlined, its share of positive attribution printed); ``scores`` the cosines before/after.
    """
    size = before.shape[-1]
    m = resize_masks(mask, size)[0] if mask is not None else None
    vmax = _limit(before, after)
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6), constrained_layout=True)
    axes[0].imshow(image)
    _outline(axes[0], mask)
    axes[0].set_title("picture (mask outlined)", fontsize=10)
    for ax, state, amap in zip(axes[1:], ("before", "after"), (before, after)):
        im = ax.imshow(amap, cmap=CMAP, vmin=-vmax, vmax=vmax)
        _outline(ax, m)
        text = state
        if scores is not None:
            text += f": cosine {scores[0 if state == 'before' else 1]:.3f}"
        if m is not None:
            text += f"\n{mask_mass(amap, m)[0]:.0%} of positive attribution in mask"
        ax.set_title(text, fontsize=10)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:], shrink=0.8, label="attribution (cosine units per pixel)")
    fig.suptitle(f"{method}: what makes the picture match {caption!r}, before vs after unlearning", fontsize=11)
    return fig


def heatmap_grid(report, n: int = 4):
    """Rows: ``n`` forget then ``n`` retain pictures of a :class:`~slugkit.attribution.AttributionReport`;
    columns: picture, attribution before, after (shared colour scale per row)."""
    probe = report.probe
    rows = [(g, i) for g in ("forget", "retain") for i in range(min(n, report.n_images))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.2, 2.3 * len(rows)), constrained_layout=True, squeeze=False)
    for r, (g, i) in enumerate(rows):
        before, after = report.pixels[g]["before"], report.pixels[g]["after"]
        b, a = before.maps[i], after.maps[i]
        m = resize_masks(probe.masks[g][i], b.shape[-1])[0]
        vmax = _limit(b, a)
        axes[r, 0].imshow(probe.images[g][i])
        axes[r, 0].set_ylabel(f"{g}\n{probe.classes[g][i]}", fontsize=9)
        for c, (att, amap) in enumerate(((before, b), (after, a)), start=1):
            axes[r, c].imshow(amap, cmap=CMAP, vmin=-vmax, vmax=vmax)
            _outline(axes[r, c], m)
            axes[r, c].set_title(f"cos {float(att.score[i]):.2f}, {mask_mass(amap, m)[0]:.0%} in mask", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 1].set_title("before\n" + axes[0, 1].get_title(), fontsize=9)
    axes[0, 2].set_title("after\n" + axes[0, 2].get_title(), fontsize=9)
    fig.suptitle(f"{report.method} attribution of each picture's cosine with its own name's caption:\n"
                 f"the evidence for {report.concept!r} fades, the other pictures' evidence stays", fontsize=10)
    return fig


def _mark_edited(ax, labels, edited):
    for e in edited:
        if e in labels:
            k = labels.index(e)
            ax.axvspan(k - 0.45, k + 0.45, color="0.85", zorder=0)
            ax.annotate("edited", (k, 0.97), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=8,
                        rotation=90)


def _tower_divider(ax, labels):
    n_vision = sum(lab.startswith("vision") for lab in labels)
    if 0 < n_vision < len(labels):
        ax.axvline(n_vision - 0.5, color="0.4", lw=0.8, ls=":")


def block_profile(report):
    """Each block's contribution to the cosine (forget and retain pairs), before vs after, edited block shaded."""
    labels = report.blocks
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True, constrained_layout=True)
    for ax, g in zip(axes, ("forget", "retain")):
        for s, dx in (("before", -0.2), ("after", 0.2)):
            ax.bar(x + dx, report.block_attribution[g][s], width=0.4, color=STATE_COLOURS[s], label=s)
        ax.axhline(0, color="0.3", lw=0.8)
        _mark_edited(ax, labels, report.edited_blocks)
        _tower_divider(ax, labels)
        ax.set_xticks(x, labels, rotation=60, fontsize=8)
        ax.set_xlabel("transformer block (vision tower, then text tower)")
        ax.set_title(f"{g} pictures", fontsize=10)
    axes[0].set_ylabel("contribution to the cosine\n(f(x) - f(block skipped))")
    axes[1].legend(title="unlearning")
    fig.suptitle("Where the evidence lives: each block's contribution to the image-caption cosine, "
                 "before vs after", fontsize=11)
    return fig


def cka_figure(report):
    """Per block, original vs unlearned model: linear CKA (left) and the relative size of the change (right),
    on forget vs retain pictures, edited block shaded."""
    labels = report.blocks
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    palette = sns.color_palette("colorblind", 4)[2:]
    for g, colour, marker in zip(("forget", "retain"), palette, ("o", "s")):
        axes[0].plot(x, report.cka[g], marker=marker, color=colour, label=f"{g} pictures")
        axes[1].plot(x, report.relative_change[g], marker=marker, color=colour, label=f"{g} pictures")
    lo = np.nanmin([report.cka["forget"], report.cka["retain"]])
    axes[0].set_ylim(min(0.99, lo - 0.002) if np.isfinite(lo) else 0.0, 1.0005)
    axes[0].set_ylabel("linear CKA, original vs unlearned")
    axes[1].set_ylabel("||after - before|| / ||before||")
    axes[0].set_title("geometry among the pictures (CKA: 1 = unchanged)", fontsize=10)
    axes[1].set_title("size of the change", fontsize=10)
    for ax in axes:
        _mark_edited(ax, labels, report.edited_blocks)
        _tower_divider(ax, labels)
        ax.set_xticks(x, labels, rotation=60, fontsize=8)
        ax.set_xlabel("transformer block (vision tower, then text tower)")
    axes[1].legend()
    fig.suptitle("Representations change only at and after the edited block, in the edited tower", fontsize=11)
    return fig


def mask_mass_figure(report):
    """Share of positive attribution inside the mask, before vs after, next to the mask's share of the picture."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4), constrained_layout=True)
    x = np.arange(2)
    for s, dx in (("before", -0.27), ("after", 0.0)):
        ax.bar(x + dx, [report.mask_mass[g][s] for g in ("forget", "retain")], width=0.27,
               color=STATE_COLOURS[s], label=s)
    ax.bar(x + 0.27, [report.mask_mass[g]["uniform"] for g in ("forget", "retain")], width=0.27,
           color="0.75", label="uniform map (mask share)")
    ax.set_xticks(x, ["forget pictures", "retain pictures"])
    ax.set_ylabel("positive attribution inside the mask")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("How much of the evidence sits on the character", fontsize=10)
    return fig


def token_bars(before, after, i: int = 0):
    """Token attributions of caption ``i`` before vs after (two :class:`TokenAttribution`)."""
    tokens = [t.replace("</w>", "").replace("<start_of_text>", "<sot>").replace("<end_of_text>", "<eot>")
              for t in before.tokens[i]]
    x = np.arange(len(tokens))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(tokens)), 3.2), constrained_layout=True)
    ax.bar(x - 0.2, before.scores[i], width=0.4, color=STATE_COLOURS["before"],
           label=f"before (cosine {float(before.score[i]):.2f})")
    ax.bar(x + 0.2, after.scores[i], width=0.4, color=STATE_COLOURS["after"],
           label=f"after (cosine {float(after.score[i]):.2f})")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, tokens, rotation=30)
    ax.set_ylabel("attribution (cosine units)")
    ax.legend(fontsize=8)
    ax.set_title(f"Which words of {before.captions[i]!r} carry the match with the picture", fontsize=10)
    return fig

"""Figures for text-to-image hosts (Stable Diffusion): grids of generations before / after unlearning.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show()``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .figures import _wrap, plt, sns  # noqa: F401  (one seaborn theme, set in figures)


def generation_grid(panels: Mapping[str, Mapping[str, np.ndarray]], title: str, labels: Mapping | None = None):
    """Rows = prompts, columns = seeds, side by side one panel per condition (e.g. "before", "after").

    ``panels[condition][prompt]``: uint8 pictures ``(n_seeds, H, W, 3)``; ``labels[condition][prompt]`` (optional):
    the judge's label per picture, printed under it.
    """
    conditions = list(panels)
    prompts = list(panels[conditions[0]])
    n = max(len(v) for p in panels.values() for v in p.values())
    cols = len(conditions) * n
    fig, axes = plt.subplots(len(prompts), cols, figsize=(1.25 * cols + 1.8, 1.45 * len(prompts) + 0.8),
                             squeeze=False)
    for r, prompt in enumerate(prompts):
        for c, cond in enumerate(conditions):
            pics = panels[cond][prompt]
            for k in range(n):
                ax = axes[r, c * n + k]
                ax.set_xticks([]), ax.set_yticks([])
                if k < len(pics):
                    ax.imshow(pics[k], interpolation="nearest")
                    if labels is not None:
                        ax.set_xlabel(_wrap(str(labels[cond][prompt][k]), 12), fontsize=6)
                if r == 0 and k == 0:
                    ax.set_title(cond, fontsize=9, loc="left", fontweight="bold")
            axes[r, 0].set_ylabel(_wrap(prompt, 16), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


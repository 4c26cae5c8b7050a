"""Figures for a vision-language assistant: a chat-like before/after panel, the VLM table, the feature-layer rule.

Each returns a ``matplotlib.figure.Figure``; :func:`chat_explorer` is the ipywidgets version of
:func:`chat_panel` and shows the static figure when widgets cannot render.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import figures as _figures  # noqa: F401  (sets the seaborn theme once)

_BEFORE, _AFTER, _USER = sns.color_palette("colorblind", 3)[0], sns.color_palette("colorblind", 3)[1], "0.9"


def _bubble(ax, y: float, who: str, text: str, colour, align: str = "left") -> None:
    x = 0.02 if align == "left" else 0.98
    ax.text(x, y, f"{who}: {text}", ha=align, va="center", fontsize=10, transform=ax.transAxes, wrap=True,
            bbox=dict(boxstyle="round,pad=0.5", fc=colour, ec="none", alpha=0.85))


def chat_panel(images: Sequence[np.ndarray], question: str | Sequence[str], before: Sequence[str],
               after: Sequence[str] | None = None, truth: Sequence[str] | None = None, title: str | None = None):
    """One row per picture: the picture, the question, the answer before (and after) unlearning.

    images: uint8 ``(H, W, 3)`` each; question: one for all rows or one per row; before/after: the model's
    answers (``after=None``: a plain chat, one answer per row); truth: the reference answers.
    """
    questions = [question] * len(images) if isinstance(question, str) else list(question)
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(8.5, 1.7 * n), gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    for k in range(n):
        axes[k, 0].imshow(images[k], interpolation="nearest")
        axes[k, 0].axis("off")
        if truth is not None:
            axes[k, 0].set_title(f"shows: {truth[k]}", fontsize=8)
        ax = axes[k, 1]
        ax.axis("off")
        _bubble(ax, 0.82, "user", questions[k], _USER, "right")
        if after is None:
            _bubble(ax, 0.4, "assistant", before[k], (*_BEFORE, 0.35))
        else:
            _bubble(ax, 0.5, "before", before[k], (*_BEFORE, 0.35))
            _bubble(ax, 0.18, "after", after[k], (*_AFTER, 0.35))
    fig.suptitle(title or "The same question before and after unlearning: the name is gone, the rest still works",
                 fontsize=11)
    fig.tight_layout()
    return fig


def chat_explorer(images: Sequence[np.ndarray], questions: Sequence[str], answer_before, answer_after,
                  truth: Sequence[str] | None = None):
    """A picture slider and a question menu over :func:`chat_panel`.

    answer_before / answer_after: ``f(image_index, question) -> str``. Returns an ipywidgets box, or the
    static figure of the first picture if ipywidgets is unavailable.
    """
    try:
        import ipywidgets as w
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return chat_panel(images[:1], questions[0], [answer_before(0, questions[0])],
                          [answer_after(0, questions[0])], truth[:1] if truth else None)
    pick = w.IntSlider(0, 0, len(images) - 1, description="picture")
    ask = w.Dropdown(options=list(questions), description="question")
    out = w.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            i, q = pick.value, ask.value
            fig = chat_panel([images[i]], q, [answer_before(i, q)], [answer_after(i, q)],
                             [truth[i]] if truth else None, title="before / after unlearning")
            display(fig)
            plt.close(fig)

    pick.observe(redraw, "value")
    ask.observe(redraw, "value")
    redraw()
    return w.VBox([w.HBox([pick, ask]), out])


def vlm_table(report: dict, paper: dict | None = None) -> pd.DataFrame:
    """Forget rate, retain accuracy and VQA accuracy before/after (in %), next to the paper's LLaVA numbers.

    report: a ``report.json`` dict of a LLaVA host run (``vlm_*_before`` / ``_after`` keys). paper: optional
    ``{metric: (before, after)}`` in % for the same rows (None where the paper gives no number).
    """
    rows = {"forget rate (name in answer)": "vlm_forget_rate", "retain accuracy (other names)": "vlm_retain_acc",
            "VQA accuracy (object, colour, style, describe)": "vlm_vqa_acc"}
    data = []
    for label, key in rows.items():
        row = {"metric": label, "toy before %": _pct(report.get(f"{key}_before")),
               "toy after %": _pct(report.get(f"{key}_after"))}
        if paper is not None:
            b, a = paper.get(key, (None, None))
            row.update({"paper before %": b, "paper after %": a})
        data.append(row)
    return pd.DataFrame(data).set_index("metric")


def recipe_table(results: dict) -> pd.DataFrame:
    """One row per recipe: ``{preset name: UnlearnResult of unlearn_host}`` -> layer, step size, LLaVA's forget
    rate / retain accuracy / VQA accuracy before -> after (in %), ``unlearn_seconds`` and the edited tensor's share
    of the vision tower (%)."""
    rows = []
    for name, result in results.items():
        hm = result.host_metrics
        row = {"recipe": name, "layer": (result.layer or "none").replace("vision_model.encoder.", ""),
               "step size": None if result.step_size is None else round(result.step_size, 3)}
        for label, key in (("forget %", "vlm_forget_rate"), ("retain %", "vlm_retain_acc"), ("VQA %", "vlm_vqa_acc")):
            row[label] = (f"{_pct(hm[key + '_before'])} → {_pct(hm[key + '_after'])}" if key + "_after" in hm
                          else "no patch")
        row["unlearn s"] = round(result.unlearn_seconds, 1)
        footprint = hm.get("patch_footprint")
        row["tensor / tower %"] = _pct(footprint["share_of_tower"]) if footprint else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("recipe")


# The bar of issue 20 for one LLaVA run (points of %): forget rate after, retain drop, VQA drop
LLAVA_BAR = {"forget": 5.0, "retain": 10.0, "vqa": 5.0}


def bench_recipes_table(bench: dict, presets: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The 13-character LLaVA bench (``data/bench/llava.json``, written by ``scripts/bench_llava.py --json``) side by
    side: ``(per character, per recipe)``. The first has one row per character and, for each recipe in
    ``presets``, its forget rate / retain accuracy / VQA accuracy after (in %) and the edited layer; the second, per
    recipe, how many characters meet each part of the bar (:data:`LLAVA_BAR`) and the CPU seconds of the method.
    A recipe missing from the file is left out of both."""
    runs = bench.get("presets", {})
    cols, counts = {}, []
    for preset in [p for p in presets if p in runs]:
        rows = pd.DataFrame(runs[preset]["rows"]).set_index("concept")
        forget = 100 * rows["vlm_forget_rate_after"]
        drop = {k: 100 * (rows[f"vlm_{k}_before"] - rows[f"vlm_{k}_after"]) for k in ("retain_acc", "vqa_acc")}
        cols[(preset, "forget %")] = forget.round(1)
        cols[(preset, "retain %")] = (100 * rows["vlm_retain_acc_after"]).round(1)
        cols[(preset, "VQA %")] = (100 * rows["vlm_vqa_acc_after"]).round(1)
        cols[(preset, "layer")] = rows["layer"].str.replace("vision_model.encoder.layers.", "", regex=False) \
            .str.replace(".weight", "", regex=False)
        counts.append({"recipe": preset, "characters": len(rows),
                       "forget <= 5%": int((forget <= LLAVA_BAR["forget"]).sum()),
                       "retain drop <= 10": int((drop["retain_acc"] <= LLAVA_BAR["retain"] + 1e-9).sum()),
                       "VQA drop <= 5": int((drop["vqa_acc"] <= LLAVA_BAR["vqa"] + 1e-9).sum()),
                       "CPU s (max)": float(rows["unlearn_cpu_seconds"].max())})
    table = pd.DataFrame(cols)
    table.columns = pd.MultiIndex.from_tuples(table.columns) if cols else table.columns
    return table, pd.DataFrame(counts).set_index("recipe") if counts else pd.DataFrame()


def _pct(x):
    return None if x is None else round(100 * float(x), 1)


def feature_layer_figure(changes: dict[int, float], read_block: int, edited_block: int | None = None):
    """Bar chart: the largest change of LLaVA's logits per edited vision block, with the block LLaVA reads.

    changes: ``{block: max |delta logit|}`` (from :func:`slugkit.eval.vlm.logit_change_by_block`).
    """
    blocks = sorted(changes)
    values = [changes[b] for b in blocks]
    colours = [_BEFORE if b <= read_block else _AFTER for b in blocks]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar([str(b) for b in blocks], values, color=colours)
    for b, v in zip(blocks, values):
        ax.text(blocks.index(b), v, "exactly 0" if v == 0 else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axvline(blocks.index(read_block) + 0.5, color="0.3", ls="--")
    ax.text(blocks.index(read_block) + 0.55, max(values) * 0.9 if max(values) > 0 else 0.5,
            "LLaVA reads here\n(vision_feature_layer)", fontsize=8, va="top")
    ax.set_xlabel("vision block edited (0-based; same noise, 10% of the weight's norm)")
    ax.set_ylabel("max |change of logits| (nats)")
    title = "Edits after the layer LLaVA reads change nothing; SLUG's candidates stop there"
    if edited_block is not None:
        title += f"\n(SLUG edited block {edited_block})"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

"""A projection, not a measurement of the methods: what SLUG and the baselines would cost at the paper's scale.

The toy world cannot show the paper's cost gap (its model is small and its forget / retain sets are a few
hundred pairs). This module measures the one thing that carries over, the seconds of one pass per pair (and
per picture) through the paper's architecture (open_clip ViT-B-32 with random weights: only the arithmetic
matters) on this CPU, and multiplies them by the passes each method needs at the paper's scale:

- SLUG: one forward+backward over the forget and retain pairs (the gradients, once), then forward-only
  search evaluations (Pareto layers x evaluations per layer x pictures per evaluation, each picture one
  vision-tower pass); "warm" reuses the per-model retain gradient, so only the forget pairs pay a backward.
- GA / FT / GA+FT / SalUn: forward+backward over their data every epoch (GA the forget set, FT the retain
  set, GA+FT and SalUn both; SalUn also one forget gradient for its saliency mask); their own evaluations
  are left out, which favours them.
- SSD: no epochs, one forward+backward over the forget and the retain set for its importances.

Every input is a :class:`ScaleInput` with its source; numbers the project's sources do not state are marked
"assumption". Each evaluated picture is charged a whole vision-tower pass, as in the authors' search,
although slugkit's search resumes from the edited block and measures utility only at step sizes that reach
the forget target: for slugkit this overstates the search.

>>> timing = PassTiming(fwd_bwd_seconds=0.3, fwd_seconds=0.1, batch_size=4, threads=1, repeats=2,
...                     model="fake")
>>> table = project_costs(timing)
>>> int(table.loc["GA", "fwd_bwd_pairs"]) == 10 * PAPER_SCALE["forget_pairs"].value   # 10 epochs
True
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from ..adapters.base import CLIPAdapter
from ..gradients import retain_loss

AUTHORS = "CSIPlab/SLUG"


@dataclass(frozen=True)
class ScaleInput:
    """One number of the paper-scale setting and where it comes from ("assumption: ..." when no source says)."""

    value: int
    source: str


PAPER_SCALE: dict[str, ScaleInput] = {
    "forget_pairs": ScaleInput(
        500, "assumption: the authors' forget-set builder stops at --n_imgs 500 pictures naming the identity "
             f"({AUTHORS} src/clip/a0_create_tar.py); the paper's sets may be smaller"),
    "retain_pairs": ScaleInput(
        7972, "one LAION-400M shard, 00000.tar: 7,972 of its 10,000 pairs downloaded "
              f"({AUTHORS} data/laion400m/00000_stats.json; the retain set of scripts/run_clip_comparison.sh)"),
    "search_layers": ScaleInput(
        8, "assumption: 4 Pareto layers per tower, both towers searched (the authors' logged LLaVA front had 4; "
           "the toy CLIP's fronts have 5-12)"),
    "evals_per_layer": ScaleInput(10, "at most ~10 step sizes per layer (docs: slug-method.md, binary search)"),
    "eval_pictures": ScaleInput(
        2500, f"ImageNet validation at ratio 0.05 (2,500 of 50,000) per evaluation ({AUTHORS} "
              "src/clip/a6_binary_search_auto.py); the identity's few pictures and the class-name embeddings "
              "a text-layer edit recomputes are left out"),
    "baseline_epochs": ScaleInput(
        10, f"--epochs=10 for GA, FT, GA+FT and SalUn in the authors' comparison ({AUTHORS} "
            "scripts/run_clip_comparison.sh); per-epoch evaluations not counted (favours the baselines)"),
}


@dataclass(frozen=True)
class PassTiming:
    """Measured seconds of one pass, per pair or per picture.

    ``fwd_bwd_seconds``: per pair (a picture and its caption), forward through both towers + CLIP contrastive
    loss + backward; ``fwd_seconds``: per picture, forward through the vision tower only, no graph (a search
    evaluation classifies pictures against class-name embeddings computed once). Each is the fastest of
    ``repeats`` timed batches of ``batch_size`` pairs, divided by ``batch_size``, on ``threads`` torch threads.
    """

    fwd_bwd_seconds: float
    fwd_seconds: float
    batch_size: int
    threads: int
    repeats: int
    model: str


def measure_pass_seconds(adapter: CLIPAdapter, batch_size: int = 4, repeats: int = 2,
                         image_size: int | None = None, clock: Callable[[], float] = time.perf_counter
                         ) -> PassTiming:
    """Time one forward+backward per pair and one forward-only pass per picture through ``adapter``'s model.

    Random pictures ``(batch_size, S, S, 3)`` (``S`` = ``image_size``, default the adapter's) and captions go
    through one untimed warm-up, then ``repeats`` timed batches of each kind; the fastest counts (the least
    disturbed by other work on the machine). On open_clip ViT-B-32 with the defaults (4 pairs, 2 repeats)
    this takes about 10-20 s on one thread. Gradients are released afterwards.
    """
    if batch_size < 2 or repeats < 1:
        raise ValueError(f"batch_size must be >= 2 (a contrastive batch) and repeats >= 1, got {batch_size}, "
                         f"{repeats}")
    size = int(image_size or getattr(adapter, "image_size", 224))
    gen = torch.Generator().manual_seed(0)
    pictures = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=gen)
    pixels = adapter.preprocess(pictures)
    tokens = adapter.tokenize([f"a photo of person number {i}." for i in range(batch_size)])
    model = adapter.model

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = retain_loss(adapter.encode_image(pixels), adapter.encode_text(tokens), adapter.logit_scale())
            loss.backward()

    def fwd() -> None:
        with torch.no_grad():
            adapter.encode_image(pixels)

    def fastest(step: Callable[[], None]) -> float:
        step()  # warm-up: allocations, first-call overheads
        times = []
        for _ in range(repeats):
            t0 = clock()
            step()
            times.append(clock() - t0)
        return min(times) / batch_size

    try:
        timing = PassTiming(fastest(fwd_bwd), fastest(fwd), batch_size, torch.get_num_threads(), repeats,
                            adapter.name)
    finally:
        model.zero_grad(set_to_none=True)
    return timing


def _counts(scale: Mapping[str, ScaleInput]) -> dict[str, tuple[int, int, int, int, int, str]]:
    """Per method: (forget pairs, retain pairs, epochs, search evaluations, forward+backward pairs, what its
    passes are)."""
    v = {k: s.value for k, s in scale.items()}
    f, r, e = v["forget_pairs"], v["retain_pairs"], v["baseline_epochs"]
    evals = v["search_layers"] * v["evals_per_layer"]
    search = f"{v['search_layers']} layers x {v['evals_per_layer']} evaluations x {v['eval_pictures']} pictures"
    return {
        "SLUG (cold)": (f, r, 1, evals, f + r, f"one gradient over forget + retain pairs; search: {search}"),
        "SLUG (warm retain gradient)": (f, 0, 1, evals, f, f"forget gradient only (retain cached); search: {search}"),
        "GA": (f, 0, e, 0, e * f, f"{e} epochs of gradient ascent over the forget pairs"),
        "FT": (0, r, e, 0, e * r, f"{e} epochs of fine-tuning over the retain pairs"),
        "GA+FT": (f, r, e, 0, e * (f + r), f"{e} epochs, each over the forget then the retain pairs"),
        "SalUn": (f, r, e, 0, f + e * (f + r),
                  f"one forget gradient for the saliency mask (as slugkit's SalUn) + {e} epochs of GA+FT"),
        "SSD": (f, r, 1, 0, f + r, "no training: one importance pass over the forget and the retain pairs"),
    }


def project_costs(timing: PassTiming, scale: Mapping[str, ScaleInput] = PAPER_SCALE) -> pd.DataFrame:
    """Projected seconds and hours per method: measured seconds per pair x the passes at ``scale``.

    One row per method (index), every input a column: the pair counts, epochs, search evaluations and
    pictures per evaluation, the resulting forward+backward pairs and forward-only pictures, the measured
    seconds per pair and per picture, batch size and threads, then ``seconds`` and ``hours``; ``passes``
    says what was counted.
    """
    missing = set(PAPER_SCALE) - set(scale)
    if missing:
        raise ValueError(f"scale is missing {sorted(missing)}; expected every key of PAPER_SCALE")
    pictures = scale["eval_pictures"].value
    rows = {}
    for method, (forget, retain, epochs, evals, fwd_bwd_pairs, passes) in _counts(scale).items():
        fwd_pictures = evals * pictures
        seconds = fwd_bwd_pairs * timing.fwd_bwd_seconds + fwd_pictures * timing.fwd_seconds
        rows[method] = {
            "forget_pairs": forget, "retain_pairs": retain, "epochs": epochs, "search_evaluations": evals,
            "eval_pictures": pictures if evals else 0, "fwd_bwd_pairs": fwd_bwd_pairs,
            "fwd_pictures": fwd_pictures,
            "fwd_bwd_s_per_pair": timing.fwd_bwd_seconds, "fwd_s_per_picture": timing.fwd_seconds,
            "batch_size": timing.batch_size, "threads": timing.threads, "seconds": seconds,
            "hours": seconds / 3600, "passes": passes,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def scale_table(scale: Mapping[str, ScaleInput] = PAPER_SCALE) -> pd.DataFrame:
    """The paper-scale inputs as a table: value and source (assumptions say so)."""
    return pd.DataFrame({k: asdict(s) for k, s in scale.items()}).T.rename_axis("input")


def paper_scale_projection(adapter: CLIPAdapter | None = None, scale: Mapping[str, ScaleInput] = PAPER_SCALE,
                           measure: Callable[..., PassTiming] = measure_pass_seconds, **measure_kw
                           ) -> tuple[PassTiming, pd.DataFrame]:
    """Measure the pass costs on ``adapter`` (default: open_clip ViT-B-32 with random weights, nothing
    downloaded) with ``measure(adapter, **measure_kw)`` and project them with :func:`project_costs`."""
    if adapter is None:
        from ..models.loading import random_clip

        adapter = random_clip("ViT-B-32")
    timing = measure(adapter, **measure_kw)
    return timing, project_costs(timing, scale)


def projection_summary(timing: PassTiming, table: pd.DataFrame) -> str:
    """One paragraph stating what :func:`project_costs` computed; every number is read from ``timing``/``table``."""
    hours = table["hours"]
    cold, warm = hours["SLUG (cold)"], hours["SLUG (warm retain gradient)"]
    search = table.loc["SLUG (cold)", "fwd_pictures"] * timing.fwd_seconds / 3600
    baselines = ", ".join(f"{m} {hours[m]:.3g} h ({hours[m] / cold:.2g}x)" for m in table.index
                          if not m.startswith("SLUG"))
    return (f"Measured on this CPU ({timing.threads} torch thread(s), batches of {timing.batch_size}, fastest of "
            f"{timing.repeats}): {timing.fwd_bwd_seconds:.3g} s per pair forward+backward, "
            f"{timing.fwd_seconds:.3g} s per picture forward. Projected: SLUG {cold:.3g} h with the retain gradient "
            f"computed ({search / cold:.0%} of it the step-size search), {warm:.3g} h with it cached; the baselines "
            f"(and their multiple of SLUG's {cold:.3g} h): {baselines}.")


def projection_figure(table: pd.DataFrame):
    """Horizontal bars of projected hours per method, log scale; SLUG's rows in their own colour."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from ..viz import figures  # noqa: F401  (sets the seaborn theme once)

    slug, other = sns.color_palette("colorblind", 2)
    colours = [slug if m.startswith("SLUG") else other for m in table.index]
    hours = table["hours"].astype(float)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.barh(list(table.index), hours, color=colours)
    ax.set_xscale("log")
    ax.set_xlim(10 ** math.floor(math.log10(hours.min())), hours.max() * 4)  # bars start a decade below the least
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_yaxis()
    ax.set_xlabel("projected hours on this CPU (log scale)")
    ax.set_title("A projection, not a run: measured seconds per pass x each method's passes", fontsize=11)
    for y, h in enumerate(hours):
        ax.text(h, y, f" {h:.3g} h", va="center", fontsize=9)
    fig.tight_layout()
    return fig

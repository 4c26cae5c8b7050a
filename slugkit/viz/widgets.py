"""Live explorers (ipywidgets 8) for the three SLUG stages, built on :mod:`slugkit.viz.figures`.

- :class:`LayerHeatmap`: blocks x layer kind per tower, metric dropdown, log colours, click a cell.
- :class:`ParetoExplorer`: importance vs alignment, the front, one layer's row and search trace.
- :class:`StepSizeExplorer`: a log-λ slider for one layer; metric curves, search steps, a picture strip.
- :class:`GradientSimilarity`: cosine between layers' forget gradients; forget vs retain per layer.

Every explorer displays as its widget *and* carries a PNG of its current static figure in the same
output (``_repr_mimebundle_``), so executed notebooks, HTML exports and CI show a picture where no
kernel is live. Drive them from code too: set ``explorer.slider.value`` / ``heatmap.metric.value``.

Example::

    result = slugkit.unlearn(clip, "Captain Zorp")
    LayerHeatmap(result)
    StepSizeExplorer(clip, result)
"""
from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import OrderedDict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import figures

try:
    import ipywidgets as W
except ImportError as err:  # pragma: no cover - ipywidgets is a notebook extra
    raise ImportError("slugkit.viz.widgets needs ipywidgets>=8: pip install 'slugkit[notebooks]'") from err


def figure_png(fig, dpi: float | None = None, close: bool = True) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards so notebooks do not show it twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _table_of(source) -> pd.DataFrame:
    table = getattr(source, "table", source)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected an UnlearnResult or a layer table (DataFrame), got {type(source).__name__}")
    missing = {"name", "tower", "block", "kind"} - set(table.columns)
    if missing:
        raise ValueError(f"the layer table lacks column(s) {sorted(missing)}: build it with "
                         "slugkit.layer_identification.layer_table")
    return table


def _layer_label(row) -> str:
    star = " ★" if bool(row.get("pareto", False)) else ""
    return f"{row['tower']} {figures.block_label(row['block'])}.{row['kind']}{star}"


def _row_html(row: pd.Series) -> str:
    cells = []
    for key in ("name", "tower", "block", "kind", "shape", "importance", "alignment", "grad_norm", "weight_norm",
                "pareto"):
        if key in row:
            v = row[key]
            text = f"{v:.4g}" if isinstance(v, (float, np.floating)) else html.escape(str(v))
            cells.append(f"<tr><th style='text-align:left;padding-right:8px'>{key}</th><td>{text}</td></tr>")
    return "<table style='font-size:12px'>" + "".join(cells) + "</table>"


class Explorer:
    """Base class: ``widget`` (the live view), ``figure()`` (the static fallback) and rich display."""

    widget: W.Widget

    def figure(self):
        raise NotImplementedError

    def static_png(self) -> bytes:
        return figure_png(self.figure())

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = dict(self.widget._repr_mimebundle_() or {})
        data["image/png"] = _b64(self.static_png())
        data["text/plain"] = f"<{type(self).__name__}: live widget; a static figure is shown without a kernel>"
        return data


# ------------------------------------------------------------------------------------------------
# Layer heatmap
# ------------------------------------------------------------------------------------------------
class LayerHeatmap(Explorer):
    """Blocks x layer kind per tower, one clickable cell per candidate layer.

    ``source``: an ``UnlearnResult`` (its table and chosen layer) or a layer table alone. The
    ``metric`` dropdown picks importance, alignment, ‖g_f‖ or ‖θ‖; colours use a log scale shared by
    the towers. ★ marks Pareto layers, a red frame the chosen one; clicking (or hovering) a cell shows
    that layer's numbers.
    """

    def __init__(self, source, metric: str = "importance", chosen: str | None = None, cmap: str = "mako"):
        self.table = _table_of(source)
        self.chosen = chosen if chosen is not None else getattr(source, "layer", None)
        metrics = [m for m in figures.LAYER_METRICS if m in self.table]
        if not metrics:
            raise ValueError("the layer table has none of the columns " + ", ".join(figures.LAYER_METRICS))
        if metric not in metrics:
            raise ValueError(f"metric must be one of {metrics}, got {metric!r}")
        self.cmap = plt.get_cmap(cmap)
        self.metric = W.Dropdown(options=[(figures.LAYER_METRICS[m], m) for m in metrics], value=metric,
                                 description="colour by", layout=W.Layout(width="360px"))
        self.info = W.HTML(value="<i>click a cell to see its layer's numbers</i>")
        self.colourbar = W.HTML()
        self.buttons: dict[str, W.Button] = {}
        self.picked: str | None = None
        panels = []
        for tower in dict.fromkeys(self.table["tower"]):
            sub = self.table[self.table["tower"] == tower]
            blocks = sorted(set(sub["block"]))
            kinds = figures.kind_order(sub["kind"])
            cells = [W.HTML(f"<b>{html.escape(tower)}</b>")] + [
                W.HTML(f"<div style='font-size:11px;text-align:center'>{html.escape(k)}</div>") for k in kinds]
            where = {(r["block"], r["kind"]): r for _, r in sub.iterrows()}
            for b in blocks:
                cells.append(W.HTML(f"<div style='font-size:11px'>block {figures.block_label(b)}</div>"))
                for k in kinds:
                    r = where.get((b, k))
                    if r is None:
                        cells.append(W.HTML(""))
                        continue
                    btn = W.Button(layout=W.Layout(width="70px", height="26px", padding="0px"))
                    btn.add_class("slugkit-cell")
                    btn.on_click(lambda _b, name=r["name"]: self.pick(name))
                    self.buttons[r["name"]] = btn
                    cells.append(btn)
            grid = W.GridBox(cells, layout=W.Layout(
                grid_template_columns=f"70px repeat({len(kinds)}, 72px)", grid_gap="2px", margin="0 18px 0 0"))
            panels.append(grid)
        title = W.HTML("<b>Layer heatmap</b>: one cell per candidate layer (★ Pareto, red frame: chosen). "
                       "Notice where the bright (important) and dark (low-alignment) cells coincide.")
        self.widget = W.VBox([title, self.metric, W.HBox(panels), self.colourbar, self.info])
        self.widget.add_class("slugkit-layer-heatmap")
        self.metric.observe(lambda change: self.update(), names="value")
        self.update()
        if self.chosen in self.buttons:
            self.pick(self.chosen)

    def values(self) -> dict[str, float]:
        """The values currently coloured: ``{layer name: value of the selected metric}``."""
        return dict(zip(self.table["name"], self.table[self.metric.value].astype(float)))

    def update(self) -> None:
        """Recolour every cell for the selected metric (log scale)."""
        m = self.metric.value
        vals = self.values()
        norm = plt.matplotlib.colors.LogNorm(*figures.positive_range(list(vals.values())))
        pareto = dict(zip(self.table["name"], self.table.get("pareto", pd.Series(False, index=self.table.index))))
        for name, btn in self.buttons.items():
            v = vals[name]
            shade = float(np.clip(norm(v), 0, 1)) if v > 0 and math.isfinite(v) else 0.0
            rgba = self.cmap(shade)
            btn.style.button_color = plt.matplotlib.colors.to_hex(rgba)
            btn.style.text_color = "black" if shade > 0.6 else "white"
            btn.description = ("★ " if bool(pareto[name]) else "") + f"{v:.2g}"
            btn.tooltip = f"{name}\n{figures.LAYER_METRICS[m]} = {v:.4g}"
            btn.layout.border = "3px solid red" if name == self.chosen else (
                "2px dashed #444" if name == self.picked else "")
        stops = ", ".join(plt.matplotlib.colors.to_hex(self.cmap(x)) for x in np.linspace(0, 1, 9))
        lo, hi = norm.vmin, norm.vmax
        self.colourbar.value = (
            f"<div style='display:flex;align-items:center;gap:6px;font-size:11px'>{lo:.2g}"
            f"<div style='width:260px;height:12px;background:linear-gradient(to right, {stops})'></div>"
            f"{hi:.2g} &nbsp; {html.escape(figures.LAYER_METRICS[m])} (log scale)</div>")

    def pick(self, name: str) -> pd.Series:
        """Show the numbers of layer ``name`` (what clicking its cell does); returns its table row."""
        rows = self.table[self.table["name"] == name]
        if rows.empty:
            raise KeyError(f"{name!r} is not a layer of the table; layers include {list(self.table['name'][:3])}")
        old, self.picked = self.picked, name
        for n in (old, name):
            if n in self.buttons:
                self.buttons[n].layout.border = "3px solid red" if n == self.chosen else (
                    "2px dashed #444" if n == self.picked else "")
        self.info.value = _row_html(rows.iloc[0])
        return rows.iloc[0]

    def figure(self):
        return figures.layer_heatmap(self.table, self.metric.value, chosen=self.chosen)


# ------------------------------------------------------------------------------------------------
# Pareto explorer
# ------------------------------------------------------------------------------------------------
class ParetoExplorer(Explorer):
    """Every candidate layer as a point (importance vs alignment) per tower, the Pareto front drawn.

    Choosing a layer in the dropdown rings it, shows its table row and, when the layer was searched
    (``searches`` or ``result.searches``), its step-size search trace.
    """

    def __init__(self, source, searches=None, layer: str | None = None, dpi: float = 80):
        self.table = _table_of(source)
        self.searches = {s.layer: s for s in (searches if searches is not None else getattr(source, "searches", []))}
        self.dpi = dpi
        order = self.table.sort_values("pareto", ascending=False, kind="stable") if "pareto" in self.table else self.table
        options = [(_layer_label(r) + (" (searched)" if r["name"] in self.searches else ""), r["name"])
                   for _, r in order.iterrows()]
        layer = layer or getattr(source, "layer", None) or options[0][1]
        self.layer = W.Dropdown(options=options, value=layer, description="layer", layout=W.Layout(width="520px"))
        self.plot = W.Image(format="png")
        self.info = W.HTML()
        self.widget = W.VBox([W.HTML("<b>Pareto explorer</b>: pick a layer; good layers sit bottom-right."),
                              self.layer, self.plot, self.info])
        self.widget.add_class("slugkit-pareto")
        self.layer.observe(lambda change: self.update(), names="value")
        self.update()

    def trace(self, name: str | None = None) -> pd.DataFrame | None:
        s = self.searches.get(name or self.layer.value)
        return s.to_frame() if s is not None else None

    def figure(self):
        return figures.pareto_figure(self.table, chosen=self.layer.value, trace=self.trace())

    def update(self) -> None:
        name = self.layer.value
        row = self.table[self.table["name"] == name].iloc[0]
        self.plot.value = figure_png(self.figure(), dpi=self.dpi)
        text = _row_html(row)
        s = self.searches.get(name)
        if s is not None:
            frame = s.to_frame()
            cols = [c for c in ("step", "lam", "forget_top1", "forget_top5", "retain_top1", "utility", "met", "best")
                    if c in frame]
            text += (f"<p>search: status <b>{s.status}</b>, λ₀ = {s.lambda0:.4g}, best λ = "
                     f"{'none' if s.best_lambda is None else f'{s.best_lambda:.4g}'}</p>"
                     + frame[cols].to_html(index=False, float_format=lambda x: f"{x:.3g}"))
        else:
            text += "<p><i>this layer was not searched (only Pareto layers are, by default)</i></p>"
        self.info.value = text


# ------------------------------------------------------------------------------------------------
# Step-size explorer
# ------------------------------------------------------------------------------------------------
class _Probe:
    """Evaluates the edited model once per λ: the search's metrics and the strip's top predictions.

    For a MiniCanvas evaluator (``metrics(image_emb, prompt_emb)`` and ``world``) the evaluation pictures
    and the strip are embedded together, from the activations entering the edited vision block (or,
    for a text edit, from the unchanged image embeddings). Other evaluators are called as the search
    calls them (no strip).
    """

    def __init__(self, adapter, evaluator, strip_images, attribute, classes, batch_size: int = 512,
                 n_others: int | None = None):
        self.adapter, self.evaluator, self.attribute, self.classes = adapter, evaluator, attribute, classes
        self.toy = hasattr(evaluator, "metrics") and hasattr(evaluator, "world")
        self.batch_size = batch_size
        if self.toy and n_others is not None:  # every picture of the concept + the first n_others of the rest
            labels = evaluator.world.labels(evaluator.attribute)
            own = labels == evaluator.index
            keep = np.sort(np.r_[np.flatnonzero(own), np.flatnonzero(~own)[:n_others]])
            if len(keep) < len(labels):
                evaluator = self.evaluator = type(evaluator)(adapter, evaluator.world.take(keep), evaluator.concept)
        if self.toy:
            self.n_eval = len(evaluator.world.images)
            self.images = np.concatenate([evaluator.world.images, strip_images]) if len(strip_images) \
                else evaluator.world.images

    def prepare(self, tower: str, block: int) -> None:
        import torch

        from ..eval.zeroshot import embed_images, embed_prompts

        if not self.toy:
            self.evaluator.prepare(tower, block)
            self.evaluator.cache()
            return
        self.states = None
        with torch.no_grad():
            if tower == "vision" and block >= 0 and self.adapter.supports_vision_resume:  # -1: before the blocks
                self.states = [self.adapter.vision_state(self.adapter.preprocess(torch.tensor(
                    self.images[i:i + self.batch_size])), block) for i in range(0, len(self.images), self.batch_size)]
            else:
                self.image_emb = embed_images(self.adapter, self.images)
            self.prompt_emb = embed_prompts(self.adapter)

    def __call__(self, tower: str, block: int) -> tuple[dict, list[str]]:
        import torch

        from ..eval.zeroshot import embed_images, embed_prompts

        if not self.toy:
            return dict(self.evaluator(edited_tower=tower, block=block)), []
        with torch.no_grad():
            if tower == "text":
                image_emb, prompt_emb = self.image_emb, embed_prompts(self.adapter)
            elif self.states is not None:
                image_emb = torch.cat([self.adapter.encode_image_from(s, block) for s in self.states])
                prompt_emb = self.prompt_emb
            else:
                image_emb, prompt_emb = embed_images(self.adapter, self.images), self.prompt_emb
        metrics = self.evaluator.metrics(image_emb[:self.n_eval], prompt_emb)
        preds = []
        if self.attribute is not None and len(image_emb) > self.n_eval:
            sims = image_emb[self.n_eval:] @ prompt_emb[self.attribute].T
            preds = [self.classes[j] for j in sims.argmax(1).tolist()]
        return metrics, preds


class StepSizeExplorer(Explorer):
    """A log-scale λ slider for one layer: live metric curves, the search's steps, a picture strip.

    ``adapter``: the model (left unchanged: every evaluation edits a fresh copy of the layer and
    restores it). ``result``: an ``UnlearnResult`` (gradients, table, searches, concept); or pass
    ``gradients``, ``table``, ``concept`` (and optionally ``searches``) yourself. ``layers``: the
    dropdown's layers (default: the Pareto layers; add any candidate for contrast). ``task``: what
    to evaluate (default: the toy task of the concept, whose search evaluator the search used).
    Each evaluation reuses the activations upstream of the edited block (vision) or the image
    embeddings (text edits); results are kept in an LRU cache keyed by (layer, λ). To stay live the
    toy evaluation keeps every picture of the concept from the search's set but only the first
    ``n_others`` other pictures (``None``: all of them, the search's exact numbers); forget accuracy is
    therefore exact, retain and utility a subsample (the numbered search steps use the full set).
    Evaluations run on ``threads`` torch threads (default 1: these small passes gain little from more
    threads on an idle machine and lose much on a busy one; ``None`` keeps torch's setting).
    """

    def __init__(self, adapter, result=None, *, gradients=None, table=None, searches=None, concept: str | None = None,
                 layers=None, layer: str | None = None, task=None, n_strip: int = 8, grid_points: int = 9,
                 slider_steps: int = 48, cache_size: int = 256, seed: int = 0, dpi: float = 72,
                 n_others: int | None = 250, threads: int | None = 1):
        from ..step_size_search import apply_step

        self._apply_step = apply_step
        self.adapter = adapter
        self.gradients = gradients if gradients is not None else getattr(result, "gradients", None)
        self.table = _table_of(table if table is not None else result)
        self.concept = concept or getattr(result, "concept", None)
        if self.gradients is None or self.concept is None:
            raise ValueError("pass an UnlearnResult, or gradients=, table= and concept=")
        searches = searches if searches is not None else getattr(result, "searches", [])
        self.searches = {s.layer: s for s in searches}
        if layers is None:
            layers = list(self.table.loc[self.table["pareto"].astype(bool), "name"]) if "pareto" in self.table \
                else list(self.table["name"])
        layers = list(dict.fromkeys(layers))
        unknown = [n for n in layers if n not in set(self.table["name"]) or n not in self.gradients.forget]
        if unknown or not layers:
            raise ValueError(f"layers {unknown or layers} are not candidate layers with gradients")
        self.layers = layers
        self.rows = {r["name"]: r for _, r in self.table.iterrows()}
        from ..models.loading import TOY_MODELS

        self._toy = adapter.name in TOY_MODELS
        if task is None:
            if not self._toy:
                raise ValueError(f"{adapter.name!r} is not a toy model: pass task=slugkit.slug.make_task(adapter, "
                                 "concept, data=..., classes=...) so the explorer knows what to evaluate")
            from ..tasks import toy_task

            task = toy_task(adapter, self.concept, seed=seed)
        self.evaluator = task.search_evaluator
        self.dpi, self.grid_points, self.slider_steps, self.threads = dpi, grid_points, slider_steps, threads
        self._cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size
        self.curves: dict[str, dict[float, dict]] = {}
        self._prepared: tuple | None = None
        self.timings: list[float] = []
        self._quiet = False
        self._strip_setup(seed, n_strip)
        self._probe = _Probe(adapter, self.evaluator, self.strip_images, getattr(self, "attribute", None),
                             getattr(self, "_strip_classes", []), n_others=n_others)
        self.evaluator = self._probe.evaluator

        start = layer or getattr(result, "layer", None)
        start = start if start in self.layers else self.layers[0]
        self.layer = W.Dropdown(options=[(_layer_label(self.rows[n]), n) for n in self.layers], value=start,
                                description="layer", layout=W.Layout(width="520px"))
        self.slider = W.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05, description="λ",
                                       continuous_update=False, readout_format=".3g",
                                       layout=W.Layout(width="640px"))
        self.plot = W.Image(format="png")
        self.strip = W.HTML()
        self.status = W.HTML()
        self.widget = W.VBox([
            W.HTML("<b>Step-size explorer</b>: move λ. Forget accuracy should reach 0 before retain and "
                   "utility start to fall; the strip shows each picture's top answer at this λ."),
            self.layer, self.slider, self.status, self.plot, self.strip])
        self.widget.add_class("slugkit-step-size")
        self.layer.observe(lambda change: self._select_layer(change["new"]), names="value")
        self.slider.observe(lambda change: None if self._quiet else self.set_lambda(change["new"]), names="value")
        self._select_layer(start)

    # -- the picture strip -------------------------------------------------------------------------
    def _strip_setup(self, seed: int, n_strip: int) -> None:
        """Held-out pictures of the concept and of its nearest neighbours (toy world only)."""
        from ..data.minicanvas import ATTRIBUTES, cached_split, find_concept
        from ..eval.zeroshot import embed_prompts

        self.strip_images = np.zeros((0, 1, 1, 3), np.uint8)
        self.strip_truth: list[str] = []
        self.strip_predictions: list[str] = []
        try:
            found = find_concept(self.concept)
        except ValueError:
            return  # user data: no labelled held-out pictures to show
        if n_strip <= 0 or not self._toy:
            return
        self.attribute = found["attribute"]
        classes = list(ATTRIBUTES[self.attribute])
        idx = classes.index(found["name"])
        with_prompts = embed_prompts(self.adapter, [self.attribute])[self.attribute]
        sims = (with_prompts @ with_prompts[idx]).numpy()
        neighbours = [int(j) for j in np.argsort(-sims) if j != idx][:max(1, n_strip // 3)]
        world = cached_split(600, seed + 1, "test")
        labels = world.labels(self.attribute)
        n_own = n_strip - len(neighbours) * max(1, (n_strip // 2) // len(neighbours))
        picks = list(np.flatnonzero(labels == idx)[:max(n_own, n_strip // 2)])
        per = max(1, (n_strip - len(picks)) // len(neighbours))
        for j in neighbours:
            picks += list(np.flatnonzero(labels == j)[:per])
        picks = picks[:n_strip]
        self.strip_images = world.images[picks]
        self.strip_truth = [classes[labels[i]] for i in picks]
        self._strip_classes = classes
        self._strip_png = [_b64(figure_png(self._tiny(im), close=True)) for im in self.strip_images]

    @staticmethod
    def _tiny(image):
        fig = plt.figure(figsize=(1, 1), dpi=64)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.imshow(image, interpolation="nearest")
        ax.axis("off")
        return fig

    # -- evaluation --------------------------------------------------------------------------------
    def _key(self, lam: float) -> float:
        return round(math.log10(lam), 6)

    def lambda0(self, name: str | None = None) -> float:
        """``0.1 ||θ|| / ||g_f||``: the search's first λ for layer ``name``."""
        import torch

        name = name or self.layer.value
        theta = self.adapter.parameter(name)
        g = self.gradients.forget[name]
        return 0.1 * float(torch.linalg.vector_norm(theta.detach().double())) / float(
            torch.linalg.vector_norm(g.double()))

    def evaluate(self, lam: float, name: str | None = None) -> tuple[dict, list[str]]:
        """Metrics (fractions) and the strip's top predictions at ``θ + λ g_f`` for layer ``name``."""
        name = name or self.layer.value
        key = (name, self._key(lam))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        row = self.rows[name]
        tower, block = row["tower"], int(row["block"])
        if self._prepared != (tower, block):
            self._probe.prepare(tower, block)  # model unedited here: upstream activations are cached
            self._prepared = (tower, block)
        import torch

        threads = torch.get_num_threads()
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            with self._apply_step(self.adapter.parameter(name), self.gradients.forget[name], float(lam)):
                metrics, preds = self._probe(tower, block)
        finally:
            torch.set_num_threads(threads)
        self._cache[key] = (metrics, preds)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.curves.setdefault(name, {})[self._key(lam)] = {"lam": float(lam), **metrics}
        return metrics, preds

    def curve_frame(self, name: str | None = None) -> pd.DataFrame:
        """Every λ evaluated so far for layer ``name``: one row per λ (``lam`` + metric columns)."""
        pts = self.curves.get(name or self.layer.value, {})
        return pd.DataFrame(sorted(pts.values(), key=lambda r: r["lam"]))

    def sweep(self, n: int = 25) -> pd.DataFrame:
        """Evaluate ``n`` λ values evenly spread (in log) over the slider for the current layer; redraw.

        Returns the layer's curve (every λ evaluated so far).
        """
        positions = np.unique(np.round(np.linspace(0, self.slider_steps, n)).astype(int))
        for k in positions:
            self.evaluate(10 ** (self.slider.min + k * self.slider.step))
        self._build_plot()
        self.set_lambda(self.slider.value)
        return self.curve_frame()

    def rises(self, metric: str = "forget_top1", name: str | None = None) -> list[tuple[float, float, float, float]]:
        """Where ``metric`` goes *up* between consecutive evaluated λ: ``[(λ_a, λ_b, value_a, value_b)]``."""
        frame = self.curve_frame(name)
        if metric not in frame:
            return []
        lam, val = frame["lam"].to_numpy(), frame[metric].to_numpy()
        return [(float(lam[i]), float(lam[i + 1]), float(val[i]), float(val[i + 1]))
                for i in range(len(lam) - 1) if val[i + 1] > val[i]]

    def _select_layer(self, name: str) -> None:
        lam0 = self._lam0 = self.lambda0(name)
        s = self.searches.get(name)
        lams = [t.lam for t in s.trace] if s is not None and s.trace else []
        lo = math.log10(min([lam0] + lams) / 8)
        hi = math.log10(max([lam0 * 64] + lams) * 4)
        step = (hi - lo) / self.slider_steps
        self._quiet = True  # the range moves: do not evaluate the values it clamps the slider to
        try:
            hi = lo + step * self.slider_steps
            if lo > self.slider.max:
                self.slider.max, self.slider.min = hi, lo
            else:
                self.slider.min, self.slider.max = lo, hi
            self.slider.step = step
        finally:
            self._quiet = False
        grid = np.unique(np.round(np.linspace(0, self.slider_steps, self.grid_points)).astype(int))
        for k in grid:
            self.evaluate(10 ** (lo + k * step), name)
        self._build_plot()
        start = s.best_lambda if s is not None and s.best_lambda else lam0  # exact: it met the target
        value = float(np.clip(start, 10 ** lo, 10 ** (lo + step * self.slider_steps)))
        if abs(self._key(self.slider.value) - self._key(value)) < 1e-9:
            self.set_lambda(value)
        else:
            self.slider.value = value  # the observer calls set_lambda

    def _build_plot(self) -> None:
        """One persistent figure per layer; a λ move only updates its lines (cheap to redraw)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        name = self.layer.value
        self._fig = Figure(figsize=(7.6, 3.4), dpi=self.dpi)  # outside pyplot: notebooks never show it
        FigureCanvasAgg(self._fig)
        ax = self._fig.add_subplot()
        self._artists = figures.step_size_axes(ax, self.curve_frame(), None, trace=self.trace(), layer=name,
                                               xlim=(10 ** self.slider.min, 10 ** self.slider.max))
        self._fig.subplots_adjust(left=0.09, right=0.72, bottom=0.16, top=0.82)
        # Blitting: axes, labels, legend and search steps are drawn once; a λ move redraws only the
        # curves and the current-λ marker on top of that background.
        self._dynamic = [a for k, a in self._artists.items() if k.startswith("curve:") or k.startswith("current")]
        for a in self._dynamic:
            a.set_animated(True)
        self._fig.canvas.draw()
        self._background = self._fig.canvas.copy_from_bbox(self._fig.bbox)

    def _blit_png(self) -> bytes:
        from PIL import Image

        canvas = self._fig.canvas
        canvas.restore_region(self._background)
        for a in self._dynamic:
            self._fig.draw_artist(a)
        buf = io.BytesIO()
        Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).save(
            buf, format="png", compress_level=1)
        return buf.getvalue()

    def set_lambda(self, lam: float) -> None:
        """Evaluate (or recall) λ, redraw the curves and the strip; the time is kept in ``timings``."""
        t = time.perf_counter()
        metrics, preds = self.evaluate(lam)
        self.current_lambda, self.current, self.strip_predictions = float(lam), metrics, preds
        frame = self.curve_frame()
        for m in figures.CURVE_METRICS:
            line = self._artists.get(f"curve:{m}")
            if line is not None and m in frame:
                line.set_data(frame["lam"].to_numpy(), 100 * frame[m].to_numpy())
        self._artists["current"].set_xdata([lam, lam])
        self._artists["current"].set_visible(True)
        self._artists["current_label"].set_position((lam, 104))
        self._artists["current_label"].set_text(f" λ = {lam:.3g}")
        self._artists["current_label"].set_visible(True)
        self.plot.value = self._blit_png()
        self.status.value = (f"λ = {lam:.4g} ({lam / self._lam0:.3g} λ₀): "
                             + ", ".join(f"{m} <b>{100 * metrics[m]:.1f}%</b>" for m in figures.CURVE_METRICS
                                         if m in metrics))
        self.strip.value = self._strip_html()
        self.timings.append(time.perf_counter() - t)

    def trace(self, name: str | None = None) -> pd.DataFrame | None:
        s = self.searches.get(name or self.layer.value)
        return s.to_frame() if s is not None and s.trace else None

    def _strip_html(self) -> str:
        if not len(self.strip_images):
            return ""
        cells = []
        for png, pred, truth in zip(self._strip_png, self.strip_predictions, self.strip_truth):
            colour = "#222" if pred == truth else "#b2182b"
            cells.append(
                "<div class='slugkit-strip-cell' style='text-align:center;width:96px;font-size:11px'>"
                f"<img src='data:image/png;base64,{png}' style='width:80px;height:80px;image-rendering:pixelated'/>"
                f"<div class='slugkit-pred' style='color:{colour};font-weight:bold'>{html.escape(pred)}</div>"
                f"<div style='color:#777'>is {html.escape(truth)}</div></div>")
        return ("<div class='slugkit-strip' style='display:flex;gap:4px;flex-wrap:wrap'>" + "".join(cells)
                + "</div><div style='font-size:11px;color:#555'>top answer at this λ (red: not the true "
                  "name); first pictures show the forgotten concept, the rest its nearest neighbours</div>")

    def figure(self):
        strip = None
        if len(self.strip_images):
            strip = {"images": self.strip_images, "predictions": self.strip_predictions, "truth": self.strip_truth}
        return figures.step_size_explorer_figure(self.curve_frame(), self.current_lambda, trace=self.trace(),
                                                 strip=strip, layer=self.layer.value,
                                                 xlim=(10 ** self.slider.min, 10 ** self.slider.max))


# ------------------------------------------------------------------------------------------------
# Gradient similarity
# ------------------------------------------------------------------------------------------------
class GradientSimilarity(Explorer):
    """Cosine between layers' forget gradients (one tower at a time) and signed cos(g_f, g_r) per layer.

    ``source``: an ``UnlearnResult``, or pass ``gradients`` and ``table``.
    """

    def __init__(self, source=None, *, gradients=None, table=None, tower: str | None = None, dpi: float = 72):
        self.gradients = gradients if gradients is not None else getattr(source, "gradients", None)
        self.table = _table_of(table if table is not None else source)
        if self.gradients is None:
            raise ValueError("pass an UnlearnResult or gradients= (a slugkit.gradients.Gradients)")
        towers = list(dict.fromkeys(self.table["tower"]))
        self.tower = W.ToggleButtons(options=towers, value=tower or towers[0], description="tower")
        self.dpi = dpi
        self.plot = W.Image(format="png")
        self.widget = W.VBox([W.HTML("<b>Gradient similarity</b>"), self.tower, self.plot])
        self.tower.observe(lambda change: self.update(), names="value")
        self.update()

    def matrix(self, tower: str | None = None) -> pd.DataFrame:
        """Cosine between the forget gradients of the layers of ``tower`` (NaN where shapes differ)."""
        names = self.table.loc[self.table["tower"] == (tower or self.tower.value), "name"]
        return figures.layer_cosines(self.gradients.forget, names)

    def forget_vs_retain(self) -> pd.Series:
        """Signed ``cos(g_f, g_r)`` per layer; its absolute value is the alignment."""
        return figures.forget_retain_cosine(self.gradients.forget, self.gradients.retain, self.table["name"])

    def figure(self):
        return figures.gradient_similarity_figure(self.table, self.gradients, tower=self.tower.value)

    def update(self) -> None:
        self.plot.value = figure_png(self.figure(), dpi=self.dpi)


# ------------------------------------------------------------------------------------------------
# Layer atlas
# ------------------------------------------------------------------------------------------------
class AtlasExplorer(Explorer):
    """A :class:`slugkit.atlas.Atlas`, one concept or one layer at a time.

    "concept": that concept's row, as a layer heatmap of its importance (white dots: its Pareto layers);
    "layer": that layer's column, every concept's importance on it and the cosine between their forget
    gradients there. Drive it from code with ``explorer.mode.value``, ``.concept.value``, ``.layer.value``.
    """

    def __init__(self, atlas, concept: str | None = None, layer: str | None = None, mode: str = "concept",
                 dpi: float = 72):
        from . import atlas as atlas_figures

        self.atlas, self.dpi, self._figures = atlas, dpi, atlas_figures
        labels = [(f"{t} {figures.block_label(b)}.{k}", n) for n, t, b, k in
                  zip(atlas.layers["name"], atlas.layers["tower"], atlas.layers["block"], atlas.layers["kind"])]
        self.mode = W.ToggleButtons(options=["concept", "layer"], value=mode, description="show")
        self.concept = W.Dropdown(options=atlas.names, value=concept or atlas.names[0], description="concept")
        self.layer = W.Dropdown(options=labels, value=layer or labels[0][1], description="layer",
                                layout=W.Layout(width="360px"))
        self.plot = W.Image(format="png")
        self.info = W.HTML()
        self.widget = W.VBox([W.HTML("<b>Layer atlas</b>: pick a concept to see which layers hold it, or a layer "
                                     "to see which concepts it holds."),
                              W.HBox([self.mode, self.concept, self.layer]), self.plot, self.info])
        self.widget.add_class("slugkit-atlas")
        for w in (self.mode, self.concept, self.layer):
            w.observe(lambda change: self.update(), names="value")
        self.update()

    def figure(self):
        if self.mode.value == "concept":
            c = self.concept.value
            return figures.layer_heatmap(self.atlas.table(c), "importance",
                                         title=f"{c}: importance on every layer (white dot: its Pareto layers)")
        return self._figures.layer_column(self.atlas, self.layer.value)

    def text(self) -> str:
        """The numbers beside the figure: the concept's Pareto layers, or the concepts the layer matters most to."""
        if self.mode.value == "concept":
            c = self.concept.value
            t = self.atlas.table(c)
            rows = t[t["pareto"]][["name", "importance", "alignment"]]
            return (f"<p><b>{html.escape(c)}</b>: {len(rows)} Pareto layers</p>"
                    + rows.to_html(index=False, float_format=lambda x: f"{x:.3g}"))
        layer = self.layer.value
        top = self.atlas.importance[layer].nlargest(5)
        front = self.atlas.pareto[layer]
        items = "".join(f"<li>{html.escape(n)}: {v:.3g}{' (on its front)' if front[n] else ''}</li>"
                        for n, v in top.items())
        return f"<p><b>{html.escape(layer)}</b>: the 5 concepts it matters most to</p><ol>{items}</ol>"

    def update(self) -> None:
        self.plot.value = figure_png(self.figure(), dpi=self.dpi)
        self.info.value = self.text()

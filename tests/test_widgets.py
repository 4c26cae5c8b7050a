"""Explorers driven from code: their callbacks change the data behind the plots; figures hold the
expected artists; every explorer carries a static PNG next to its widget view."""
import base64

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from slugkit.gradients import Gradients
from slugkit.step_size_search import SearchResult, SearchStep
from slugkit.viz import figures, widgets


def odd_table():
    """Two towers, known and unknown kinds, blocks -1 (before the blocks) and 3 (after the last)."""
    rng = np.random.default_rng(1)
    rows = []
    for tower in ("vision", "text"):
        for block in range(3):
            for kind in ("attn_qkv", "attn_out", "mlp_fc", "mlp_proj"):
                rows.append((tower, block, kind))
        rows += [(tower, -1, "patch_embed" if tower == "vision" else "token_embed"), (tower, 3, "proj"),
                 (tower, 1, "norm")]
    table = pd.DataFrame([{"name": f"{t}.{b}.{k}", "tower": t, "block": b, "kind": k,
                           "importance": 10 ** rng.uniform(-3, 0), "alignment": rng.uniform(0.001, 0.3),
                           "grad_norm": rng.uniform(0.1, 1), "weight_norm": rng.uniform(1, 20)} for t, b, k in rows])
    table["pareto"] = False
    for t in ("vision", "text"):
        sub = table[table["tower"] == t]
        from slugkit.layer_identification import pareto_front

        table.loc[sub.index, "pareto"] = pareto_front(sub["importance"], sub["alignment"])
    return table


def test_heatmap_from_a_table_alone_tolerates_unknown_kinds_and_blocks():
    table = odd_table()
    hm = widgets.LayerHeatmap(table, chosen="text.2.mlp_fc")
    assert len(hm.buttons) == len(table)
    before = {n: b.style.button_color for n, b in hm.buttons.items()}
    values_before = hm.values()
    hm.metric.value = "alignment"
    after = {n: b.style.button_color for n, b in hm.buttons.items()}
    assert hm.values() == dict(zip(table["name"], table["alignment"]))
    assert hm.values() != values_before
    assert sum(before[n] != after[n] for n in before) > len(table) // 2
    assert hm.buttons["text.2.mlp_fc"].layout.border.startswith("3px solid red")
    pareto = table.loc[table["pareto"], "name"]
    assert all(hm.buttons[n].description.startswith("★") for n in pareto)
    row = hm.pick("vision.-1.patch_embed")
    assert row["kind"] == "patch_embed" and "patch_embed" in hm.info.value
    with pytest.raises(KeyError, match="not a layer"):
        hm.pick("nope")

    fig = figures.layer_heatmap(table, "importance", chosen="text.2.mlp_fc")
    panels = [ax for ax in fig.axes if ax.get_title().endswith("tower")]
    assert len(panels) == 2
    labels = [t.get_text() for t in panels[0].get_xticklabels()]
    assert labels[:4] == ["attn_qkv", "attn_out", "mlp_fc", "mlp_proj"] and {"norm", "patch_embed", "proj"} <= set(labels)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["pre", "0", "1", "2", "3"]
    assert panels[0].images[0].norm.__class__.__name__ == "LogNorm"
    n_dots = sum(len(c.get_offsets()) for ax in panels for c in ax.collections if str(c.get_gid()).startswith("pareto"))
    assert n_dots == int(table["pareto"].sum())
    assert any(p.get_gid() == "chosen" for p in panels[1].patches)


def test_pareto_figure_has_one_point_per_layer_and_marks_the_front():
    table = odd_table()
    fig = figures.pareto_figure(table, chosen="vision.0.mlp_fc")
    cols = {c.get_gid(): c for ax in fig.axes for c in ax.collections}
    for tower in ("vision", "text"):
        sub = table[table["tower"] == tower]
        assert len(cols[f"layers:{tower}"].get_offsets()) == len(sub)
        front = cols[f"front:{tower}"].get_offsets()
        assert len(front) == int(sub["pareto"].sum())
        want = sub[sub["pareto"]].sort_values("importance")[["importance", "alignment"]].to_numpy()
        assert np.allclose(np.asarray(front), want)
    assert "chosen" in cols


def fake_search(layer):
    trace = [SearchStep(0, 1.0, {"forget_top1": 0.6, "forget_top5": 1.0, "retain_top1": 0.9, "utility": 0.9}, False, False),
             SearchStep(1, 2.0, {"forget_top1": 0.0, "forget_top5": 0.4, "retain_top1": 0.8, "utility": 0.9}, True, True),
             SearchStep(2, 1.5, {"forget_top1": 0.0, "forget_top5": 0.6, "retain_top1": 0.85, "utility": 0.9}, True, True)]
    return SearchResult(layer, 1.0, 1.5, trace[2].metrics, trace[0].metrics, "ok", trace)


def test_pareto_explorer_shows_row_and_trace_of_the_chosen_layer():
    table = odd_table()
    searched = table.loc[table["pareto"], "name"].iloc[0]
    other = table.loc[~table["pareto"], "name"].iloc[0]
    ex = widgets.ParetoExplorer(table, searches=[fake_search(searched)], layer=searched)
    png_searched = ex.plot.value
    assert "search: status" in ex.info.value and "1.5" in ex.info.value
    assert len(ex.figure().axes) == 3  # two towers + the trace panel
    ex.layer.value = other
    assert ex.plot.value != png_searched
    assert "not searched" in ex.info.value and other in ex.info.value
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy():
    """The shipped toy CLIP with random gradients on three layers (cheap; the explorer only needs a direction)."""
    import slugkit
    from slugkit.layer_identification import layer_table

    clip = slugkit.load_clip("toy-clip")
    names = ["visual.transformer.resblocks.5.mlp.c_proj.weight", "visual.transformer.resblocks.3.attn.out_proj.weight",
             "transformer.resblocks.1.mlp.c_fc.weight"]
    g = torch.Generator().manual_seed(0)
    forget = {n: torch.randn(clip.parameter(n).shape, generator=g) for n in names}
    retain = {n: torch.randn(clip.parameter(n).shape, generator=g) for n in names}
    grads = Gradients(forget, retain)
    table = layer_table(clip, grads)
    return clip, grads, table


def test_step_size_slider_changes_the_data_behind_the_plot(toy):
    clip, grads, table = toy
    names = list(table["name"])
    vision = names[1]  # block 5 c_proj (table order: vision blocks ascending)
    ex = widgets.StepSizeExplorer(clip, gradients=grads, table=table, concept="Captain Zorp", layers=names,
                                  layer=vision, grid_points=3, slider_steps=16, n_others=120)
    assert ex.layer.value == vision and len(ex.strip_images) == 8
    assert ex.strip_truth[0] == "Captain Zorp" and "Captain Zorp" != ex.strip_truth[-1]
    n_points = len(ex.curve_frame())
    low = ex.slider.min  # the smallest λ leaves the model as it was
    ex.slider.value = 10 ** low
    assert ex.current["forget_top1"] > 0.9 and ex.strip_predictions[0] == "Captain Zorp"
    retain_low = ex.current["retain_top1"]
    png, strip, status = ex.plot.value, ex.strip.value, ex.status.value
    ex.slider.value = 10 ** ex.slider.max  # a huge random step breaks the layer
    assert len(ex.curve_frame()) >= n_points
    assert ex.current["retain_top1"] < retain_low - 0.2
    assert ex.plot.value != png and ex.strip.value != strip and ex.status.value != status
    assert ex.strip_predictions != ex.strip_truth
    # the reused upstream activations give the same numbers as a full forward pass
    from slugkit.eval.zeroshot import ConceptEvaluator
    from slugkit.step_size_search import apply_step

    lam = ex.current_lambda
    full = ConceptEvaluator(clip, ex.evaluator.world, "Captain Zorp")
    with apply_step(clip.parameter(vision), grads.forget[vision], lam):
        direct = full()
    for k in ("forget_top1", "forget_top5", "retain_top1", "utility"):
        assert ex.current[k] == pytest.approx(direct[k], abs=2e-3)
    # revisiting a λ is served from the cache
    calls = len(ex._cache)
    ex.slider.value = 10 ** low
    assert len(ex._cache) == calls
    # the text tower: switching layers moves the slider range to that layer's λ0
    text = names[-1]
    ex.layer.value = text
    assert ex.slider.min < np.log10(ex.lambda0(text)) < ex.slider.max
    assert ex.curve_frame()["lam"].between(10 ** ex.slider.min * 0.999, 10 ** ex.slider.max * 1.001).all()
    fig = ex.figure()
    assert any(line.get_gid() == "current" for line in fig.axes[0].get_lines())
    assert len(fig.axes) == 1 + 8  # curves + the picture strip


def test_gradient_similarity_matrix_and_forget_vs_retain(toy):
    clip, grads, table = toy
    gs = widgets.GradientSimilarity(gradients=grads, table=table)
    m = gs.matrix("vision")
    assert np.allclose(np.diag(m.to_numpy()), 1.0)
    assert np.isnan(m.iloc[0, 1])  # c_proj (192x768) vs out_proj (192x192): shapes differ
    fr = gs.forget_vs_retain()
    assert np.allclose(fr.abs().to_numpy(), table["alignment"].to_numpy(), atol=1e-6)
    png = gs.plot.value
    gs.tower.value = "text"
    assert gs.plot.value != png

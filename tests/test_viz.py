"""Static figures build from the objects the pipeline returns, with labelled axes."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from slugkit.data.minicanvas import MiniCanvas
from slugkit.viz import figures


def fake_table():
    rng = np.random.default_rng(0)
    rows = []
    for tower in ("vision", "text"):
        for block in range(3):
            for kind in ("attn_qkv", "attn_out", "mlp_fc", "mlp_proj"):
                rows.append({"name": f"{tower}.{block}.{kind}", "tower": tower, "block": block, "kind": kind,
                             "importance": rng.random(), "alignment": rng.random(), "pareto": rng.random() < 0.3})
    return pd.DataFrame(rows)


def test_sample_sheet_shows_captions():
    fig = figures.sample_sheet(MiniCanvas(n=10, seed=0, split="test"), n=10, cols=5)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 10 and len(titled) == 10


def test_layer_figures_have_one_panel_per_tower_and_labels():
    table = fake_table()
    fig = figures.layer_scatter(table, chosen="text.2.mlp_fc")
    assert [ax.get_title() for ax in fig.axes] == ["vision tower", "text tower"]
    assert "importance" in fig.axes[0].get_xlabel() and "alignment" in fig.axes[0].get_ylabel()
    fig = figures.layer_heatmap(table)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["vision tower", "text tower"]  # + a colour bar


def test_step_size_curve_marks_chosen_lambda():
    frame = pd.DataFrame({"step": [0, 1, 2], "lam": [0.1, 0.2, 0.15], "forget_top1": [0.5, 0.0, 0.0],
                          "retain_top1": [0.9, 0.7, 0.8], "utility": [0.9, 0.8, 0.85],
                          "best": [False, False, True]})
    fig = figures.step_size_curve(frame)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "λ" in ax.get_xlabel()
    assert any(len(line.get_xdata()) == 2 and np.allclose(line.get_xdata(), 0.15) for line in ax.get_lines())


def test_bench_recipes_table_counts_the_bar_per_recipe_from_the_bench_rows():
    from slugkit.viz.chat import bench_recipes_table

    def row(name, retain_after, vqa_after, layer="vision_model.encoder.layers.5.mlp.fc2.weight"):
        return {"concept": name, "layer": layer, "vlm_forget_rate_after": 0.0, "vlm_retain_acc_before": 1.0,
                "vlm_retain_acc_after": retain_after, "vlm_vqa_acc_before": 0.98, "vlm_vqa_acc_after": vqa_after,
                "unlearn_cpu_seconds": 30.0}

    bench = {"presets": {"a": {"rows": [row("X", 0.95, 0.97), row("Y", 0.85, 0.97)]},
                         "b": {"rows": [row("X", 0.90, 0.93, "vision_model.encoder.layers.5.mlp.fc1.weight")]}}}
    per_character, per_recipe = bench_recipes_table(bench, ["reference", "a", "b"])
    assert list(per_recipe.index) == ["a", "b"]  # a recipe the file lacks is left out
    assert per_recipe.loc["a", "retain drop <= 10"] == 1 and per_recipe.loc["a", "VQA drop <= 5"] == 2
    assert per_recipe.loc["b", "retain drop <= 10"] == 1 and per_recipe.loc["b", "VQA drop <= 5"] == 1
    assert per_character.loc["X", ("b", "layer")] == "5.mlp.fc1" and per_character.loc["Y", ("a", "retain %")] == 85.0
    assert per_character[("b", "retain %")].isna()["Y"]

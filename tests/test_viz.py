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

import math

import numpy as np
import pytest
import torch
from fakes import FakeAdapter, make_batches

from slugkit.gradients import Gradients, compute_gradients
from slugkit.layer_identification import (
    COLUMNS,
    alignment,
    importance,
    layer_table,
    pareto_front,
    select_layers,
)


@pytest.fixture(scope="module")
def adapter_and_grads():
    adapter = FakeAdapter()
    grads = compute_gradients(adapter, make_batches(2, 4), make_batches(2, 4, seed=2))
    return adapter, grads


# ----------------------------------------------------------------- metrics
def test_importance_hand_computed():
    g = torch.tensor([[3.0, 4.0]])  # norm 5
    theta = torch.tensor([[0.0, 10.0]])  # norm 10
    assert importance(g, theta) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="all-zero weight"):
        importance(g, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shape"):
        importance(g, torch.zeros(2, 1))


def test_alignment_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert alignment(a, torch.tensor([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx(1 / math.sqrt(2))
    assert alignment(a, -a) == pytest.approx(1.0)  # absolute value
    assert alignment(a, torch.tensor([[0.0, 2.0], [5.0, 0.0]])) == 0.0
    with pytest.raises(ValueError, match="all zero"):
        alignment(a, torch.zeros(2, 2))


# ----------------------------------------------------------------- Pareto front
def _brute_force(imp, ali):
    n = len(imp)
    return np.array([not any(imp[j] > imp[i] and ali[j] < ali[i] for j in range(n)) for i in range(n)])


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        if trial % 3 == 0:  # coarse grid: many ties and exact duplicates
            imp, ali = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        else:
            imp, ali = rng.random(n), rng.random(n)
            if trial % 3 == 1:
                dup = rng.integers(0, n, n // 2)
                imp[rng.integers(0, n, n // 2)] = imp[dup]
                ali[rng.integers(0, n, n // 2)] = ali[dup]
        np.testing.assert_array_equal(pareto_front(imp, ali), _brute_force(imp, ali), err_msg=f"trial {trial}")


def test_pareto_front_ties_do_not_dominate():
    # equal importance with lower alignment, or higher importance with equal alignment: not dominated
    assert pareto_front([1, 1, 2], [0.5, 0.1, 0.5]).tolist() == [True, True, True]
    assert pareto_front([2, 1], [0.1, 0.5]).tolist() == [True, False]
    assert pareto_front([1, 1], [0.3, 0.3]).tolist() == [True, True]
    assert pareto_front([], []).tolist() == []


def test_pareto_front_rejects_nan_and_length_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        pareto_front([1.0, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="values"):
        pareto_front([1.0], [0.1, 0.2])


# ----------------------------------------------------------------- table
def test_layer_table(adapter_and_grads):
    adapter, grads = adapter_and_grads
    table = layer_table(adapter, grads)
    assert list(table.columns) == COLUMNS
    assert len(table) == len(adapter.candidate_layers())
    assert list(table["tower"].unique()) == ["vision", "text"]
    for tower, sub in table.groupby("tower"):
        assert list(sub["block"]) == sorted(sub["block"])
        assert sub["pareto"].any()
        np.testing.assert_array_equal(sub["pareto"], pareto_front(sub["importance"], sub["alignment"]))
    row = table.iloc[3]
    theta, g_f, g_r = adapter.parameter(row["name"]), grads.forget[row["name"]], grads.retain[row["name"]]
    assert row["importance"] == pytest.approx(g_f.norm().item() / theta.norm().item(), rel=1e-5)
    assert row["alignment"] == pytest.approx(abs(torch.nn.functional.cosine_similarity(
        g_f.reshape(1, -1), g_r.reshape(1, -1)).item()), rel=1e-5)
    assert row["shape"] == tuple(theta.shape)


def test_layer_table_front_is_per_tower(adapter_and_grads):
    adapter, grads = adapter_and_grads
    table = layer_table(adapter, grads)
    text_only = layer_table(adapter, grads, include=r"^text\.")
    assert list(text_only["tower"].unique()) == ["text"]
    assert list(text_only["pareto"]) == list(table[table["tower"] == "text"]["pareto"])


def test_layer_table_include_exclude(adapter_and_grads):
    adapter, grads = adapter_and_grads
    fc = layer_table(adapter, grads, include="mlp_fc")
    assert set(fc["kind"]) == {"mlp_fc"} and len(fc) == 4
    no_attn = layer_table(adapter, grads, exclude=["attn_qkv", r"\.out\."])
    assert set(no_attn["kind"]) == {"mlp_fc", "mlp_proj"}
    with pytest.raises(ValueError, match="no candidate layer left"):
        layer_table(adapter, grads, include="attn_q")


def test_layer_table_errors(adapter_and_grads):
    adapter, grads = adapter_and_grads
    name = "vision.blocks.0.fc.weight"
    with pytest.raises(KeyError, match="not candidate layers"):
        layer_table(adapter, grads, layers=["embed.weight"])
    zero = Gradients({**grads.forget, name: torch.zeros_like(grads.forget[name])}, grads.retain)
    with pytest.raises(ValueError, match=r"vision\.blocks\.0\.fc\.weight.*all zero.*vision tower"):
        layer_table(adapter, zero)
    nan = grads.forget[name].clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"vision\.blocks\.0\.fc\.weight.*not finite"):
        layer_table(adapter, Gradients({**grads.forget, name: nan}, grads.retain))
    partial = Gradients({name: grads.forget[name]}, {name: grads.retain[name]})
    with pytest.raises(KeyError, match="no forget/retain gradients"):
        layer_table(adapter, partial, layers=[name, "text.blocks.0.fc.weight"])
    assert list(layer_table(adapter, partial)["name"]) == [name]


# ----------------------------------------------------------------- selection
def _toy_table():
    import pandas as pd

    rows = [  # name, tower, block, pareto
        ("v0", "vision", 0, True), ("v1", "vision", 1, False), ("v2", "vision", 1, True),
        ("t0", "text", 0, True), ("t1a", "text", 1, True), ("t1b", "text", 1, True), ("t2", "text", 2, False),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["name", "tower", "block", "pareto"])


def test_select_layers_policies():
    table = _toy_table()
    assert select_layers(table) == ["v0", "v2", "t0", "t1a", "t1b"]
    assert select_layers(table, "pareto", tower="text") == ["t0", "t1a", "t1b"]
    assert select_layers(table, "deepest") == ["t1b"]
    assert select_layers(table, "deepest", tower="vision") == ["v2"]
    assert select_layers(table, "t2") == ["t2"]
    assert select_layers(table, "deepest-first") == ["t1b", "t1a", "t0"]
    # text before vision (a text edit re-embeds only the texts), each tower deepest first, non-Pareto layers left out
    assert select_layers(table, "cheapest-first") == ["t1b", "t1a", "t0", "v2", "v0"]
    assert select_layers(table, "cheapest-first", tower="vision") == ["v2", "v0"]


def test_select_layers_errors():
    table = _toy_table()
    with pytest.raises(KeyError, match="layers include"):
        select_layers(table, "t9")
    with pytest.raises(ValueError, match="tower 'audio'"):
        select_layers(table, "pareto", tower="audio")
    table["pareto"] = table["tower"] == "vision"
    with pytest.raises(ValueError, match="no Pareto layer in the 'text' tower"):
        select_layers(table, "deepest")


def test_select_on_real_table(adapter_and_grads):
    adapter, grads = adapter_and_grads
    table = layer_table(adapter, grads)
    (deepest,) = select_layers(table, "deepest")
    row = table.set_index("name").loc[deepest]
    assert row["tower"] == "text" and row["pareto"]
    assert row["block"] == table[(table["tower"] == "text") & table["pareto"]]["block"].max()

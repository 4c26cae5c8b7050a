"""The shared evaluation on hand-made cases: MIA, UnlearnCanvas UA/IRA/CRA, concept sets, cost."""
import time

import numpy as np
import pytest
import torch

from fakes import FakeAdapter, make_batches
from slugkit.eval.metrics import (ConceptSetEvaluator, CostMeter, changed_bytes, mia, snapshot,
                                  unlearncanvas_metrics)
from slugkit.eval.zeroshot import ConceptEvaluator


def test_mia_is_chance_on_identical_distributions_and_perfect_on_separable_ones():
    rng = np.random.default_rng(0)
    same = mia(rng.normal(0.3, 0.05, 400), rng.normal(0.3, 0.05, 400))
    assert abs(same.mean - 0.5) < 0.06 and same.n_per_class == 400 and len(same.per_seed) == 5
    apart = mia(rng.normal(0.6, 0.02, 300), rng.normal(0.2, 0.02, 500))
    assert apart.mean > 0.99 and apart.std < 0.01 and apart.n_per_class == 300
    partly = mia(rng.normal(0.35, 0.05, 400), rng.normal(0.3, 0.05, 400))
    assert 0.6 < partly.mean < 0.8 and partly.std > 0


def test_mia_refuses_too_few_scores():
    with pytest.raises(ValueError, match="at least 5"):
        mia([0.1, 0.2], [0.3, 0.4, 0.5, 0.6, 0.7])


def test_unlearncanvas_counts_on_a_hand_made_case():
    # style is forgotten (class 1); 4 pictures show it, 4 show other styles
    labels = {"style": np.array([1, 1, 1, 1, 0, 0, 2, 2, -1]),
              "object": np.array([0, 1, 2, 0, 1, 2, 0, 1, -1]),
              "colour": np.array([3, 3, 3, 3, 3, 3, 3, 3, -1])}
    preds = {"style": np.array([1, 0, 2, 1, 0, 2, 2, 2, 0]),   # 2/4 no longer style 1; 3/4 others right
             "object": np.array([0, 0, 0, 0, 1, 2, 0, 0, 5]),  # on non-forgotten pictures: 3/4 right
             "colour": np.array([0, 0, 0, 0, 3, 3, 3, 0, 0])}  # on non-forgotten pictures: 3/4 right
    m = unlearncanvas_metrics(labels, preds, "style", 1)
    assert m == {"ua": 0.5, "ira": 0.75, "cra": 0.75}
    # forgetting two classes at once: a picture predicted as either still counts as not forgotten
    m2 = unlearncanvas_metrics(labels, preds, "style", [1, 2])
    assert m2["ua"] == pytest.approx(1 / 6) and m2["ira"] == 0.5  # style-0 pictures: 1 of 2 right
    with pytest.raises(ValueError, match="no picture"):
        unlearncanvas_metrics(labels, preds, "style", 4)


class _Adapter:
    """Stands in for a model: ConceptSetEvaluator.metrics only needs embeddings."""


def test_concept_set_evaluator_equals_concept_evaluator_for_one_concept_and_unites_several():
    from slugkit.data.minicanvas import MiniCanvas

    world = MiniCanvas(n=120, seed=3, split="test")
    g = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(len(world), 8, generator=g), dim=-1)
    prompts = {a: torch.nn.functional.normalize(torch.randn(k, 8, generator=g), dim=-1)
               for a, k in (("identity", 13), ("object", 10), ("style", 7), ("colour", 8))}
    one = ConceptEvaluator(_Adapter(), world, "Mira Quell").metrics(image_emb, prompts)
    assert ConceptSetEvaluator(_Adapter(), world, ["Mira Quell"]).metrics(image_emb, prompts) == one
    # make every picture of two characters point exactly at its own prompt: forget top-1 of the pair = 1
    from slugkit.data.minicanvas import CHARACTER_NAMES

    a, b = CHARACTER_NAMES.index("Mira Quell"), CHARACTER_NAMES.index("Rex Calloway")
    for k in (a, b):
        image_emb[world.identity == k] = prompts["identity"][k]
    both = ConceptSetEvaluator(_Adapter(), world, ["Mira Quell", "Rex Calloway"]).metrics(image_emb, prompts)
    assert both["forget_top1"] == 1.0 and both["forget_top5"] == 1.0
    with pytest.raises(ValueError, match="share one attribute"):
        ConceptSetEvaluator(_Adapter(), world, ["Mira Quell", "Stripes"])


def test_cost_meter_counts_passes_time_and_changed_bytes():
    adapter = FakeAdapter()
    before = snapshot(adapter.model)
    pixels, tokens = make_batches(1, 8)[0]
    with CostMeter(adapter) as meter:
        for _ in range(3):
            loss = (adapter.encode_image(pixels) * adapter.encode_text(tokens)).sum()
            loss.backward()
        big = np.ones(20 * 2**20 // 8)  # 20 MiB held inside the block for a moment
        time.sleep(0.05)
        del big
    cost = meter.cost
    assert cost.forward_images == 24 and cost.forward_texts == 24 and cost.backward_passes == 3
    assert cost.seconds > 0 and cost.peak_rss_mb > 0 and cost.rss_increase_mb >= 15
    assert "encode_image" not in adapter.__dict__  # the wrappers are gone
    assert changed_bytes(before, adapter.model) == 0
    with torch.no_grad():
        adapter.model.vision.head.weight[0, :3] += 1.0
    assert changed_bytes(before, adapter.model) == 3 * 4

"""Several concepts at once, the paper's way: one layer per concept, step sizes searched with the others'
updates applied, one composed patch."""
import json

import pytest
import torch

from slugkit.fingerprint import model_fingerprint
from slugkit.models.loading import load_clip
from slugkit.data.pairs import InMemoryPairs
from slugkit.multi import REPAIR_STEPS, added, assign_layers, forget_key, pairs_naming_none, repair_direction, unlearn_many

from fakes import FakeAdapter

PAIR = ["Captain Zorp", "Mira Quell"]


def test_assign_layers_gives_distinct_layers_where_the_fronts_allow():
    options = {"A": [("l1", 0.9), ("l2", 0.8)], "B": [("l1", 0.95)], "C": [("l1", 0.7), ("l2", 0.99), ("l3", 0.5)]}
    # B has one option and chooses first (l1); A then takes l2, its best free one; C takes l3, the only free one
    assert assign_layers(options) == {"A": "l2", "B": "l1", "C": "l3"}
    # no free layer left: the concept shares its best one; a concept without options gets none
    assert assign_layers({"A": [("l1", 0.5)], "B": [("l1", 0.9)], "C": []}) == {"A": "l1", "B": "l1"}


def test_assign_layers_measures_the_edits_together():
    options = {"A": [("l1", 0.9), ("l2", 0.8), ("l3", 0.1)], "B": [("l4", 0.9), ("l1", 0.5)]}
    seen = []

    def evaluate(assignment):  # A on l1 breaks a target; A on l2 costs more than on l3; B on l1 is best of all
        seen.append(dict(assignment))
        score = {"l1": 0.99, "l2": 0.5, "l3": 0.7}.get(assignment.get("A"), 0.6) + (assignment.get("B") == "l1")
        return assignment.get("A") != "l1", score

    # B (fewer options) chooses first: measured alone, l1 beats l4; A then tries its free layers l2 and l3
    assert assign_layers(options, evaluate) == {"A": "l3", "B": "l1"}
    assert {"B": "l1", "A": "l2"} in seen and {"B": "l1", "A": "l3"} in seen
    assert len(seen) == len({frozenset(a.items()) for a in seen})  # each assignment measured once
    # with one try each, nothing is measured against anything: A keeps its best solo layer, B the free one
    assert assign_layers(options, evaluate, max_tries=1) == {"A": "l1", "B": "l4"}


def test_repair_direction_descends_retain_off_every_forget_gradient():
    torch.manual_seed(0)
    retain, f1, f2, weight = (torch.randn(6, 5) for _ in range(4))
    d = repair_direction(retain, [f1, f2, f1 + f2], weight)  # a dependent gradient adds nothing to the span
    for f in (f1, f2):
        assert abs(float((d * f).sum())) < 1e-4 * float(d.norm() * f.norm())  # does not walk back the forgetting
    assert float((d * retain).sum()) < 0  # a step along it lowers the retain loss
    torch.testing.assert_close(d.norm(), weight.norm())  # mu = 1 moves the layer by its own norm
    # without the projection the step would be -retain (scaled): with no forget gradient it is exactly that
    torch.testing.assert_close(repair_direction(retain, [], weight), -retain * weight.norm() / retain.norm())
    assert not repair_direction(2 * f1 - f2, [f1, f2], weight).any()  # nothing left once projected: no step


def test_pairs_naming_none_drops_every_concept():
    pairs = InMemoryPairs(torch.zeros(4, 8, 8, 3, dtype=torch.uint8).numpy(),
                           ["Captain Zorp waves", "a red star", "Mira Quell and a cat", "captain zorp, blue"])
    assert pairs_naming_none(pairs, PAIR).captions() == ["a red star"]
    with pytest.raises(ValueError, match="no data"):
        pairs_naming_none(pairs.subset([0, 2]), PAIR)


def test_added_restores_the_weights_bit_exactly():
    adapter = FakeAdapter()
    name = adapter.candidate_layers()[0].name
    before = adapter.parameter(name).detach().clone()
    with added(adapter, {name: torch.full_like(before, 0.1)}):
        assert torch.allclose(adapter.parameter(name), before + 0.1)
    assert torch.equal(adapter.parameter(name), before)


@pytest.fixture(scope="module")
def clip():
    return load_clip("toy-clip")


@pytest.fixture(scope="module")
def two(clip):
    # the vision tower's attention and MLP outputs: a small front per concept, enough to keep the test short
    return unlearn_many(clip, PAIR, tower="vision", include=["attn_out", "mlp_proj"], n_retain=256, progress=False)


def test_two_characters_one_layer_each_and_one_patch(two, clip):
    assert two.status == "ok", two.summary()
    layers = [two.per_concept[n]["layer"] for n in PAIR]
    assert layers == two.layer and all(layers)
    options = [set(two.per_concept[n]["layers_met_alone"]) for n in PAIR]
    if options[0] | options[1] != options[0] & options[1] or len(options[0]) > 1:
        assert layers[0] != layers[1]  # distinct layers whenever the fronts allow it
    # the patch is the sum of lambda_c * g_f,c, each concept's gradient taken on the original model, plus the
    # retain repair: a step off every concept's forget gradient on the layer
    expected = {}
    for n in PAIR:
        d = two.per_concept[n]["step_size"] * unlearn_grad(two, n)
        expected[two.per_concept[n]["layer"]] = expected.get(two.per_concept[n]["layer"], 0) + d
    assert set(two.patch.deltas) == set(expected)
    assert two.repair["layers"] == sorted(expected) and two.repair["step"] in (0.0, *REPAIR_STEPS)
    for layer, d in expected.items():
        fix = two.patch.deltas[layer] - d.float()
        if two.repair["step"] == 0:
            torch.testing.assert_close(fix, torch.zeros_like(fix))
        for n in PAIR:
            g = two.concept_gradients[n].forget[layer]
            assert abs(float((fix * g).sum())) <= 1e-3 * float(fix.norm() * g.norm()) + 1e-6
    assert two.patch.base_fingerprint == model_fingerprint(clip.model)  # the run left the model unchanged
    # each step size was searched again with the other concept's update in place: there, the baseline of the
    # search already differs from the unedited model's
    assert len(two.joint_searches) >= 2
    unedited = two.searches[0].baseline
    assert all(s.baseline != unedited for s in two.joint_searches)
    for n in PAIR:
        assert two.per_concept[n]["forget_top5_before"] >= 0.9
        assert two.per_concept[n]["forget_top5_after"] <= 0.05


def test_the_retain_repair_keeps_every_target_and_never_scores_worse(two):
    tried, unrepaired = two.repair["tried"], two.repair["unrepaired"]
    bases = ("original", "original+composed")  # off the forget gradients of the original model, and of both
    assert [(t["projected_off"], t["step"]) for t in tried] == [(b, mu) for b in bases for mu in REPAIR_STEPS]
    assert two.repair["retain_pairs"] > 0 and (two.repair["projected_off"] in bases) == (two.repair["step"] > 0)

    def rank(m):  # every forget target reached, then the mean of retain and utility
        return all(m[forget_key("forget_top5", n)] <= 0 for n in PAIR), (m["retain_top1"] + m["utility"]) / 2

    assert all(t["targets_reached"] == rank(t["metrics"])[0] for t in tried)
    kept = [t for t in tried if (t["projected_off"], t["step"]) == (two.repair["projected_off"], two.repair["step"])]
    if kept:  # the step kept reaches every target, beats the unrepaired patch and is the best such step
        assert kept[0]["targets_reached"] and rank(kept[0]["metrics"]) > rank(unrepaired)
        assert rank(kept[0]["metrics"]) == max(rank(t["metrics"]) for t in tried if t["targets_reached"])
    else:  # no step beat the unrepaired patch while reaching every target
        assert all(not t["targets_reached"] or rank(t["metrics"]) <= rank(unrepaired) for t in tried)


def unlearn_grad(result, name):
    return result.concept_gradients[name].forget[result.per_concept[name]["layer"]]


def test_report_keeps_single_concept_keys_and_adds_per_concept(two, tmp_path):
    two.save(tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for key in ("model", "concept", "layer", "step_size", "status", "forget_acc_before", "forget_acc_after",
                "forget_top5_after", "retain_acc_before", "retain_acc_after", "utility_before", "utility_after",
                "seconds", "peak_rss_mb", "patch_bytes", "model_bytes", "search"):
        assert key in report
    assert report["concept"] == "Captain Zorp + Mira Quell" and report["concepts"] == PAIR
    for n in PAIR:
        p = report["per_concept"][n]
        assert {"forget_top1_after", "forget_top5_after", "layer", "step_size"} <= set(p)
        assert p["forget_top5_after"] == two.after[forget_key("forget_top5", n)]
    each = [report["per_concept"][n]["forget_top5_after"] for n in PAIR]
    assert min(each) <= report["forget_top5_after"] <= max(each)  # the whole set: a mean over its pictures
    assert (tmp_path / "run" / "patch.safetensors").stat().st_size > 0


def test_several_concepts_must_share_a_kind_and_a_toy_model(clip):
    with pytest.raises(ValueError, match="share one attribute"):
        unlearn_many(clip, ["Captain Zorp", "star"], progress=False)
    with pytest.raises(ValueError, match="toy world"):
        unlearn_many(FakeAdapter(), PAIR, progress=False)

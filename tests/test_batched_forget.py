"""The step-size search's batched doubling phase on the toy CLIP: ``ConceptEvaluator.forget_metrics_many`` measures
several weights of one layer in one pass, with the metrics of measuring them one at a time."""
import pytest
import torch

from slugkit.data.minicanvas import MiniCanvas
from slugkit.eval.zeroshot import ConceptEvaluator
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn
from slugkit.step_size_search import _set, _stepped

TEXT = ("transformer.resblocks.1.mlp.c_fc.weight", "text", 1)
VISION = ("visual.transformer.resblocks.4.mlp.c_proj.weight", "vision", 4)
# a random direction of the layer's norm (seed) and step sizes along it that take Bram Oakes from remembered to
# forgotten on the 400 pictures below
STEPS = {"text": (0, [0.0, 6.0, 8.0, 12.0, 16.0, 32.0]), "vision": (2, [0.0, 12.0, 16.0, 32.0, 48.0])}


@pytest.fixture(scope="module")
def clip():
    return load_clip("toy-clip")


@pytest.fixture(scope="module")
def world():
    return MiniCanvas(n=400, seed=0, split="val")


def _direction(param, seed):
    g = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed))
    return g * (param.detach().norm() / g.norm())


@pytest.mark.parametrize("layer", [TEXT, VISION], ids=["text", "vision"])
def test_batched_forget_metrics_equal_the_sequential_ones(clip, world, layer):
    name, tower, block = layer
    ev = ConceptEvaluator(clip, world, "Bram Oakes")
    ev.prepare(tower, block)
    ev.cache()
    assert ev.batches(name, tower, block)
    param = clip.parameter(name)
    seed, lams = STEPS[tower]
    original, g = param.detach().clone(), _direction(param, seed)
    weights = torch.stack([_stepped(original, g, lam) for lam in lams])
    many = ev.forget_metrics_many(name, weights, tower, block)
    assert torch.equal(param.detach(), original)  # the weights given replace the parameter; it is not touched
    one_by_one = []
    try:
        for lam in lams:
            _set(param, original, g, lam)
            one_by_one.append(ev.forget_metrics(tower, block))
    finally:
        with torch.no_grad():
            param.copy_(original)
    assert many == one_by_one
    assert many[0] == ev.forget_metrics(tower, block) and many[0]["forget_top1"] == 1.0  # unedited: remembered
    assert len({(m["forget_top1"], m["forget_top5"]) for m in many}) >= 3  # the edits change it: the test can fail
    assert ev.forget_metrics_many(name, weights.flip(0), tower, block) == many[::-1]  # in the order given


def test_batches_only_where_it_can(clip, world):
    ev = ConceptEvaluator(clip, world, "Bram Oakes")
    name, tower, block = VISION
    assert not ev.batches(name, tower, block)  # nothing cached or prepared yet
    ev.prepare(tower, block)
    ev.cache()
    assert ev.batches(name, tower, block)
    assert not ev.batches("visual.transformer.resblocks.5.mlp.c_proj.weight", tower, block)  # not in block 4
    assert not ev.batches("visual.transformer.resblocks.5.mlp.c_proj.weight", tower, 5)  # block 5 not prepared
    assert not ev.batches("visual.transformer.resblocks.4.attn.in_proj_weight", tower, block)  # measured slower
    assert ev.batches(TEXT[0], "text", TEXT[2]) and not ev.batches(TEXT[0], "text", 2)  # text: after cache()
    assert not ev.batches("transformer.resblocks.1.attn.in_proj_weight", "text", 1)
    weights = clip.parameter(name).detach()[None]
    with pytest.raises(ValueError, match="cannot measure several weights of .* at once"):
        ev.forget_metrics_many("visual.transformer.resblocks.5.mlp.c_proj.weight", weights, tower, block)


def test_unlearn_with_a_batched_search_records_the_same_steps_and_patch(clip, tmp_path, monkeypatch):
    batched = []
    real = ConceptEvaluator.forget_metrics_many
    monkeypatch.setattr(ConceptEvaluator, "forget_metrics_many",
                        lambda self, name, weights, *a: batched.append((name, len(weights))) or real(self, name,
                                                                                                     weights, *a))
    layers = ["transformer.resblocks.0.attn.out_proj.weight", "visual.transformer.resblocks.5.mlp.c_proj.weight"]
    one = unlearn(clip, "Bram Oakes", layers=layers, store=tmp_path, progress=False)
    assert batched == []  # the default measures one step size at a time
    four = unlearn(clip, "Bram Oakes", layers=layers, store=tmp_path, search_batch=4, progress=False)
    assert {name for name, _ in batched} == set(layers) and all(1 <= k <= 4 for _, k in batched)
    assert (four.layer, four.step_size, four.status) == (one.layer, one.step_size, one.status) and one.status == "ok"
    for a, b in zip(one.searches, four.searches):
        assert [(s.lam, s.metrics, s.reached, s.met) for s in a.trace] == \
            [(s.lam, s.metrics, s.reached, s.met) for s in b.trace]
        assert (a.best_lambda, a.unused_lambdas) == (b.best_lambda, []) and all(x > b.best_lambda
                                                                                for x in b.unused_lambdas)
    assert four.after == one.after

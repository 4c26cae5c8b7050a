"""Faithful to the paper by default (issue 6): the top-5 stop rule, the authors' candidate set, a retain
gradient that does not depend on batching, and the reference preset. Fake adapters unless a real one is needed."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fakes import FakeAdapter, tiny_hf, tiny_openclip
from slugkit.adapters.base import LAYER_KINDS
from slugkit.data.pairs import InMemoryPairs, pair_loader
from slugkit.gradients import accumulate_gradients, compute_gradients
from slugkit.layer_identification import candidate_infos, layer_table
from slugkit.slug import PRESETS, resolve_preset, unlearn
from slugkit.step_size_search import Target, non_monotone_steps, search_step_size
from slugkit.tasks import Evaluator, Task


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(n)]
    captions = ["".join(rng.choice(list("abcdefgh"), 6)) for _ in range(n)]
    return InMemoryPairs(images, captions, origin=f"random pairs seed {seed}")


# ------------------------------------------------------------------ 1. stop rule


def test_resolve_preset_defaults_to_top5_and_reference_fixes_its_choices():
    s = resolve_preset()
    assert s["target"] == Target() and s["target"].describe() == "forget_top5 <= 0"
    assert (s["candidates"], s["max_evals"], s["rtol"]) == ("default", 10, 0.05)
    top1 = resolve_preset(target=Target("forget_top1"), rtol=0.2)
    assert top1["target"].forget_metric == "forget_top1" and top1["rtol"] == 0.2
    ref = resolve_preset("reference")
    assert (ref["candidates"], ref["target"].describe(), ref["max_evals"], ref["rtol"]) == \
        ("reference", "forget_top5 <= 0", 10, 0.0)
    assert resolve_preset("reference", candidates="reference", max_evals=10)["rtol"] == 0.0
    for clash in ({"target": Target("forget_top1")}, {"candidates": "default"}, {"max_evals": 4}, {"rtol": 0.05}):
        with pytest.raises(ValueError, match="preset 'reference' fixes"):
            resolve_preset("reference", **clash)
    with pytest.raises(ValueError, match="preset must be one of"):
        resolve_preset("authors")
    assert set(PRESETS) == {"slugkit", "reference"}


# ------------------------------------------------------------------ 2. candidate sets


def _reference_rule(model):
    """The authors' rule, written independently: every parameter except biases, logit_scale,
    positional and token embeddings."""
    skip = ("bias", "logit_scale", "positional_embedding", "position_embedding", "token_embedding")
    return {n for n, _ in model.named_parameters() if not any(s in n for s in skip)}


@pytest.mark.parametrize("family", ["openclip", "hf"])
def test_reference_candidates_follow_the_authors_rule(family):
    if family == "openclip":
        from slugkit.adapters.openclip import OpenCLIPAdapter

        adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny")
        stem, head = "visual.conv1.weight", ["visual.proj", "text_projection"]
    else:
        from slugkit.adapters.hf_clip import HFCLIPAdapter

        adapter = HFCLIPAdapter(tiny_hf(), tokenizer=None)
        stem, head = "vision_model.embeddings.patch_embedding.weight", ["visual_projection.weight",
                                                                         "text_projection.weight"]
    ref = adapter.candidate_layers("reference")
    default = adapter.candidate_layers()
    assert {i.name for i in ref} == _reference_rule(adapter.model)
    assert {i.name for i in default} < {i.name for i in ref}
    assert all(i.kind in LAYER_KINDS for i in ref)
    by_name = {i.name: i for i in ref}
    assert (by_name[stem].block, by_name[stem].kind) == (-1, "patch_embed")
    for name in head:
        assert by_name[name].kind == "proj" and by_name[name].block == 2  # after the 2 blocks of the tiny model
    assert {"norm", "class_embed"} <= {i.kind for i in ref}
    for tower in ("vision", "text"):  # towers, then blocks in forward order
        blocks = [i.block for i in ref if i.tower == tower]
        assert blocks == sorted(blocks)
    with pytest.raises(ValueError, match="candidates must be one of"):
        adapter.candidate_layers("all")
    with pytest.raises(ValueError, match="neither tower"):
        adapter.layer_info("logit_scale")


@pytest.mark.parametrize("family", ["openclip", "hf"])
def test_vision_resume_is_exact_for_every_reference_layer(family):
    """Every vision layer of the reference set, edited after caching what enters its block, gives the
    embeddings of a full recomputation; stem layers (block -1) are recomputed from pixels."""
    from slugkit.data.minicanvas import MiniCanvas
    from slugkit.eval.zeroshot import ConceptEvaluator, embed_images

    if family == "openclip":
        from slugkit.adapters.openclip import OpenCLIPAdapter

        adapter = OpenCLIPAdapter.from_model(tiny_openclip(), arch=None, name="tiny")
    else:
        from slugkit.adapters.hf_clip import HFCLIPAdapter

        adapter = HFCLIPAdapter(tiny_hf(), tokenizer=None)
    from slugkit.data.minicanvas import ATTRIBUTES

    world = MiniCanvas(n=24, seed=0, split="test")
    concept = next(n for n in ATTRIBUTES["identity"] if len(world.indices_of(n)))
    layers = [i for i in adapter.candidate_layers("reference") if i.tower == "vision"]
    assert {-1, 2} <= {i.block for i in layers}
    g = torch.Generator().manual_seed(0)
    for info in layers:
        ev = ConceptEvaluator(adapter, world, concept)
        ev.prepare("vision", info.block)  # on the unedited model
        param = adapter.parameter(info.name)
        original = param.detach().clone()
        with torch.no_grad():
            param.add_(0.5 * torch.randn(param.shape, generator=g) * (original.abs().mean() + 0.1))
        try:
            resumed = ev._embed_images()
            full = embed_images(adapter, world.images)
        finally:
            with torch.no_grad():
                param.copy_(original)
        assert torch.allclose(resumed, full, atol=1e-5), info.name
        assert (ev._block is None) == (info.block < 0), info.name


def test_include_adds_a_parameter_outside_the_candidate_set():
    adapter = FakeAdapter()
    assert "vision.head.weight" not in {i.name for i in adapter.candidate_layers()}
    only = candidate_infos(adapter, include=["vision.head.weight"])
    assert [(i.name, i.block, i.kind) for i in only] == [("vision.head.weight", 2, "proj")]
    norms = candidate_infos(adapter, include="norm")
    assert len(norms) == 4 and {i.kind for i in norms} == {"norm"}
    mixed = candidate_infos(adapter, include=["mlp_fc", "text.head.weight"])
    assert [i.name for i in mixed][-1] == "text.head.weight" and len(mixed) == 5
    with pytest.raises(ValueError, match="neither tower"):
        candidate_infos(adapter, include=["logit_scale"])
    # the added layer goes through stage 1 and 2 like any candidate
    batches = [(p, t) for p, t in _fake_batches(3)]
    grads = compute_gradients(adapter, batches, batches, layers=[i.name for i in mixed], progress=False)
    table = layer_table(adapter, grads, infos=mixed)
    assert "text.head.weight" in set(table["name"]) and table["importance"].gt(0).all()


def _fake_batches(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (size, 4, 4, 3), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2).float() / 255,
             torch.randint(0, 32, (size, 6), generator=g)) for _ in range(n)]


# ------------------------------------------------------------------ 3. retain gradient


def test_equal_batches_drop_the_remainder():
    adapter = FakeAdapter()
    sizes = [len(t) for _, t in pair_loader(_pairs(70), adapter, batch_size=16, equal_batches=True)]
    assert sizes == [16] * 4
    assert [len(t) for _, t in pair_loader(_pairs(70), adapter, batch_size=16)] == [16] * 4 + [6]
    assert [len(t) for _, t in pair_loader(_pairs(5), adapter, batch_size=16, equal_batches=True)] == [5]


def test_retain_gradient_does_not_depend_on_how_the_last_batch_falls():
    adapter = FakeAdapter()
    layers = [i.name for i in adapter.candidate_layers()]
    pairs = _pairs(256 + 5)

    def g_r(indices, equal):
        loader = pair_loader(pairs.subset(indices), adapter, batch_size=16, equal_batches=equal)
        with_warnings = pytest.warns(UserWarning, match="unequal sizes") if not equal and len(indices) % 16 else None
        if with_warnings:
            with with_warnings:
                grads = compute_gradients(adapter, _forget(adapter), loader, layers=layers, progress=False).retain
        else:
            grads = accumulate_gradients(adapter, loader, "retain", layers, progress=False)
        return torch.cat([v.flatten() for v in grads.values()])

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    perm = lambda n: list(np.random.default_rng(0).permutation(n))  # noqa: E731
    # the old scheme: a retain set as small as a forget set, split 16 + 5; reordering the same pairs moves g_r a lot
    old = rel(g_r(perm(21), False), g_r(range(21), False))
    # the new one: many equal batches of the same size; reordering the same pairs moves it little
    new = rel(g_r(perm(256), True), g_r(range(256), True))
    assert old > 0.5 and new < 0.3 and new < old / 3, (old, new)
    # and a remainder is dropped, not given the weight of a full batch
    assert torch.equal(g_r(range(256 + 5), True), g_r(range(256), True))


def _forget(adapter):
    return pair_loader(_pairs(8, seed=9), adapter, batch_size=8)


def test_toy_retain_set_is_large_seeded_and_spans_the_other_concepts():
    from slugkit.data.minicanvas import ATTRIBUTES, cached_split
    from slugkit.data.pairs import forget_retain_sets, mentions

    train = cached_split(2000, 0, "train")
    forget, retain = forget_retain_sets(train, "Captain Zorp", seed=0)
    assert len(retain) == 1024 and len(retain) >= 10 * len(forget)
    assert not any(mentions(c, "Captain Zorp") for c in retain.captions())
    assert retain.indices == forget_retain_sets(train, "Captain Zorp", seed=0)[1].indices
    assert retain.indices != forget_retain_sets(train, "Captain Zorp", seed=1)[1].indices
    captions = " ".join(retain.captions())
    others = [n for n in ATTRIBUTES["identity"] if n != "Captain Zorp"]
    assert all(mentions(captions, n) for n in others)


# ------------------------------------------------------------------ 4. reference preset, honest search


def test_non_monotone_forget_accuracy_returns_a_met_lambda_and_records_the_last():
    """Forget top-5 rises with lambda below 2, is 0 on [2, 3) only: bisection brackets [1, 2] and its last
    lambda misses the target."""
    param = torch.nn.Parameter(torch.ones(3, 3))
    grad = torch.ones(3, 3)

    def evaluate():
        lam = (param.detach() - 1).mean().item()
        forget = 0.05 + 0.1 * lam if lam < 2 - 1e-6 else (0.0 if lam < 3 else 0.4)
        return {"forget_top5": forget, "retain_top1": 1 - lam / 10, "utility": 1.0}

    res = search_step_size(param, grad, evaluate, lambda0=1.0, rtol=0.0, max_evals=10)
    assert len(res.trace) == 10  # rtol=0: no early stop
    assert res.best_lambda == pytest.approx(2.0) and res.status == "ok"
    assert res.last_met is False and res.last_lambda == res.trace[-1].lam != res.best_lambda
    d = res.to_dict()
    assert d["last_lambda"] == res.last_lambda and d["last_met"] is False
    bumps = non_monotone_steps(res)  # e.g. 0.15 at lambda 1 but 0.2 at lambda 1.5
    assert len(bumps) and (bumps["lam_small"] < bumps["lam_large"]).all()
    assert (bumps["forget_top5_small"] < bumps["forget_top5_large"]).all()
    assert ((bumps["lam_small"] == 1.0) & (bumps["lam_large"] == 1.5)).any()
    assert not (bumps["lam_small"] == res.best_lambda).any()  # nothing larger than the met lambda was tried


class CosineEvaluator(Evaluator):
    """A cheap evaluator on a fake model: forget 'accuracy' falls as the forget pairs' cosine falls."""

    def __init__(self, adapter, forget, retain):
        self.adapter = adapter
        self.forget = next(iter(pair_loader(forget, adapter, batch_size=len(forget))))
        self.retain = next(iter(pair_loader(retain, adapter, batch_size=len(retain))))
        self.c0 = None

    @torch.no_grad()
    def _cos(self, batch):
        img, txt = self.adapter.encode_image(batch[0]), self.adapter.encode_text(batch[1])
        return F.cosine_similarity(img, txt).mean().item()

    def cache(self):
        self.c0 = self._cos(self.forget)
        return self

    def __call__(self, edited_tower=None, block=None):
        c, r = self._cos(self.forget), self._cos(self.retain)
        return {"forget_top1": float(c > self.c0 - 0.02), "forget_top5": float(c > self.c0 - 0.05),
                "retain_top1": (1 + r) / 2, "utility": (1 + r) / 2}


def test_reference_preset_end_to_end_on_a_fake_model(tmp_path):
    import json

    adapter = FakeAdapter()
    forget, retain = _pairs(16, seed=3), _pairs(64, seed=4)
    ev = CosineEvaluator(adapter, forget, retain)
    task = Task("fake concept", forget, retain, ev, ev)
    r = unlearn(adapter, "fake concept", task=task, preset="reference", batch_size=16, progress=False)
    report = json.loads(json.dumps(r.report()))
    assert (report["preset"], report["candidates"], report["target"]) == ("reference", "reference", "forget_top5 <= 0")
    assert {"norm", "proj", "patch_embed"} <= set(r.table["kind"]) and "bias" not in set(r.table["kind"])
    assert report["retain_pairs"] == 64 and report["retain_batches"] == 4
    assert len(r.searches) == r.table["pareto"].sum()
    for s, entry in zip(r.searches, report["search"]):
        assert len(s.trace) == 10  # exactly 10 evaluations, no early stop
        assert entry["last_lambda"] == s.trace[-1].lam and entry["last_met"] == s.trace[-1].met
        if s.best_lambda is not None:
            assert next(t for t in s.trace if t.lam == s.best_lambda).met
    if r.status == "ok":
        chosen = r.chosen_search
        assert report["step_size"] == chosen.best_lambda and report["last_lambda"] == chosen.last_lambda
        assert report["last_met"] == chosen.last_met
    # the default preset searches the default candidates with the early stop
    d = unlearn(adapter, "fake concept", task=task, batch_size=16, progress=False)
    assert set(d.table["kind"]) <= {"attn_qkv", "attn_out", "mlp_fc", "mlp_proj"} and d.candidates == "default"
    assert d.target == "forget_top5 <= 0"

import json

import pytest
import torch
from fakes import FakeAdapter, make_batches
from safetensors import safe_open
from safetensors.torch import save_file

from slugkit.fingerprint import model_fingerprint
from slugkit.gradients import compute_gradients
from slugkit.patch import Patch, PatchMismatchError, applied_patches, compose
from slugkit.step_size_search import apply_step

L1, L2 = "text.blocks.1.qkv.weight", "vision.blocks.0.fc.weight"


@pytest.fixture(scope="module")
def grads():
    adapter = FakeAdapter()
    return compute_gradients(adapter, make_batches(2, 4), make_batches(2, 4, seed=2), layers=[L1, L2])


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(model, state):
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), state[n]), n


def _patch(adapter, grads, layer=L1, lam=0.7, concept="Captain Zorp"):
    return Patch.from_step(adapter.name, concept, layer, lam, grads.forget[layer],
                           model_fingerprint(adapter.model), {"forget_top1": 0.0, "utility": 0.61})  # fmt: skip


def test_from_step_fields(grads):
    adapter = FakeAdapter()
    p = _patch(adapter, grads)
    assert p.layers == [L1] and p.step_sizes == {L1: 0.7} and p.concept == "Captain Zorp"
    assert torch.equal(p.deltas[L1], 0.7 * grads.forget[L1])
    assert p.nbytes == grads.forget[L1].numel() * 4
    assert "Captain Zorp" in repr(p) and p.created_by == "slugkit"


def test_save_load_roundtrip(tmp_path, grads):
    adapter = FakeAdapter()
    p = _patch(adapter, grads)
    path = p.save(tmp_path / "zorp.safetensors")
    assert path.stat().st_size < p.nbytes + 4096
    back = Patch.load(path)
    assert back.meta() == p.meta() and back.digest() == p.digest()
    assert torch.equal(back.deltas[L1], p.deltas[L1]) and back.deltas[L1].dtype == torch.float32
    with safe_open(str(path), framework="pt") as f:  # metadata readable by any safetensors reader
        meta = json.loads(f.metadata()["meta"])
    assert meta["concept"] == "Captain Zorp" and meta["metrics"]["utility"] == 0.61


def test_load_rejects_bad_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="cannot read"):
        Patch.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a slugkit patch"):
        Patch.load(other)
    broken = tmp_path / "broken.safetensors"
    save_file({"w": torch.zeros(2)}, str(broken), metadata={"format": "slugkit.patch", "version": "1", "meta": "{"})
    with pytest.raises(ValueError, match="corrupt"):
        Patch.load(broken)
    with pytest.raises(ValueError, match="cannot read"):
        Patch.load(tmp_path / "missing.safetensors")


def test_apply_then_revert_is_bit_exact(grads):
    adapter = FakeAdapter()
    model = adapter.model
    before = _state(model)
    p = _patch(adapter, grads)
    p.apply(model)
    assert not torch.equal(model.get_parameter(L1).detach(), before[L1])
    assert applied_patches(model) == ["Captain Zorp"]
    p.revert(model)
    _assert_same(model, before)
    assert applied_patches(model) == []
    assert model_fingerprint(model) == p.base_fingerprint


def test_apply_matches_search_step(grads):
    adapter = FakeAdapter()
    param = adapter.parameter(L1)
    with apply_step(param, grads.forget[L1], 0.7):
        edited = param.detach().clone()
    _patch(adapter, grads, lam=0.7).apply(adapter.model)
    assert torch.equal(param.detach(), edited)


def test_apply_and_revert_half_precision(grads):
    adapter = FakeAdapter(dtype=torch.float16)
    before = _state(adapter.model)
    p = _patch(adapter, grads)
    p.apply(adapter.model)
    assert adapter.parameter(L1).dtype == torch.float16
    p.revert(adapter.model)
    _assert_same(adapter.model, before)


def test_fingerprint_refusal(grads):
    adapter = FakeAdapter()
    p = _patch(adapter, grads)
    other = FakeAdapter(seed=1)
    with pytest.raises(PatchMismatchError, match=r"fake-0.*Captain Zorp.*[0-9a-f]{12}.*[0-9a-f]{12}") as err:
        p.apply(other.model)
    assert p.base_fingerprint[:12] in str(err.value)
    assert model_fingerprint(other.model)[:12] in str(err.value)
    p.apply(adapter.model)
    with pytest.raises(PatchMismatchError, match="already edited"):
        p.apply(adapter.model)  # applying twice would double the step


def test_missing_layer_or_shape(grads):
    adapter = FakeAdapter()
    fp = model_fingerprint(adapter.model)
    missing = Patch({"nope.weight": torch.zeros(2, 2)}, fp, "fake-0", "x", ["nope.weight"], {"nope.weight": 1.0})
    with pytest.raises(PatchMismatchError, match="does not have"):
        missing.apply(adapter.model)
    wrong = Patch({L1: torch.zeros(2, 2)}, fp, "fake-0", "x", [L1], {L1: 1.0})
    with pytest.raises(PatchMismatchError, match="shape"):
        wrong.apply(adapter.model)
    with pytest.raises(ValueError, match="do not match"):
        Patch({L1: torch.zeros(2, 2)}, fp, "fake-0", "x", [L2], {L1: 1.0})


def test_stacked_patches_revert_in_order(grads):
    adapter = FakeAdapter()
    model = adapter.model
    before = _state(model)
    first = _patch(adapter, grads, concept="A")
    first.apply(model)
    middle = _state(model)
    second = _patch(adapter, grads, layer=L2, lam=0.3, concept="B")  # made on top of the edited model
    second.apply(model)
    with pytest.raises(PatchMismatchError, match="last patch applied to this model is 'B'"):
        first.revert(model)
    second.revert(model)
    _assert_same(model, middle)
    first.revert(model)
    _assert_same(model, before)
    with pytest.raises(PatchMismatchError, match="no slugkit patch"):
        first.revert(model)


def test_revert_accepts_loaded_copy(tmp_path, grads):
    adapter = FakeAdapter()
    before = _state(adapter.model)
    p = _patch(adapter, grads)
    p.apply(adapter.model)
    Patch.load(p.save(tmp_path / "p.safetensors")).revert(adapter.model)
    _assert_same(adapter.model, before)


def test_compose(tmp_path, grads):
    adapter = FakeAdapter()
    a = _patch(adapter, grads, L1, 0.5, "A")
    b = _patch(adapter, grads, L1, 0.25, "B")
    c = _patch(adapter, grads, L2, 1.0, "C")
    both = compose([a, b, c])
    assert both.concept == ["A", "B", "C"] and both.layers == [L1, L2]
    torch.testing.assert_close(both.deltas[L1], 0.75 * grads.forget[L1], rtol=1e-6, atol=0)
    assert torch.equal(both.deltas[L2], c.deltas[L2])
    assert both.step_sizes == {f"A|{L1}": 0.5, f"B|{L1}": 0.25, f"C|{L2}": 1.0}
    assert [m["concept"] for m in both.metrics["components"]] == ["A", "B", "C"]
    assert both.nbytes == a.nbytes + c.nbytes
    back = Patch.load(both.save(tmp_path / "abc.safetensors"))
    assert back.concept == ["A", "B", "C"]
    before = _state(adapter.model)
    back.apply(adapter.model)
    back.revert(adapter.model)
    _assert_same(adapter.model, before)
    nested = compose([both, _patch(adapter, grads, L2, 2.0, "D")])
    assert nested.concept == ["A", "B", "C", "D"] and f"D|{L2}" in nested.step_sizes


def test_compose_refuses_other_base(grads):
    a = _patch(FakeAdapter(), grads, concept="A")
    b = _patch(FakeAdapter(seed=1), grads, concept="B")
    with pytest.raises(PatchMismatchError, match="cannot compose"):
        compose([a, b])
    with pytest.raises(ValueError, match="at least one"):
        compose([])


def test_end_to_end_on_fake_adapter(tmp_path):
    """Stages 1-3 and the patch on the fake model: the forget pairs' cosine drops, the patch reverts."""
    from slugkit.gradients import GradientStore
    from slugkit.layer_identification import layer_table, select_layers
    from slugkit.step_size_search import Target, search_step_size

    adapter = FakeAdapter()
    forget, retain = make_batches(2, 4), make_batches(3, 4, seed=2)
    grads = compute_gradients(adapter, forget, retain, store=GradientStore(tmp_path))
    (layer,) = select_layers(layer_table(adapter, grads), "deepest")

    @torch.no_grad()
    def evaluate():
        cos = [(adapter.encode_image(p) * adapter.encode_text(t)).sum(-1).mean().item() for p, t in forget]
        return {"forget_cos": sum(cos) / len(cos), "utility": 1.0}

    base = evaluate()["forget_cos"]
    target = Target(forget_metric="forget_cos", threshold=base - 0.05, score_metrics=("utility",))
    before = _state(adapter.model)
    res = search_step_size(adapter.parameter(layer), grads.forget[layer], evaluate, target, layer_name=layer)
    _assert_same(adapter.model, before)
    assert res.status == "ok"
    p = Patch.from_step(adapter.name, "pairs", layer, res.best_lambda, grads.forget[layer],
                        model_fingerprint(adapter.model), res.best_metrics)  # fmt: skip
    p.apply(adapter.model)
    assert evaluate()["forget_cos"] == pytest.approx(res.best_metrics["forget_cos"], abs=1e-6)
    p.revert(adapter.model)
    _assert_same(adapter.model, before)

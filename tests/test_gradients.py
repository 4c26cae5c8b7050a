import math

import pytest
import torch
import torch.nn.functional as F
from fakes import FakeAdapter, full_batch, make_batches

from slugkit.fingerprint import data_fingerprint, model_fingerprint, tensor_digest
from slugkit.gradients import (
    Gradients,
    GradientStore,
    accumulate_gradients,
    compute_gradients,
    forget_loss,
    retain_loss,
)

LAYERS = ["vision.blocks.1.qkv.weight", "text.blocks.0.fc.weight", "text.blocks.1.proj.weight"]


# ----------------------------------------------------------------- losses
def test_forget_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    # cosines 1 and sqrt(0.5): mean(0, 1 - sqrt(0.5))
    assert forget_loss(img, txt).item() == pytest.approx((1 - math.sqrt(0.5)) / 2, abs=1e-7)
    assert forget_loss(img, -img).item() == pytest.approx(2.0)


def test_retain_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = 2.0
    # logits [[2, 0], [0, 2]] both ways: CE = -log(e^2 / (e^2 + 1))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert retain_loss(img, txt, s).item() == pytest.approx(expected, abs=1e-6)


def test_retain_loss_is_symmetric_mean_of_two_directions():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(5, 3), dim=-1), F.normalize(torch.randn(5, 3), dim=-1)
    s = torch.tensor(7.0)
    labels = torch.arange(5)
    i2t = F.cross_entropy(s * img @ txt.T, labels)
    t2i = F.cross_entropy(s * txt @ img.T, labels)
    assert not torch.isclose(i2t, t2i)
    assert retain_loss(img, txt, s).item() == pytest.approx(((i2t + t2i) / 2).item(), abs=1e-6)


def test_loss_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        forget_loss(torch.ones(2, 3), torch.ones(3, 3))


# ----------------------------------------------------------------- accumulation
def _full_batch_grads(adapter, batches, loss):
    pixels, tokens = full_batch(batches)
    model = adapter.model
    model.zero_grad(set_to_none=True)
    img, txt = adapter.encode_image(pixels), adapter.encode_text(tokens)
    value = forget_loss(img, txt) if loss == "forget" else retain_loss(img, txt, adapter.logit_scale())
    params = [adapter.parameter(n) for n in LAYERS]
    grads = torch.autograd.grad(value, params)
    return dict(zip(LAYERS, grads))


def test_forget_accumulation_equals_full_batch():
    adapter = FakeAdapter()
    batches = make_batches(4, 5)
    got = accumulate_gradients(adapter, batches, "forget", LAYERS)
    want = _full_batch_grads(adapter, batches, "forget")
    for name in LAYERS:
        assert got[name].dtype == torch.float32 and got[name].device.type == "cpu"
        assert not got[name].requires_grad
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)


def test_retain_accumulation_is_mean_of_batch_gradients():
    adapter = FakeAdapter()
    batches = make_batches(3, 4)
    got = accumulate_gradients(adapter, batches, "retain", LAYERS)
    per_batch = [_full_batch_grads(adapter, [b], "retain") for b in batches]
    for name in LAYERS:
        want = sum(g[name] for g in per_batch) / len(per_batch)
        torch.testing.assert_close(got[name], want, atol=1e-6, rtol=0)


def test_gradients_zeroed_per_batch_and_between_calls():
    adapter = FakeAdapter()
    batches = make_batches(3, 4)
    first = accumulate_gradients(adapter, batches, "forget", LAYERS)
    second = accumulate_gradients(adapter, batches, "forget", LAYERS)
    for p in adapter.model.parameters():  # stale gradients must not leak in
        p.grad = torch.full_like(p, 123.0)
    third = accumulate_gradients(adapter, batches, "forget", LAYERS)
    for name in LAYERS:
        assert torch.equal(first[name], second[name])
        assert torch.equal(first[name], third[name])


def test_flags_and_modes_restored_even_on_error():
    adapter = FakeAdapter()
    model = adapter.model
    model.train()
    model.vision.blocks[0].eval()  # mixed modes must survive
    model.embed.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    seen = {}

    def loader():
        pixels, tokens = make_batches(1, 2)[0]
        seen["frozen"] = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["training"] = model.training
        yield pixels, tokens
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        accumulate_gradients(adapter, loader(), "forget", LAYERS)
    assert sorted(seen["frozen"]) == sorted(LAYERS)
    assert seen["training"] is False
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == {n: m.training for n, m in model.named_modules()}


def test_empty_loader():
    with pytest.raises(ValueError, match="forget loader is empty"):
        accumulate_gradients(FakeAdapter(), [], "forget", LAYERS)


def test_unknown_layer_and_loss():
    adapter = FakeAdapter()
    with pytest.raises(KeyError, match="nope.weight"):
        accumulate_gradients(adapter, make_batches(1, 2), "forget", ["nope.weight"])
    with pytest.raises(ValueError, match="loss must be one of"):
        accumulate_gradients(adapter, make_batches(1, 2), "ascend", LAYERS)


def test_non_finite_loss_names_batch():
    adapter = FakeAdapter()
    batches = make_batches(3, 2)
    batches[1][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="batch 1"):
        accumulate_gradients(adapter, batches, "forget", LAYERS)


def test_non_finite_gradient_names_layer():
    adapter = FakeAdapter()
    name = "text.blocks.1.proj.weight"
    adapter.parameter(name).register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(FloatingPointError, match=r"text\.blocks\.1\.proj\.weight.*batch 0"):
        accumulate_gradients(adapter, make_batches(2, 2), "forget", LAYERS)


def test_unused_parameter_gives_zero_gradient():
    adapter = FakeAdapter()
    grads = accumulate_gradients(adapter, make_batches(1, 3), "forget", ["logit_scale"])
    assert torch.equal(grads["logit_scale"], torch.zeros(()))


# ----------------------------------------------------------------- storage
def test_gradients_save_load_roundtrip(tmp_path):
    adapter = FakeAdapter()
    grads = compute_gradients(adapter, make_batches(2, 3), make_batches(2, 3, seed=2), layers=LAYERS)
    assert grads.meta["model_fingerprint"] == model_fingerprint(adapter.model)
    assert grads.meta["forget_batches"] == 2
    path = grads.save(tmp_path / "g.safetensors")
    back = Gradients.load(path)
    assert back.meta == grads.meta
    for name in LAYERS:
        assert torch.equal(back.forget[name], grads.forget[name])
        assert torch.equal(back.retain[name], grads.retain[name])


def test_gradients_load_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Gradients.load(bad)


def test_default_layers_are_all_candidates():
    adapter = FakeAdapter()
    grads = compute_gradients(adapter, make_batches(1, 3), make_batches(1, 3, seed=2))
    assert grads.layers == [info.name for info in adapter.candidate_layers()]
    assert set(grads.retain) == set(grads.forget)


def test_store_returns_cached_without_recomputing(tmp_path, monkeypatch):
    adapter = FakeAdapter()
    store = GradientStore(tmp_path / "cache")
    forget, retain = make_batches(2, 3), make_batches(2, 3, seed=2)
    first = compute_gradients(adapter, forget, retain, layers=LAYERS, store=store)
    assert first.meta["forget_key"] in store and first.meta["retain_key"] in store

    import slugkit.gradients as mod

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(mod, "_accumulate", boom)
    again = compute_gradients(adapter, forget, retain, layers=list(reversed(LAYERS)), store=store)
    assert again.meta == first.meta | {"layers": list(reversed(LAYERS))} and again.layers == list(reversed(LAYERS))
    for name in LAYERS:
        assert torch.equal(again.forget[name], first.forget[name])
    # other data -> other key -> recomputation
    with pytest.raises(AssertionError, match="recomputed"):
        compute_gradients(adapter, forget, make_batches(2, 3, seed=3), layers=LAYERS, store=store)


def _spy_losses(monkeypatch):
    """Record the loss of every ``_accumulate`` call (the gradient computations that really ran)."""
    import slugkit.gradients as mod

    calls, real = [], mod._accumulate
    monkeypatch.setattr(mod, "_accumulate", lambda a, loader, loss, *rest: calls.append(loss) or real(a, loader, loss, *rest))
    return calls


def test_one_retain_gradient_serves_every_forget_set(tmp_path, monkeypatch):
    """The retain half is stored on its own: a new forget set recomputes only the forget gradient, and a
    retain gradient over wider ``retain_layers`` serves any subset of them."""
    adapter, store = FakeAdapter(), GradientStore(tmp_path)
    retain, all_layers = make_batches(2, 3, seed=2), [i.name for i in FakeAdapter().candidate_layers()]
    calls = _spy_losses(monkeypatch)
    a = compute_gradients(adapter, make_batches(1, 3, seed=5), retain, layers=LAYERS, store=store, retain_layers=all_layers)
    b = compute_gradients(adapter, make_batches(1, 3, seed=6), retain, layers=LAYERS[:1], store=store,
                          retain_layers=all_layers)
    assert calls == ["retain", "forget", "forget"]  # retain first (the lower memory peak)
    assert set(b.retain) == set(LAYERS[:1]) and torch.equal(a.retain[LAYERS[0]], b.retain[LAYERS[0]])
    assert not torch.equal(a.forget[LAYERS[0]], b.forget[LAYERS[0]])
    fresh = compute_gradients(adapter, make_batches(1, 3, seed=6), retain, layers=LAYERS[:1])  # no cache at all
    assert torch.equal(fresh.retain[LAYERS[0]], b.retain[LAYERS[0]])
    with pytest.raises(ValueError, match="retain_layers must contain"):
        compute_gradients(adapter, retain, retain, layers=LAYERS, retain_layers=LAYERS[:1])


def test_reuse_retain_keeps_the_last_retain_gradient_in_memory(monkeypatch):
    adapter, retain = FakeAdapter(), make_batches(2, 3, seed=2)
    calls = _spy_losses(monkeypatch)
    first = compute_gradients(adapter, make_batches(1, 3, seed=5), retain, layers=LAYERS, reuse_retain=True)
    again = compute_gradients(adapter, make_batches(1, 3, seed=6), retain, layers=LAYERS, reuse_retain=True)
    assert calls == ["retain", "forget", "forget"]  # retain first (the lower memory peak)
    assert all(torch.equal(first.retain[n], again.retain[n]) for n in LAYERS)
    with torch.no_grad():  # another model (an edited weight) -> another fingerprint -> recomputed
        adapter.model.text.blocks[0].fc.weight[0, 0] += 1e-3
    compute_gradients(adapter, make_batches(1, 3, seed=6), retain, layers=LAYERS, reuse_retain=True)
    assert calls[-2:] == ["retain", "forget"]


def test_store_get_missing(tmp_path):
    assert GradientStore(tmp_path).get("0" * 64) is None


# ----------------------------------------------------------------- fingerprints
def test_model_fingerprint_is_stable_and_sensitive():
    a, b = FakeAdapter(seed=0), FakeAdapter(seed=0)
    assert model_fingerprint(a.model) == model_fingerprint(b.model)
    assert model_fingerprint(a.model) != model_fingerprint(FakeAdapter(seed=1).model)
    with torch.no_grad():
        b.model.text.blocks[0].fc.weight[0, 0] += 1e-3
    assert model_fingerprint(a.model) != model_fingerprint(b.model)
    assert model_fingerprint(a.model) != model_fingerprint(FakeAdapter(seed=0, dtype=torch.float64).model)


def test_model_fingerprint_samples_large_tensors():
    big = torch.nn.Linear(1000, 200)  # 200k elements > 65,536 samples
    fp = model_fingerprint(big)
    with torch.no_grad():
        big.weight.view(-1)[0] += 1  # element 0 is always sampled
    assert model_fingerprint(big) != fp


def test_tensor_digest_and_data_fingerprint():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) == tensor_digest(t.clone().reshape(2, 3))
    assert tensor_digest(t) != tensor_digest(t + 1)
    assert tensor_digest(t.bfloat16()) != tensor_digest(t)
    batches = make_batches(2, 3)
    assert data_fingerprint(batches) == data_fingerprint(make_batches(2, 3))
    assert data_fingerprint(batches) != data_fingerprint(make_batches(2, 3, seed=5))
    assert data_fingerprint(batches) != data_fingerprint(batches[:1])
    assert data_fingerprint([]) != data_fingerprint(batches)


@pytest.mark.parametrize("family", ["open_clip", "hf-clip"])
def test_low_memory_gradients_are_the_same_numbers(family):
    from fakes import tiny_hf, tiny_openclip

    from slugkit.adapters.hf_clip import HFCLIPAdapter
    from slugkit.adapters.openclip import OpenCLIPAdapter
    from slugkit.models.hf_convert import clip_tokenizer_from_openclip

    adapter = (OpenCLIPAdapter(tiny_openclip()) if family == "open_clip"
               else HFCLIPAdapter(tiny_hf(), clip_tokenizer_from_openclip(16)))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), adapter.tokenize(["a cat", "two dogs", "a red car", "x y z"]))
               for _ in range(2)]
    layers = [i.name for i in adapter.candidate_layers()]
    held = compute_gradients(adapter, batches, batches, layers, progress=False, low_memory=False)
    saved = {}  # tensors autograd keeps for the backward pass, in bytes
    for low in (False, True):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.__setitem__(low, saved.get(low, 0) + t.nbytes) or t,
                                                      lambda t: t):
            recomputed = compute_gradients(adapter, batches, batches, layers, progress=False, low_memory=low)
    assert saved[True] < saved[False] / 2
    for loss in ("forget", "retain"):
        for name in layers:
            assert torch.equal(getattr(held, loss)[name], getattr(recomputed, loss)[name]), (loss, name)
    assert all(type(blk).forward is blk.forward.__func__ for t in ("vision", "text") for blk in adapter.blocks(t))


def test_each_gradient_joins_its_sum_during_the_backward_pass():
    """The backward pass never holds every layer's .grad at once: each is added to its running sum and dropped
    as soon as it exists (the peak memory of a large model's gradient stage), with the same sums as before."""
    adapter = FakeAdapter()
    batches = make_batches(2, 4)
    params = [adapter.parameter(name) for name in LAYERS]
    held = []  # how many requested layers hold a .grad whenever one of them has just received its gradient
    hooks = [p.register_post_accumulate_grad_hook(lambda p: held.append(sum(q.grad is not None for q in params)))
             for p in params]
    try:
        got = accumulate_gradients(adapter, batches, "forget", LAYERS)
    finally:
        for h in hooks:
            h.remove()
    assert len(held) == 2 * len(LAYERS) and max(held) == 1
    want = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in zip(LAYERS, params)}
    for pixels, tokens in batches:
        value = forget_loss(adapter.encode_image(pixels), adapter.encode_text(tokens))
        for name, g in zip(LAYERS, torch.autograd.grad(value, params)):
            want[name] += g
    for name in LAYERS:
        torch.testing.assert_close(got[name], (want[name] / len(batches)).float(), atol=1e-6, rtol=0)
    assert all(p.grad is None for p in params)


def test_sums_made_up_front_give_the_same_numbers():
    """A loader of known length gets its float64 sums before the first batch (less heap left behind); a loader of
    unknown length converts at the second batch: bit for bit the same gradients, and one batch is kept as it is."""
    adapter = FakeAdapter()
    batches = make_batches(3, 4)
    for loss in ("forget", "retain"):
        known = accumulate_gradients(adapter, batches, loss, LAYERS)
        unknown = accumulate_gradients(adapter, iter(batches), loss, LAYERS)
        assert all(torch.equal(known[n], unknown[n]) for n in LAYERS), loss
        one = accumulate_gradients(adapter, batches[:1], loss, LAYERS)
        want = _full_batch_grads(adapter, batches[:1], loss)
        assert all(torch.equal(one[n], want[n].float()) for n in LAYERS), loss

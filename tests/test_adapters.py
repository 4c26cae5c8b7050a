"""OpenCLIPAdapter and HFCLIPAdapter on tiny randomly initialised models."""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from slugkit.adapters.base import LAYER_KINDS, LayerInfo
from slugkit.adapters.hf_clip import HFCLIPAdapter, clean_caption
from slugkit.adapters.openclip import OpenCLIPAdapter, uint8_to_pixels
from slugkit.models.hf_convert import clip_tokenizer_from_openclip

from fakes import tiny_hf, tiny_openclip

CAPTIONS = ["a photo of Captain Zorp.", "a red square", "two blue circles on a green background!", ""]


def random_images(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


def smooth_images(n=2, size=64, seed=0):
    """Low-frequency images (upsampled noise), so different resize kernels agree closely."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (up * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_pil(images):
    return [Image.fromarray(im.numpy()) for im in images]


@pytest.fixture(scope="module")
def oc_adapter():
    return OpenCLIPAdapter(tiny_openclip(), name="tiny-oc")


@pytest.fixture(scope="module")
def hf_adapter():
    return HFCLIPAdapter(tiny_hf(), clip_tokenizer_from_openclip(16), name="tiny-hf")


def test_openclip_candidate_layers(oc_adapter):
    layers = oc_adapter.candidate_layers()
    assert all(isinstance(li, LayerInfo) and li.kind in LAYER_KINDS for li in layers)
    assert len(layers) == 2 * 4 + 2 * 4
    assert [(li.tower, li.block) for li in layers] == sorted(
        [(li.tower, li.block) for li in layers], key=lambda tb: (tb[0] != "vision", tb[1]))
    first = layers[:4]
    assert [li.name for li in first] == [
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.0.attn.out_proj.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "visual.transformer.resblocks.0.mlp.c_proj.weight",
    ]
    assert [li.kind for li in first] == ["attn_qkv", "attn_out", "mlp_fc", "mlp_proj"]
    assert [li.shape for li in first] == [(192, 64), (64, 64), (256, 64), (64, 256)]
    text = [li for li in layers if li.tower == "text"]
    assert text[0].name == "transformer.resblocks.0.attn.in_proj_weight" and text[0].shape == (96, 32)
    assert text[-1].name == "transformer.resblocks.1.mlp.c_proj.weight" and text[-1].block == 1
    for li in layers:
        assert tuple(oc_adapter.parameter(li.name).shape) == li.shape


def test_hf_candidate_layers(hf_adapter):
    layers = hf_adapter.candidate_layers()
    assert len(layers) == 2 * 6 + 2 * 6
    assert [li.tower for li in layers] == ["vision"] * 12 + ["text"] * 12
    assert [li.block for li in layers[:12]] == [0] * 6 + [1] * 6
    assert [li.kind for li in layers[:6]] == ["attn_q", "attn_k", "attn_v", "attn_out", "mlp_fc", "mlp_proj"]
    assert layers[0].name == "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert layers[4].name == "vision_model.encoder.layers.0.mlp.fc1.weight" and layers[4].shape == (96, 48)
    assert layers[5].shape == (48, 96)
    assert layers[-1].name == "text_model.encoder.layers.1.mlp.fc2.weight" and layers[-1].shape == (32, 64)
    for li in layers:
        assert tuple(hf_adapter.parameter(li.name).shape) == li.shape


@pytest.mark.parametrize("which", ["oc", "hf"])
def test_embeddings_unit_norm(which, oc_adapter, hf_adapter):
    adapter = oc_adapter if which == "oc" else hf_adapter
    tokens = adapter.tokenize(CAPTIONS)
    assert tokens.dtype == torch.int64 and tokens.shape == (len(CAPTIONS), 16)
    pixels = adapter.preprocess(random_images(3))
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 3, 32, 32)
    with torch.no_grad():
        img, txt = adapter.encode_image(pixels), adapter.encode_text(tokens)
    assert img.shape == (3, 24) and txt.shape == (len(CAPTIONS), 24)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(len(CAPTIONS)), atol=1e-5)
    scale = adapter.logit_scale()
    assert scale.ndim == 0 and torch.isclose(scale, adapter.model.logit_scale.exp().reshape(()))
    assert abs(scale.item() - 1 / 0.07) < 1e-3


@pytest.mark.parametrize("which", ["oc", "hf"])
def test_gradients_reach_candidates(which, oc_adapter, hf_adapter):
    adapter = oc_adapter if which == "oc" else hf_adapter
    layer_v = adapter.candidate_layers()[0]
    layer_t = [li for li in adapter.candidate_layers() if li.tower == "text"][-1]
    adapter.model.zero_grad(set_to_none=True)
    img = adapter.encode_image(adapter.preprocess(random_images(2)))
    txt = adapter.encode_text(adapter.tokenize(CAPTIONS[:2]))
    (adapter.logit_scale() * img @ txt.T).diagonal().sum().backward()
    for li in (layer_v, layer_t):
        grad = adapter.parameter(li.name).grad
        assert grad is not None and grad.abs().sum() > 0
    adapter.model.zero_grad(set_to_none=True)


def test_openclip_fast_path_equals_pil_transform_at_model_size():
    adapter = OpenCLIPAdapter(tiny_openclip(image_size=64))
    images = random_images(3, size=64)
    fast = adapter.preprocess(images)
    slow = adapter.preprocess(to_pil(images))
    assert fast.shape == slow.shape == (3, 3, 64, 64)
    assert (fast - slow).abs().max().item() < 1e-5
    assert torch.equal(adapter.preprocess(images.numpy()), fast)  # ndarray input


def test_openclip_fast_path_resizes_like_pil(oc_adapter):
    images = smooth_images(2, size=64)
    fast = oc_adapter.preprocess(images)
    slow = oc_adapter.preprocess(to_pil(images))
    assert fast.shape == slow.shape == (2, 3, 32, 32)
    assert (fast - slow).abs().mean().item() < 0.01  # torch vs PIL bicubic kernels (~0.004)
    wide = smooth_images(1, size=96)[:, :64]  # (1, 64, 96, 3): shortest side + centre crop
    fast, slow = oc_adapter.preprocess(wide), oc_adapter.preprocess(to_pil(wide))
    assert fast.shape == slow.shape == (1, 3, 32, 32)
    assert (fast - slow).abs().mean().item() < 0.01


def test_hf_fast_path_equals_pil_path():
    size = 64
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    images = random_images(3, size=size)
    for proc in (None, processor):
        adapter = HFCLIPAdapter(tiny_hf(image_size=size), clip_tokenizer_from_openclip(16), proc)
        fast, slow = adapter.preprocess(images), adapter.preprocess(to_pil(images))
        assert fast.shape == slow.shape == (3, 3, size, size)
        assert (fast - slow).abs().max().item() < 1e-4


def test_hf_uses_processor_mean_std():
    processor = CLIPImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                   size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    adapter = HFCLIPAdapter(tiny_hf(), clip_tokenizer_from_openclip(16), processor)
    pixels = adapter.preprocess(torch.full((1, 32, 32, 3), 255, dtype=torch.uint8))
    assert torch.allclose(pixels, torch.ones_like(pixels))


def test_uint8_to_pixels_checks_input():
    with pytest.raises(TypeError):
        uint8_to_pixels(torch.zeros(1, 8, 8, 3), 8, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError):
        uint8_to_pixels(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 8, (0, 0, 0), (1, 1, 1))
    single = uint8_to_pixels(np.zeros((8, 8, 3), dtype=np.uint8), 8, (0, 0, 0), (1, 1, 1))
    assert single.shape == (1, 3, 8, 8)


def test_openclip_tokenize_matches_open_clip(oc_adapter):
    ref = open_clip.tokenizer.SimpleTokenizer(context_length=16)(CAPTIONS)
    assert torch.equal(oc_adapter.tokenize(CAPTIONS), ref)


def test_clean_caption():
    assert clean_caption("  Tom &amp;   Jerry\n") == "Tom & Jerry"


def test_non_vit_vision_tower_rejected():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=24,
        vision_cfg=dict(layers=(1, 1, 1, 1), width=8, head_width=8, image_size=32),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    adapter = OpenCLIPAdapter(model)
    with torch.no_grad():  # encoding still works
        assert adapter.encode_image(adapter.preprocess(random_images(1, 32))).shape == (1, 24)
    with pytest.raises(ValueError, match="ViT"):
        adapter.candidate_layers()


@pytest.mark.parametrize("which", ["oc", "hf"])
def test_vision_tower_resumes_from_any_block(which, oc_adapter, hf_adapter):
    adapter = oc_adapter if which == "oc" else hf_adapter
    assert adapter.supports_vision_resume
    pixels = adapter.preprocess(random_images(3, size=32))
    with torch.no_grad():
        full = adapter.encode_image(pixels)
        n_blocks = max(i.block for i in adapter.candidate_layers() if i.tower == "vision") + 1
        for block in range(n_blocks + 1):
            resumed = adapter.encode_image_from(adapter.vision_state(pixels, block), block)
            assert torch.allclose(resumed, full, atol=1e-5), block
            advanced = adapter.advance_vision_state(adapter.vision_state(pixels, 0), 0, block)
            assert torch.equal(adapter.encode_image_from(advanced, block), resumed), block


@pytest.mark.parametrize("which", ["oc", "hf"])
def test_text_tower_resumes_from_any_block(which, oc_adapter, hf_adapter):
    adapter = oc_adapter if which == "oc" else hf_adapter
    assert adapter.supports_resume("text")
    tokens = adapter.tokenize(["a photo of Captain Zorp.", "Mira Quell at a party, smiling", "x"])
    with torch.no_grad():
        full = adapter.encode_text(tokens)
        n_blocks = max(i.block for i in adapter.candidate_layers() if i.tower == "text") + 1
        for block in range(n_blocks + 1):
            resumed = adapter.encode_text_from(adapter.text_state(tokens, block), block)
            assert torch.allclose(resumed, full, atol=1e-6), block
        # an edit inside block 1 shows up in the resumed embedding, one before it does not
        layer = next(i.name for i in adapter.candidate_layers() if i.tower == "text" and i.block == 1)
        state = adapter.text_state(tokens, 1)
        p = adapter.parameter(layer)
        original = p.clone()
        p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))  # a constant would vanish after LayerNorm
        try:
            edited_full, edited_resumed = adapter.encode_text(tokens), adapter.encode_text_from(state, 1)
        finally:
            p.copy_(original)
        assert not torch.allclose(edited_full, full, atol=1e-3)
        assert torch.allclose(edited_resumed, edited_full, atol=1e-6)
    with pytest.raises(ValueError, match="text resume block must be in 0..2"):
        adapter.text_state(tokens, 3)


@pytest.mark.parametrize("family", ["open_clip", "open_clip-last", "hf-clip"])
def test_text_runs_only_up_to_the_last_end_of_text_token(family):
    """A causal text tower pooled at the end-of-text token runs the positions up to the batch's last one: the
    embeddings and their gradients are those of the whole context; a tower pooled elsewhere runs it whole."""
    if family == "hf-clip":
        model = tiny_hf()
        adapter = HFCLIPAdapter(model, clip_tokenizer_from_openclip(16))
        layer = adapter.parameter("text_model.encoder.layers.0.mlp.fc1.weight")

        def whole(tokens):
            return model.text_projection(model.text_model(input_ids=tokens).pooler_output)
    else:
        model = tiny_openclip()
        model.text_pool_type = "last" if family == "open_clip-last" else "argmax"
        adapter = OpenCLIPAdapter(model)
        layer = adapter.parameter("transformer.resblocks.0.mlp.c_fc.weight")
        whole = model.encode_text
    tokens = adapter.tokenize(["a cat", "two small dogs"])
    seen = []
    hook = adapter.token_embedding().register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    try:
        got = adapter.encode_text(tokens)
        (got_grad,) = torch.autograd.grad(got.sum(), layer)
    finally:
        hook.remove()
    last_eot = int(tokens.argmax(-1).max()) + 1
    assert last_eot < tokens.shape[1]
    assert seen == [tokens.shape[1] if family == "open_clip-last" else last_eot]
    want = torch.nn.functional.normalize(whole(tokens), dim=-1)
    (want_grad,) = torch.autograd.grad(want.sum(), layer)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-5)

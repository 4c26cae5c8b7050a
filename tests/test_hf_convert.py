"""open_clip -> transformers CLIPModel conversion and the offline open_clip-compatible tokenizer."""
import json

import open_clip
import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from slugkit.adapters.hf_clip import HFCLIPAdapter
from slugkit.adapters.openclip import OpenCLIPAdapter
from slugkit.models.hf_convert import (
    clip_tokenizer_from_openclip,
    image_processor_from_openclip,
    openclip_to_hf,
    save_hf,
)
from slugkit.models.toy_clip import register

CAPTIONS = [
    "a photo of Captain Zorp.",
    "Captain Zorp and Mira Quell, side by side!",
    "It's the dog's bone; isn't it?",
    "  Multiple   spaces\tand\nnewlines  ",
    "UPPER case and MiXeD CaSe",
    "numbers 12345 and 3.14, prices $9.99 (20% off)",
    "what?!... wow!!! ?!?! #hashtag @user e-mail: a_b@c.de",
    "café naïve ÉLAN façade",
    "emoji 😀 and symbols © ™ §",
    "don't 'quote' \"double\" `back`",
    "a photo of a " + "very " * 40 + "long caption that must be truncated",
    "",
    "!",
    "x",
]
# need open_clip's ftfy / HTML cleaning, which HFCLIPAdapter applies before tokenising
DIRTY = ["Tom &amp; Jerry &lt;3", "it\u2019s \u201cquoted\u201d", "\ufb01sh and \uff26\uff35\uff2c\uff2c width"]


def toy_model(quick_gelu=False, seed=0):
    """Random toy-clip with every parameter perturbed (biases and LayerNorms are not at their init)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(register(), force_quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(3.3)
    return model


def tiny_cfg(vision=None, text=None):
    v = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32)
    t = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)
    v.update(vision or {})
    t.update(text or {})
    return v, t


def tiny(vision=None, text=None, **kw):
    v, t = tiny_cfg(vision, text)
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=24, vision_cfg=v, text_cfg=t, **kw).eval()


def images(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_toy_clip_conversion_matches(quick_gelu):
    model = toy_model(quick_gelu)
    hf = openclip_to_hf(model)
    assert isinstance(hf, CLIPModel)
    act = "quick_gelu" if quick_gelu else "gelu"
    assert hf.config.vision_config.hidden_act == act and hf.config.text_config.hidden_act == act
    assert hf.config.text_config.max_position_embeddings == model.context_length
    assert hf.config.vision_config.image_size == model.visual.image_size[0]

    a = OpenCLIPAdapter.from_model(model, "toy-clip")
    b = HFCLIPAdapter(hf, clip_tokenizer_from_openclip(model.context_length), image_processor_from_openclip(model))
    tokens = a.tokenize(CAPTIONS)
    assert torch.equal(tokens, b.tokenize(CAPTIONS))
    pixels = a.preprocess(images())
    assert torch.equal(pixels, b.preprocess(images()))
    with torch.no_grad():
        img_diff = (a.encode_image(pixels) - b.encode_image(pixels)).abs().max().item()
        txt_diff = (a.encode_text(tokens) - b.encode_text(tokens)).abs().max().item()
        raw_img = (model.encode_image(pixels) - hf.get_image_features(pixel_values=pixels).pooler_output)
        raw_txt = (model.encode_text(tokens) - hf.get_text_features(input_ids=tokens).pooler_output)
    assert img_diff < 1e-4 and txt_diff < 1e-4
    assert raw_img.abs().max().item() < 1e-4 and raw_txt.abs().max().item() < 1e-4
    assert torch.equal(a.logit_scale(), b.logit_scale())
    assert torch.equal(hf.logit_scale.detach(), model.logit_scale.detach().reshape(()))


def test_conversion_detects_wrong_activation():
    """The comparison is sensitive: the same weights with the other activation do not match."""
    model = toy_model(quick_gelu=False)
    hf = openclip_to_hf(model)
    hf.config.vision_config.hidden_act = "quick_gelu"
    from transformers.activations import ACT2FN

    for layer in hf.vision_model.encoder.layers:
        layer.mlp.activation_fn = ACT2FN["quick_gelu"]
    pixels = OpenCLIPAdapter(model).preprocess(images(1))
    with torch.no_grad():
        diff = (model.encode_image(pixels) - hf.get_image_features(pixel_values=pixels).pooler_output).abs().max()
    assert diff > 1e-3


def test_candidate_weights_correspond():
    model = toy_model()
    hf = openclip_to_hf(model)
    oc = dict(model.named_parameters())
    hp = dict(hf.named_parameters())
    for tower_oc, tower_hf in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        for i in (0, 5):
            qkv = torch.cat([hp[f"{tower_hf}.layers.{i}.self_attn.{x}_proj.weight"] for x in "qkv"])
            assert torch.equal(qkv, oc[f"{tower_oc}.resblocks.{i}.attn.in_proj_weight"])
            assert torch.equal(hp[f"{tower_hf}.layers.{i}.mlp.fc2.weight"], oc[f"{tower_oc}.resblocks.{i}.mlp.c_proj.weight"])
    assert torch.equal(hp["visual_projection.weight"], model.visual.proj.t())
    assert torch.equal(hp["text_projection.weight"], model.text_projection.t())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vision=dict(attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4)), "attentional"),
        (dict(vision=dict(pool_type="avg")), "pool_type"),
        (dict(vision=dict(no_ln_pre=True)), "ln_pre"),
        (dict(vision=dict(layers=(1, 1, 1, 1), width=8, head_width=8)), "non-ViT"),
        (dict(vision=dict(ls_init_value=0.1)), "LayerScale"),
        (dict(vision=dict(qk_norm=True)), "custom attention"),
        (dict(text=dict(proj_bias=True)), "proj_bias"),
        (dict(text=dict(pool_type="last")), "pool_type"),
        (dict(text=dict(no_causal_mask=True)), "causal"),
        (dict(init_logit_bias=-10.0), "logit_bias"),
    ],
)
def test_unsupported_variants_raise(kwargs, match):
    extra = {k: v for k, v in kwargs.items() if k not in ("vision", "text")}
    model = tiny(kwargs.get("vision"), kwargs.get("text"), **extra)
    with pytest.raises(ValueError, match=match):
        openclip_to_hf(model)


def test_tiny_conversion_with_nonscalar_logit_scale():
    model = tiny(nonscalar_logit_scale=True)
    hf = openclip_to_hf(model)
    assert hf.logit_scale.shape == () and torch.equal(hf.logit_scale.detach(), model.logit_scale.detach()[0])


@pytest.mark.parametrize("context_length", [16, 77])
def test_tokenizer_ids_identical_to_open_clip(context_length):
    ref = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    tok = clip_tokenizer_from_openclip(context_length)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 0)
    ids = tok(CAPTIONS, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")
    expected = ref(CAPTIONS)
    assert torch.equal(ids["input_ids"], expected)
    # defaults (model_max_length) give the same, and the truncated caption keeps its end token
    assert torch.equal(tok(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"], expected)
    long_row = expected[CAPTIONS.index(next(c for c in CAPTIONS if "long caption" in c))]
    if context_length == 16:
        assert long_row[-1].item() == 49407 and (long_row != 0).all()


def test_adapter_tokenize_applies_open_clip_cleaning():
    ref = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    adapter = HFCLIPAdapter(openclip_to_hf(tiny()), clip_tokenizer_from_openclip(16))
    texts = CAPTIONS + DIRTY
    assert torch.equal(adapter.tokenize(texts), ref(texts))


def test_tokenizer_round_trip(tmp_path):
    tok = clip_tokenizer_from_openclip(16)
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.pad_token_id == 0 and reloaded.model_max_length == 16
    expected = open_clip.tokenizer.SimpleTokenizer(context_length=16)(CAPTIONS)
    got = reloaded(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(got, expected)


def test_save_hf_writes_loadable_dir(tmp_path):
    model = tiny()
    hf = openclip_to_hf(model)
    out = save_hf(hf, clip_tokenizer_from_openclip(16), tmp_path / "m", image_processor_from_openclip(model))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["max_position_embeddings"] == 16
    again = CLIPModel.from_pretrained(out, local_files_only=True)
    for (n1, p1), (n2, p2) in zip(hf.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)

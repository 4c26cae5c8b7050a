"""load_clip: name forms, offline failures, local open_clip files and saved HF directories."""
import json
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

import slugkit.models.toy_clip as toy_clip
from slugkit.adapters.hf_clip import HFCLIPAdapter
from slugkit.adapters.openclip import OpenCLIPAdapter
from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf
from slugkit.models.loading import ModelNotAvailableError, load_clip, random_clip

TINY_ARCH = "slugkit-test-tiny-vit"
CAPTIONS = ["a photo of Captain Zorp.", "a red square", ""]


def images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    path = tmp_path_factory.mktemp("arch") / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return TINY_ARCH


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def tiny_hf_model(seed=0):
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=24,
    )
    return CLIPModel(config).eval()


def assert_fails_fast(name, tmp_path, needle=None):
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        load_clip(name, cache_dir=tmp_path / "empty-cache")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert (needle or name) in message and "\n" not in message
    return message


def test_openclip_tag_offline_fails_fast(offline, tmp_path):
    message = assert_fails_fast("openclip:ViT-B-32/laion400m_e32", tmp_path)
    assert "cache" in message and "local weights file" in message


def test_hf_missing_local_dir_fails_fast(offline, tmp_path):
    assert_fails_fast("hf:/nonexistent/path", tmp_path)


def test_hf_missing_local_dir_fails_fast_online(tmp_path):
    assert_fails_fast("hf:/nonexistent/path", tmp_path)  # no hub call for something that is a path


def test_hf_repo_offline_fails_fast(offline, tmp_path):
    message = assert_fails_fast("hf:openai/clip-vit-base-patch32", tmp_path)
    assert "Hugging Face cache" in message


def test_hf_dir_without_model_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_fails_fast(f"hf:{tmp_path / 'empty'}", tmp_path)


def test_hf_dir_without_tokenizer_fails(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path / "model-only")
    with pytest.raises(ModelNotAvailableError, match="tokenizer"):
        load_clip(f"hf:{tmp_path / 'model-only'}")


def test_openclip_missing_local_file(tmp_path, tiny_arch):
    assert_fails_fast(f"openclip:{tiny_arch}/{tmp_path / 'nope.safetensors'}", tmp_path)


def test_hf_saved_dir_round_trip(offline, tmp_path):
    model = tiny_hf_model()
    tokenizer = clip_tokenizer_from_openclip(16)
    save_hf(model, tokenizer, tmp_path / "tiny-hf")
    adapter = load_clip(f"hf:{tmp_path / 'tiny-hf'}")
    assert isinstance(adapter, HFCLIPAdapter) and adapter.family == "hf-clip"
    assert adapter.name == f"hf:{tmp_path / 'tiny-hf'}"
    assert adapter.image_processor is None  # none saved: CLIP mean/std defaults
    original = HFCLIPAdapter(model, tokenizer)
    tokens = adapter.tokenize(CAPTIONS)
    assert torch.equal(tokens, original.tokenize(CAPTIONS))
    assert torch.equal(tokens, open_clip.tokenizer.SimpleTokenizer(context_length=16)(CAPTIONS))
    pixels = adapter.preprocess(images())
    assert torch.equal(pixels, original.preprocess(images()))
    with torch.no_grad():
        assert (adapter.encode_image(pixels) - original.encode_image(pixels)).abs().max() < 1e-6
        assert (adapter.encode_text(tokens) - original.encode_text(tokens)).abs().max() < 1e-6
    assert torch.equal(adapter.logit_scale(), original.logit_scale())
    assert [li.name for li in adapter.candidate_layers()] == [li.name for li in original.candidate_layers()]


def test_openclip_local_safetensors(tmp_path, tiny_arch):
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    adapter = load_clip(f"openclip:{tiny_arch}/{path}")
    assert isinstance(adapter, OpenCLIPAdapter) and adapter.family == "openclip"
    assert not adapter.model.training
    original = OpenCLIPAdapter(model)
    tokens = adapter.tokenize(CAPTIONS)
    assert tokens.shape == (3, 16) and torch.equal(tokens, original.tokenize(CAPTIONS))
    pixels = adapter.preprocess(images())
    with torch.no_grad():
        assert (adapter.encode_image(pixels) - original.encode_image(pixels)).abs().max() < 1e-6
        assert (adapter.encode_text(tokens) - original.encode_text(tokens)).abs().max() < 1e-6
    assert len(adapter.candidate_layers()) == 16


@pytest.mark.parametrize("name", ["", "clip", "toy", "openclip:", "openclip:ViT-B-32", "openclip:/x.pt", "hf:",
                                  "hub:openai/clip", "laion/CLIP-ViT-B-32"])
def test_bad_name_forms(name):
    with pytest.raises(ValueError, match="accepted forms"):
        load_clip(name)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="list_models"):
        load_clip("openclip:ViT-Q-99/laion400m_e32")


def test_unknown_tag():
    with pytest.raises(ValueError, match="known tags"):
        load_clip("openclip:ViT-B-32/not_a_real_tag")


def test_random_clip_builds_the_architecture_with_seeded_random_weights(tiny_arch):
    a, b = random_clip(tiny_arch, seed=3), random_clip(tiny_arch, seed=3)
    assert isinstance(a, OpenCLIPAdapter) and a.name == f"openclip:{tiny_arch}/random" and not a.model.training
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert not torch.equal(a.model.visual.proj, random_clip(tiny_arch, seed=4).model.visual.proj)
    assert a.encode_image(a.preprocess(images())).shape == (2, 24)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        random_clip("ViT-Q-99")


def test_toy_clip_missing_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUGKIT_DATA", str(tmp_path))
    for name in ("toy-clip", "toy-clip-hf"):
        with pytest.raises(ModelNotAvailableError, match=name):
            load_clip(name)


def test_toy_clip_hf_wiring(monkeypatch):
    """The toy-clip(-hf) branches, with a random toy model standing in for the trained checkpoint."""
    monkeypatch.setattr(toy_clip, "load_toy_clip", lambda device="cpu", path=None: toy_clip.create_toy_clip(0).eval())
    oc = load_clip("toy-clip")
    hf = load_clip("toy-clip-hf")
    assert isinstance(oc, OpenCLIPAdapter) and isinstance(hf, HFCLIPAdapter)
    assert oc.name == "toy-clip" and hf.name == "toy-clip-hf"
    tokens = oc.tokenize(CAPTIONS)
    assert torch.equal(tokens, hf.tokenize(CAPTIONS))
    size = oc.image_size
    pix = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert (oc.encode_image(oc.preprocess(pix)) - hf.encode_image(hf.preprocess(pix))).abs().max() < 1e-4
        assert (oc.encode_text(tokens) - hf.encode_text(hf.tokenize(CAPTIONS))).abs().max() < 1e-4
    assert torch.equal(oc.logit_scale(), hf.logit_scale())

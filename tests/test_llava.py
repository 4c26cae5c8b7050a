"""The toy LLaVA (answer quality, training, the feature-layer rule), the LlavaHost contract, tower-scoped patches
on LLaVA, and the real path end to end on tiny random configs of the same transformers classes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slugkit.adapters.llava import LlavaHost, load_llava, load_toy_llava
from slugkit.data.minicanvas import CHARACTER_NAMES, MiniCanvas
from slugkit.models import toy_llava as TL
from slugkit.models.loading import ModelNotAvailableError
from slugkit.patch import Patch, PatchMismatchError, scope_fingerprint

from fakes import tiny_hf

NAMES = ["Captain Zorp", "Mira Quell", "Rex Calloway"]


@pytest.fixture(scope="module")
def host():
    return load_toy_llava(n_eval=300)


def _block_weight(block: int) -> str:
    return f"vision_model.encoder.layers.{block}.mlp.fc2.weight"


def _noise_patch(clip, block: int, scale: float = 0.1, seed: int = 0) -> Patch:
    """A tower-scoped patch adding noise of ``scale`` x the weight's norm to one vision block of the CLIP."""
    name = _block_weight(block)
    weight = clip.model.get_parameter(name).detach()
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed))
    return Patch.from_step(clip.name, "noise", name, scale * weight.norm().item() / noise.norm().item(), noise,
                           scope_fingerprint(clip.model, "vision_model"), scope="vision_model")


# ----------------------------------------------------------------------------------------------------- toy model
def test_toy_llava_answers_held_out_questions(host):
    """Held-out pictures (test split) and held-out phrasings: every question type >= 90% exact answers."""
    acc = host.evaluate(progress=False)
    assert list(acc) == list(TL.QUESTION_TYPES)
    for qtype, m in acc.items():
        assert m["top1"] >= 0.9, (qtype, m["top1"])
        assert m["n"] >= 100 and set(m["per_concept"]) and all(0 <= v <= 1 for v in m["per_concept"].values())
    assert set(acc["identity"]["per_concept"]) == set(CHARACTER_NAMES)


def test_held_out_phrasings_are_new_sentences_of_known_words():
    vocab = set(TL.vocabulary())
    for qtype in TL.QUESTION_TYPES:
        train, test = TL.phrasings(qtype, "train"), TL.phrasings(qtype, "test")
        assert not set(train) & set(test)
        for q in test:
            assert all(w in vocab for w in TL._WORD.findall(q)), q
    tok = TL.build_tokenizer()
    assert tok.unk_token_id not in tok(" ".join(TL.phrasings("identity", "all")))["input_ids"]


def test_checkpoint_holds_only_trained_parts_in_fp16():
    from safetensors import safe_open

    path = TL.data_dir() / TL.CHECKPOINT_NAME
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_slice(k).get_dtype() == "F16" for k in keys)
    assert keys and not any(k.startswith("model.vision_tower") for k in keys)
    assert path.stat().st_size < 3e6
    meta = TL.checkpoint_metadata()
    assert min(meta["answer_top1"].values()) >= 0.9


def test_short_training_run_learns():
    cfg = TL.TrainConfig(n_train=120, steps=30, batch_size=32, lr=3e-3, warmup=5, eval_every=10_000, n_eval=20)
    model, tok, history = TL.train_toy_llava(cfg, progress=False)
    first = np.mean([h["loss"] for h in history[:3]])
    last = np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.5 * first, (first, last)
    assert all(not p.requires_grad for p in model.model.vision_tower.parameters())


def test_vision_tower_is_exactly_toy_clip_hf_and_processor_matches(host):
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip-hf")
    tower = dict(host.tower_module().named_parameters())
    for name, p in clip.model.vision_model.named_parameters():
        assert torch.equal(tower[name], p), name
    world = MiniCanvas(n=4, seed=3, split="test")
    via_processor = host.processor(images=[Image.fromarray(im) for im in world.images],
                                   text=["USER: <image>\nWho is this? ASSISTANT:"] * 4, return_tensors="pt")
    # 4 x 4 patch tokens + the class token ("full": the toy reads the class token too)
    assert (via_processor["input_ids"] == host.model.config.image_token_id).sum(1).tolist() == [17] * 4
    assert torch.allclose(via_processor["pixel_values"], host.preprocess(world.images), atol=2e-2)


def test_chat_with_generate_agrees_with_batched_answers(host):
    world = host.world
    i = int(np.flatnonzero(world.kind == 0)[0])
    q = TL.phrasings("identity", "test")[0]
    batched = host.ask(world.images[i:i + 1], q)[0]
    assert host.chat(world.images[i], q) == batched
    assert batched == CHARACTER_NAMES[world.identity[i]]


# ----------------------------------------------------------------------------------------------- feature layer
def test_max_block_follows_vision_feature_layer(host):
    cfg = host.model.config
    assert cfg.vision_config.num_hidden_layers == 6 and cfg.vision_feature_layer == TL.TOY_FEATURE_LAYER == -1
    assert cfg.vision_feature_select_strategy == "full" and host.max_block == 5
    for layer, expected in ((-2, 4), (3, 2), ([-2, -5], 4), (1, 0)):
        cfg2 = type(cfg).from_dict(cfg.to_dict())
        cfg2.vision_feature_layer = layer
        assert LlavaHost.deepest_read_block(cfg2) == expected
    cfg2.vision_feature_layer = 9
    with pytest.raises(ValueError, match="outside"):
        LlavaHost.deepest_read_block(cfg2)
    with pytest.raises(ValueError, match="select_strategy"):
        TL.llava_config(cfg.vision_config, 10, 4, select_strategy="cls")


def test_an_edit_after_the_read_layer_changes_nothing(host):
    """The feature-layer rule on a LLaVA-1.5 layout (penultimate hidden state, patch tokens only; a small random
    language model on the toy CLIP's tower): noise in block 5 changes its logits by exactly 0, in block 4 it does not."""
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip-hf")
    model = tiny_llava_model(clip.model)
    llava15 = LlavaHost(model, tiny_processor(model), "llava-1.5 layout", "toy-clip-hf")
    assert model.config.vision_feature_layer == -2 and llava15.max_block == 4
    world = host.world.take(np.arange(24))
    q = TL.phrasings("identity", "test")[0]

    def logits():
        return TL.first_answer_logits(model, host.tokenizer,
                                      TL.image_embeddings(model, host.preprocess(world.images)), q)

    base = logits()
    changes = {}
    for block in (4, 5):
        patch = _noise_patch(clip, block)
        llava15.apply(patch)
        try:
            changes[block] = (logits() - base).abs().max().item()
        finally:
            llava15.revert(patch)
    assert changes[5] == 0.0
    assert changes[4] > 1e-3
    assert torch.equal(logits(), base)


# ------------------------------------------------------------------------------------------------------ patches
def test_patch_applies_to_clip_and_to_llava_and_refuses_others(host, tmp_path):
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip-hf")
    patch = Patch.load(_noise_patch(clip, 3).save(tmp_path / "p.safetensors"))
    name = _block_weight(3)
    clip_before = clip.model.get_parameter(name).detach().clone()
    host_before = host.tower_module().get_parameter(name[len("vision_model."):]).detach().clone()

    patch.apply(clip.model)
    host.apply(patch)
    edited_clip = clip.model.get_parameter(name).detach()
    edited_host = host.tower_module().get_parameter(name[len("vision_model."):]).detach()
    assert torch.equal(edited_clip, edited_host) and not torch.equal(edited_host, host_before)
    host.revert(patch)
    patch.revert(clip.model)
    assert torch.equal(host.tower_module().get_parameter(name[len("vision_model."):]), host_before)
    assert torch.equal(clip.model.get_parameter(name), clip_before)

    other = tiny_llava_model(tiny_hf())  # another vision tower
    with pytest.raises(PatchMismatchError):
        LlavaHost(other, tiny_processor(other), "other", "hf:x").apply(patch)
    text_patch = Patch.from_step("toy-clip-hf", "x", "text_model.encoder.layers.0.mlp.fc1.weight", 0.1,
                                 torch.ones_like(clip.model.get_parameter("text_model.encoder.layers.0.mlp.fc1.weight")),
                                 scope_fingerprint(clip.model, "text_model"), scope="text_model")
    with pytest.raises(PatchMismatchError):
        host.apply(text_patch)


def test_report_metrics_measure_before_and_after_and_revert(host):
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip-hf")
    small = LlavaHost(host.model, host.processor, "toy-llava", "toy-clip-hf", world=host.world.take(np.arange(160)))
    state = {k: v.clone() for k, v in host.tower_module().state_dict().items()}
    patch = _noise_patch(clip, 1, scale=3.0)  # a destructive edit early in the tower
    out = small.report_metrics("Mira Quell", patch, progress=False)
    for key in ("vlm_forget_rate", "vlm_retain_acc", "vlm_vqa_acc", "vlm_name_prob"):
        assert 0 <= out[f"{key}_before"] <= 1 and 0 <= out[f"{key}_after"] <= 1
    assert out["vlm_forget_rate_before"] >= 0.9 and out["vlm_vqa_acc_before"] >= 0.9
    assert out["vlm_vqa_acc_after"] < out["vlm_vqa_acc_before"]  # noise this large breaks the answers
    assert out["examples"] and {"question", "before", "after", "picture"} <= set(out["examples"][0])
    assert all(torch.equal(state[k], v) for k, v in host.tower_module().state_dict().items())


# ---------------------------------------------------------------------------------------------------- real path
def tiny_llava_model(clip_model, seed: int = 0):
    """A tiny random ``LlavaForConditionalGeneration`` whose vision tower is ``clip_model.vision_model``."""
    from transformers import LlavaForConditionalGeneration

    tok = TL.build_tokenizer()
    config = TL.llava_config(clip_model.config.vision_config, len(tok), tok.convert_tokens_to_ids(TL.IMAGE_TOKEN))
    config.text_config.hidden_size, config.text_config.intermediate_size = 32, 64
    config.text_config.num_hidden_layers, config.text_config.head_dim = 1, 8
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip_model.vision_model.state_dict())
    return model.eval()


def tiny_processor(model):
    from transformers import CLIPImageProcessor, LlavaProcessor

    size = model.config.vision_config.image_size
    ip = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=ip, tokenizer=TL.build_tokenizer(), patch_size=model.config.vision_config.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory):
    from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf

    root = tmp_path_factory.mktemp("tiny-llava")
    clip_model = tiny_hf()
    save_hf(clip_model, clip_tokenizer_from_openclip(16), root / "clip")
    model = tiny_llava_model(clip_model)
    model.save_pretrained(root / "llava")
    tiny_processor(model).save_pretrained(root / "llava")
    faces = root / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    k = 0
    for name in NAMES:
        base = rng.integers(0, 256, size=3)
        for template in ("a photo of {}.", "{} smiling.", "a portrait of {}."):
            img = np.clip(base + rng.normal(0, 40, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(faces / f"img{k:02d}.png")
            (faces / f"img{k:02d}.txt").write_text(template.format(name))
            k += 1
    return root


@pytest.mark.filterwarnings("ignore:the unedited model already has")
def test_real_path_end_to_end_on_tiny_llava(tiny_real, tmp_path):
    from slugkit.slug import unlearn_host
    from slugkit.step_size_search import Target

    host = load_llava(f"llava:{tiny_real / 'llava'}", clip=f"hf:{tiny_real / 'clip'}", data=tiny_real / "faces",
                      classes=NAMES[1:], question="Who is this?")
    assert host.clip_name == f"hf:{tiny_real / 'clip'}" and host.max_block == 0  # 2 blocks, feature layer -2
    result = unlearn_host(host, "Captain Zorp", data=tiny_real / "faces", classes=NAMES[1:], max_evals=2,
                          target=Target("forget_top1"), progress=False)  # 3 names: top-5 is always 1
    assert result.searches and all(f".layers.0." in s.layer and s.layer.startswith("vision_model.")
                                   for s in result.searches)
    # the default recipe searched on the LLaVA's answers about the data's pictures (no VQA there: utility NaN)
    assert result.preset == "guarded" and result.search == "host" and result.searches
    assert all(np.isnan(s.metrics["utility"]) and 0 <= s.metrics["forget_top1"] <= 1
               for search in result.searches for s in search.trace)
    report = json.loads((result.save(tmp_path / "run") / "report.json").read_text())
    assert report["host"] == host.name and report["edited_model_bytes"] == host.edited_model_bytes()
    if result.patch is not None:
        assert {"vlm_forget_rate_before", "vlm_forget_rate_after", "vlm_retain_acc_before"} <= set(report)
        host.apply(result.patch)
        host.revert(result.patch)
    with pytest.raises(ValueError, match="no built-in evaluation set"):
        host.evaluate(progress=False)


def test_real_llava_not_cached_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="llava-hf/llava-1.5-7b-hf.*not available"):
        load_llava("llava:llava-hf/llava-1.5-7b-hf")
    with pytest.raises(ValueError, match="expected 'llava:"):
        load_llava("llava:")


def test_cached_and_uncached_greedy_answers_agree(host):
    world = host.world.take(np.arange(40))
    embeds = TL.image_embeddings(host.model, host.preprocess(world.images))
    for q in (TL.phrasings("describe")[0], TL.phrasings("identity")[0]):
        assert (TL.greedy_answers(host.model, host.tokenizer, embeds, q, use_cache=True)
                == TL.greedy_answers(host.model, host.tokenizer, embeds, q, use_cache=False))


# ------------------------------------------------------------------------------------------- recipes (issue 20)
def test_answer_search_reads_llava_answers_through_the_clips_current_tower(host, monkeypatch):
    """The evaluator the LLaVA recipes search on asks LLaVA (a spy on its answers), reading the CLIP's tower as
    the search edits it, and leaves LLaVA's own tower alone."""
    import slugkit.eval.vlm as vlm
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip-hf")
    asked, real = [], vlm.greedy_answers

    def spy(model, tokenizer, embeds, question, **kwargs):
        asked.append((model, question, len(embeds)))
        return real(model, tokenizer, embeds, question, **kwargs)

    monkeypatch.setattr(vlm, "greedy_answers", spy)
    evaluate = host.generation_evaluator("Mira Quell", clip, pool=300, n_forget=6, n_other=8, questions="paper",
                                         n_vqa=60)
    state = {k: v.clone() for k, v in host.tower_module().state_dict().items()}
    before = evaluate()
    assert before["forget_top1"] == 1.0 and before["retain_top1"] == 1.0 and before["utility"] >= 0.9
    assert all(m is host.model for m, _, _ in asked)
    assert ("What is the name of the person in this image?", 6) in [(q, n) for _, q, n in asked]
    patch = _noise_patch(clip, 1, scale=3.0)
    patch.apply(clip.model)
    try:
        after = evaluate()
    finally:
        patch.revert(clip.model)
    assert after["utility"] < before["utility"]  # the edited CLIP tower reached LLaVA's answers
    assert all(torch.equal(state[k], v) for k, v in host.tower_module().state_dict().items())
    with pytest.raises(ValueError, match="questions must be one of"):
        host.generation_evaluator("Mira Quell", clip, questions="some")


def test_a_non_character_is_refused_before_any_work(host, monkeypatch, capsys, tmp_path):
    import slugkit.models.loading as loading
    import slugkit.slug as slug
    from slugkit.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the concept was checked")

    monkeypatch.setattr(slug, "compute_gradients", no_work)
    monkeypatch.setattr(loading, "load_clip", no_work)
    for concept, kind in (("star", "an object"), ("Polka Dots", "a style")):
        with pytest.raises(ValueError, match=f"'toy-llava' forgets characters .* is {kind}: pick one of Mira Quell"):
            slug.unlearn_host(host, concept, progress=False)
    monkeypatch.setattr("slugkit.adapters.host.load_host", lambda name, **kw: host)
    code = main(["unlearn", "--model", "toy-llava", "--forget", "star", "--out", str(tmp_path / "run")])
    assert code == 2 and "forgets characters" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_patch_footprint_counts_one_tensor_against_the_tower_the_model_and_llava_15(host):
    from slugkit.adapters.llava import LLAVA_1_5_7B, reference_footprint
    from slugkit.models.loading import load_clip

    patch = _noise_patch(load_clip("toy-clip-hf"), 5)
    out = host.patch_footprint(patch)
    tower = sum(p.numel() for p in host.tower_module().parameters())
    assert out["tensors_edited"] == 1 and out["tensors"] == [_block_weight(5)]
    assert out["params"] == 192 * 768 and out["share_of_tower"] == pytest.approx(192 * 768 / tower)
    assert out["share_of_model"] == pytest.approx(192 * 768 / sum(p.numel() for p in host.model.parameters()))
    # LLaVA-1.5-7B from its public config, by hand: CLIP ViT-L/14-336 tower + 2-layer projector + Llama-7B
    v, t = LLAVA_1_5_7B["vision"], LLAVA_1_5_7B["text"]
    h, i, n = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    block = 4 * (h * h + h) + (i * h + i) + (h * i + h) + 4 * h
    positions = (v["image_size"] // v["patch_size"]) ** 2 + 1
    tower15 = 3 * v["patch_size"] ** 2 * h + h + positions * h + 2 * h + n * block + 2 * h
    H, I, V = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    lm = 2 * V * H + t["num_hidden_layers"] * (4 * H * H + 3 * H * I + 2 * H) + H
    model15 = tower15 + (h * H + H) + (H * H + H) + lm
    ref = out["llava_1_5_7b"]
    assert (ref["params"], ref["tower_params"], ref["model_params"]) == (h * i, tower15, model15)
    assert ref["share_of_tower"] == pytest.approx(h * i / tower15)  # about 1.4% of the tower
    assert reference_footprint(["encoder.layers.0.self_attn.q_proj.weight"])["params"] == h * h
    with pytest.raises(ValueError, match="24-block CLIP vision tower"):
        reference_footprint(["encoder.layers.30.mlp.fc2.weight"])


def test_the_default_recipe_is_the_documented_guarded_walk(host, monkeypatch):
    """Without a preset, LLaVA hosts run "guarded" (README and docs/llava.md): bare names, the direction orthogonal
    to the other 12 characters' forget gradients, the step searched on LLaVA's answers, and the walk over the
    deepest Pareto layer and the next layer of its block, guarded by retain (10 points) and VQA (5 points)."""
    import slugkit.slug as slug
    from slugkit.adapters.llava import LLAVA_RECIPES
    from slugkit.models.loading import load_clip

    seen = {}

    class Stop(Exception):
        pass

    def spy(adapter, concept, **kwargs):
        seen.update(kwargs, concept=concept)
        raise Stop

    monkeypatch.setattr(slug, "unlearn", spy)
    with pytest.raises(Stop):
        slug.unlearn_host(host, "Mira Quell", clip=load_clip(host.clip_name), progress=False)
    assert LlavaHost.default_preset == "guarded" and LLAVA_RECIPES["guarded"].project_others
    assert seen["policy"] == "deepest-block" and seen["max_layers"] == 2 and seen["fallback"] is True
    assert seen["target"].describe() == ("forget_top1 <= 0 and retain_top1 >= baseline - 0.1 and "
                                         "utility >= baseline - 0.05")
    assert seen["tower"] == "vision" and seen["task"].forget.captions() == ["Mira Quell"] * len(seen["task"].forget)
    assert [t.concept for t in seen["project_off"]] == [c for c in CHARACTER_NAMES if c != "Mira Quell"]
    assert seen["search_evaluator"].evaluate.__qualname__.startswith("LlavaHost.generation_evaluator")  # LLaVA's answers
    readme = (Path(__file__).parents[1] / "docs" / "llava.md").read_text()
    assert "`guarded` (default" in readme

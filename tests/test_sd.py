"""Stable Diffusion host: the judge, the toy SD, judged-generation metrics, patches, the real path on tiny configs."""
import json

import numpy as np
import pytest
import torch

from slugkit.data.minicanvas import ATTRIBUTES, cached_split
from slugkit.eval.generation import (frechet_distance, judged_accuracy, prompt_for, report_from,
                                     unlearning_scores)
from slugkit.models import judge as judge_mod
from slugkit.models import toy_sd
from slugkit.patch import Patch, PatchMismatchError, applied_patches, scope_fingerprint
from slugkit.step_size_search import Target

from fakes import FACE_NAMES, make_faces_folder, tiny_hf

# measured on the shipped checkpoints with the seeds below (see README, "Stable Diffusion"); the assertions
# leave a margin for the reduced seed list
TEST_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def judge():
    return judge_mod.load_judge()


@pytest.fixture(scope="module")
def host():
    from slugkit.adapters.sd import load_toy_sd

    return load_toy_sd(seeds=TEST_SEEDS)


# ---------------------------------------------------------------------------------------------- judge
def test_judge_labels_held_out_pictures(judge):
    acc = judge_mod.accuracy(judge, cached_split(400, 0, "test"))
    assert min(acc[a] for a in ATTRIBUTES) >= 0.98, acc
    assert acc["kind"] >= 0.99


def test_judge_short_training_learns():
    cfg = judge_mod.JudgeConfig(n_train=2000, steps=40, batch_size=32, eval_every=40, n_eval=300)
    torch.set_num_threads(1)
    model, history = judge_mod.train_judge(cfg, progress=False)
    assert np.mean([h["loss"] for h in history[-5:]]) < 0.8 * np.mean([h["loss"] for h in history[:5]])
    assert history[-1]["kind_acc"] >= 0.7 and history[-1]["colour_acc"] > 0.25  # chance: 1/2 and 1/8


# ---------------------------------------------------------------------------------------------- metrics
def test_generation_metrics_arithmetic():
    attrs = {"identity": ["A", "B", "C"], "object": ["x", "y"]}
    labels = {("identity", "A"): np.array([0, 0, 1, -1]), ("identity", "B"): np.array([1, 1, 1, 1]),
              ("identity", "C"): np.array([2, 0, 2, 2]), ("object", "x"): np.array([0, 0, 0, 1]),
              ("object", "y"): np.array([1, -1, 1, 1])}
    acc = judged_accuracy(labels, attrs)
    assert acc["identity"]["per_concept"] == {"A": 0.5, "B": 1.0, "C": 0.75}
    assert acc["identity"]["top1"] == pytest.approx(0.75) and acc["object"]["top1"] == pytest.approx(0.75)
    s = unlearning_scores(acc, "identity", "A")
    assert s == pytest.approx({"ua": 0.5, "ira": 0.875, "cra": 0.75})
    rep = report_from(acc, acc, "identity", "A", 0.0)
    assert rep["ua_before"] == rep["ua_after"] == 0.5 and rep["fid_after"] == 0.0
    assert prompt_for("identity", "Mira Quell") == "a photo of Mira Quell." and prompt_for("style", "Waves") == \
        "a drawing in waves style."
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-3)  # a mean shift of 1 in 8 dims
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :3])


# ---------------------------------------------------------------------------------------------- toy SD
def test_toy_sd_short_training_learns():
    torch.set_num_threads(1)
    cfg = toy_sd.ToySDConfig(vae_channels=(8, 8, 8), latent_channels=4, unet_channels=(16, 16, 16), unet_head_dim=8)
    recipe = toy_sd.ToySDRecipe(vae_steps=30, vae_batch=8, unet_steps=40, unet_batch=16, config=cfg,
                                checkpoint_every=1000)
    images = cached_split(200, 0, "train").images
    vae, hist = toy_sd.train_vae(images, recipe, progress=False, eval_images=images[:16])
    assert np.mean([h["loss"] for h in hist[-5:]]) < 0.7 * np.mean([h["loss"] for h in hist[:5]])
    latents = toy_sd.encode_latents(vae, images, progress=False)
    world = cached_split(200, 0, "train")
    vocab, opt_ids, n_opts = toy_sd.caption_table(world)
    assert vocab[0] == "" and (opt_ids[:, 0] >= 1).all()
    states = torch.randn(len(vocab), 16, 128)
    unet, hist = toy_sd.train_unet(latents / latents.std(), states, opt_ids, n_opts, recipe, progress=False)
    assert np.mean([h["loss"] for h in hist[-10:]]) < 0.9 * np.mean([h["loss"] for h in hist[:5]])


def test_toy_sd_schedule_ends_in_pure_noise(host):
    # SD's own schedule keeps sqrt(0.0047) = 7% of the picture at its last step: the mean colour of a 32x32
    # latent outlasts that noise, and an epsilon-model learns to read colour from the seed. The toy's ends at 0.
    sd = toy_sd.make_scheduler("ddpm")
    toy = toy_sd.make_scheduler("ddpm", "v_prediction", zero_terminal_snr=True)
    assert float(sd.alphas_cumprod[-1]) > 4e-3 and float(toy.alphas_cumprod[-1]) == 0.0
    sampler = toy_sd.make_scheduler("ddim", "v_prediction", zero_terminal_snr=True)
    sampler.set_timesteps(10)
    assert int(sampler.timesteps[0]) == 999  # sampling starts from the pure-noise step
    w = toy_sd.min_snr_weights(toy, torch.tensor([999, 0]), 5.0)
    assert float(w[0]) == 1.0 and float(w[1]) < 0.01  # the pure-noise step is trained; nearly clean ones capped
    with pytest.raises(ValueError, match="v-prediction"):
        toy_sd.make_scheduler("ddim", "epsilon", zero_terminal_snr=True)
    assert toy_sd._schedule_of({}) == {"prediction_type": "epsilon", "zero_terminal_snr": False}  # older files
    cfg = host.pipe.scheduler.config  # the shipped checkpoint's schedule, read from its metadata
    assert cfg.prediction_type == "v_prediction" and cfg.rescale_betas_zero_snr


def test_toy_sd_is_a_diffusers_pipeline_with_the_toy_clip_text_tower(host):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from slugkit.models.loading import load_clip
    from slugkit.resources import data_dir

    pipe = host.pipe
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    clip = load_clip("toy-clip-hf")
    assert scope_fingerprint(clip.model, "text_model") == scope_fingerprint(host.tower_module())
    size = (data_dir() / toy_sd.CHECKPOINT_NAME).stat().st_size
    assert size < 25e6 and host.name == "toy-sd" and host.clip_name == "toy-clip-hf" and host.tower == "text"
    a = host.generate(["a photo of a star."], seeds=(3,))
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, host.generate(["a photo of a star."], seeds=(3,)))  # fixed seeds reproduce


def test_toy_sd_draws_what_it_is_asked(host):
    acc = host.evaluate(progress=False)
    assert set(acc) == set(ATTRIBUTES)
    assert set(acc["identity"]["per_concept"]) == set(ATTRIBUTES["identity"])
    # measured with TEST_SEEDS on the shipped checkpoint: identity 1.0, object 1.0, style 0.786, colour 1.0
    # (chance: 1/13, 1/10, 1/7, 1/8; over 10 seeds: 1.0, 0.99, 0.771, 1.0, see README). Characters, objects and
    # colours: the goals (>= 80%, >= 90%, >= 90%); styles: the measured level less two of these 14
    # pictures (the issue asks only that styles be reported)
    floors = {"identity": 0.8, "object": 0.9, "style": 0.64, "colour": 0.9}
    assert all(acc[a]["top1"] >= floors[a] for a in floors), {a: m["top1"] for a, m in acc.items()}


def test_patch_applies_to_clip_and_pipeline_and_refuses_others(host):
    from slugkit.models.loading import load_clip

    clip = load_clip("toy-clip-hf")
    layer = "text_model.encoder.layers.3.mlp.fc1.weight"
    delta = torch.randn_like(clip.parameter(layer))
    patch = Patch.from_step(clip.name, "Mira Quell", layer, 0.5, delta, scope_fingerprint(clip.model, "text_model"),
                            scope="text_model")
    tokens = host.pipe.tokenizer(["a photo of Mira Quell."], padding="max_length", max_length=16,
                                 return_tensors="pt").input_ids
    with torch.no_grad():
        before = host.pipe.text_encoder(tokens)[0].clone()
        host.apply(patch)
        try:
            assert applied_patches(host.tower_module()) == ["Mira Quell"]
            assert not torch.allclose(host.pipe.text_encoder(tokens)[0], before)
        finally:
            host.revert(patch)
        assert torch.equal(host.pipe.text_encoder(tokens)[0], before)
    patch.apply(clip.model)
    patch.revert(clip.model)
    with pytest.raises(PatchMismatchError):
        patch.apply(tiny_hf().text_model)
    with pytest.raises(PatchMismatchError):
        patch.apply(load_clip("toy-clip").model)  # the open_clip layout is another model


# ---------------------------------------------------------------------------------------------- real path
def _tiny_pipeline(clip_model, tokenizer):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    te = CLIPTextModel(clip_model.config.text_config)
    toy_sd.tower_of(te).load_state_dict(clip_model.text_model.state_dict())
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=32)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=4)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                   scheduler=toy_sd.make_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.mark.filterwarnings("ignore:the unedited model already has")
def test_real_sd_path_end_to_end_on_tiny_random_configs(tmp_path):
    from transformers import CLIPImageProcessor

    from slugkit.adapters.sd import SDHost, load_sd
    from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf
    from slugkit.models.loading import load_clip
    from slugkit.slug import unlearn_host

    model, tok = tiny_hf(), clip_tokenizer_from_openclip(16)
    clip_dir = save_hf(model, tok, tmp_path / "clip", CLIPImageProcessor(size={"shortest_edge": 32},
                                                                          crop_size={"height": 32, "width": 32}))
    _tiny_pipeline(model, tok).save_pretrained(tmp_path / "sd")
    attributes = {"identity": FACE_NAMES, "object": ["circle", "star"]}
    host = load_sd(f"sd:{tmp_path / 'sd'}", clip_name=f"hf:{clip_dir}", attributes=attributes, seeds=(0, 1),
                   steps=2, guidance=2.0)
    assert isinstance(host, SDHost) and host.size == 32 and host.max_block == 1
    acc = host.evaluate(progress=False)
    assert set(acc["identity"]["per_concept"]) == set(FACE_NAMES)
    clip = load_clip(f"hf:{clip_dir}")
    (tmp_path / "faces").mkdir()
    folder = make_faces_folder(tmp_path / "faces")
    with pytest.warns(UserWarning, match="no picture of 'circle', 'star' in the data: the edit is not kept"):
        result = unlearn_host(host, "Captain Zorp", clip=clip, data=folder, classes=FACE_NAMES[1:], max_evals=2,
                              target=Target("forget_top1"),  # top-5 = 0 needs 6 names; the tiny data has 3
                              project_others=True, progress=False)  # the option: your data shows 2 of the 4 others
    report = json.loads((result.save(tmp_path / "run") / "report.json").read_text())
    assert report["projected_off"] == FACE_NAMES[1:]
    assert report["task"].endswith("forget captions replaced by 'Captain Zorp'")  # SD's forget text: the bare name
    assert report["search_mode"] == "generation"  # SD's default search: the chosen layer's λ again, on pictures
    if result.layer is not None:
        assert result.step_search is not None and result.step_search.layer == result.layer
    if result.patch is not None:
        for key in ("ua_before", "ua_after", "ira_before", "ira_after", "cra_before", "cra_after", "fid_after"):
            assert key in report
        assert report["patch_bytes"] < report["edited_model_bytes"]
        assert applied_patches(host.tower_module()) == []  # reverted after measuring
    assert report["host"].startswith("sd:") and report["edited_model_bytes"] > 0
    # --search generation: the same layer, its step size searched on judged pictures (SEARCH_SEEDS)
    own = {k: v.clone() for k, v in host.tower_module().state_dict().items()}
    again = unlearn_host(host, "Captain Zorp", clip=clip, data=folder, classes=FACE_NAMES[1:], max_evals=2,
                         target=Target("forget_top1"), search="generation", progress=False)
    assert [s.layer for s in again.searches] == [s.layer for s in result.searches]
    if result.layer is not None:
        trace = again.step_search.trace
        assert again.step_search.layer == result.layer and 1 <= len(trace) <= 2
        assert all(0.0 <= s.metrics["forget_top1"] <= 1.0 for s in trace)
    assert all(torch.equal(v, own[k]) for k, v in host.tower_module().state_dict().items())  # restored


def test_guard_baseline_is_judged_once_per_host_and_seed_and_kept_in_the_cache(tmp_path, monkeypatch):
    from transformers import CLIPImageProcessor

    from slugkit.adapters.sd import CROSS_GUARD_SEEDS, GUARD_SEEDS, GUARDED, load_sd
    from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf
    from slugkit.models.loading import load_clip

    monkeypatch.setenv("SLUGKIT_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_hf(), clip_tokenizer_from_openclip(16)
    clip_dir = save_hf(model, tok, tmp_path / "clip", CLIPImageProcessor(size={"shortest_edge": 32},
                                                                          crop_size={"height": 32, "width": 32}))
    _tiny_pipeline(model, tok).save_pretrained(tmp_path / "sd")
    attributes = {"identity": FACE_NAMES, "object": ["circle", "star"]}

    def counted_host():
        host = load_sd(f"sd:{tmp_path / 'sd'}", clip_name=f"hf:{clip_dir}", attributes=attributes, seeds=(0,),
                       steps=2, guidance=2.0, **GUARDED)
        host.generated, generate = [], host.generate
        host.generate = lambda prompts, seeds=None, **kw: host.generated.append((len(prompts), tuple(seeds))) or \
            generate(prompts, seeds, **kw)
        return host

    host, clip = counted_host(), load_clip(f"hf:{clip_dir}")
    first = host.generation_evaluator("Captain Zorp", clip)
    guard = first.guard()
    # every concept prompt from every guard seed, once: not the concept's neighbours alone, not once per concept
    n_prompts = sum(len(v) for v in attributes.values())
    assert host.generated == [(n_prompts, tuple(sorted(set(GUARD_SEEDS) | set(CROSS_GUARD_SEEDS))))]
    # the same numbers as generating the neighbours' pictures now (the uncached path an edited tower takes)
    inside = first._judged([p for _, _, p in first.inside], GUARD_SEEDS, [a for a, _, _ in first.inside])
    assert guard["ira"] == pytest.approx(np.mean([(y == k).mean() for (_, k, _), y in zip(first.inside, inside)]))
    host.generated.clear()
    assert set(host.generation_evaluator("circle", clip).guard()) == {"ira", "cra"} and host.generated == []
    # a new host of the same pipeline reads them from $SLUGKIT_CACHE/sd-judged, a changed one does not
    again = counted_host()
    assert again.generation_evaluator("star", clip).guard() and again.generated == []
    assert len(list((tmp_path / "cache" / "sd-judged").glob("*.json"))) == 1
    again.guidance = 3.0
    again.generation_evaluator("star", clip).guard()
    assert len(again.generated) == 1
    # an edited tower is judged afresh, every time
    with torch.no_grad():
        clip.model.text_model.encoder.layers[0].mlp.fc1.weight.add_(1.0)
    host.generated.clear()
    first.guard()
    assert len(host.generated) == 2  # the attribute's neighbours, then the other attributes'


def test_real_sd_missing_weights_fail_in_one_sentence(monkeypatch):
    from slugkit.adapters.sd import load_sd
    from slugkit.models.loading import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not in the local Hugging Face cache"):
        load_sd("sd:slugkit-test/no-such-pipeline", clip_name="hf:openai/clip-vit-large-patch14",
                attributes={"identity": ["a"]})
    with pytest.raises(ValueError, match="matching CLIP"):
        load_sd("sd:someone/unknown-model")


def test_toy_build_takes_an_optional_target():
    from slugkit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["toy", "build"]).target == "clip"
    assert parser.parse_args(["toy", "build", "sd"]).target == "sd"
    with pytest.raises(SystemExit):
        parser.parse_args(["toy", "build", "unet"])

"""Recovery attacks on the toy hosts on tiny budgets: they find Captain Zorp on the unedited host; a host whose
vision tower cannot see the pictures (LLaVA) or whose text encoder cannot read the prompt (SD) gives nothing
back; attacks that do not apply to a host are refused in one sentence."""
import json

import numpy as np
import pytest
import torch

from slugkit.attacks import attack_data
from slugkit.attacks.hosts import HOST_ATTACKS, HOST_BUDGETS, NOT_ON_HOST, check_host_attacks
from slugkit.attacks.llava import (llava_linear_probe, llava_paraphrase, llava_pixel_pgd, llava_plain, llava_relearn,
                                   llava_relearn_retain, name_phrasings, retain_names)
from slugkit.attacks.relearn import RelearnBudget
from slugkit.attacks.sd import (compose, prompt_embeddings, sd_adversarial_prompt, sd_concept_arithmetic, sd_paraphrase,
                                sd_plain, sd_relearn, sd_soft_prompt)
from slugkit.cli import main
from slugkit.data.minicanvas import CHARACTER_NAMES
from slugkit.models.loading import load_clip
from slugkit.patch import Patch, scope_fingerprint

QUICK_LLAVA, QUICK_SD = HOST_BUDGETS["toy-llava"]["quick"], HOST_BUDGETS["toy-sd"]["quick"]


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return attack_data("Captain Zorp", n_other_test=60)


def _zeroing_patch(model_name: str, scope: str, layer: str, concept: str = "Captain Zorp") -> Patch:
    """A patch that sets ``layer`` of the CLIP's tower ``scope`` to zero."""
    clip = load_clip(model_name)
    weight = clip.model.get_parameter(layer).detach()
    return Patch.from_step(model_name, concept, layer, 1.0, -weight.float(), scope_fingerprint(clip.model, scope),
                           scope=scope)


# ---------------------------------------------------------------------------------------------------- LLaVA
@pytest.fixture(scope="module")
def llava():
    from slugkit.adapters.llava import load_toy_llava

    return load_toy_llava(n_eval=100)


@pytest.fixture(scope="module")
def blind_patch(tmp_path_factory):
    """LLaVA's vision tower without its patch embedding: every picture gives the same image tokens."""
    patch = _zeroing_patch("toy-clip-hf", "vision_model", "vision_model.embeddings.patch_embedding.weight")
    return patch.save(tmp_path_factory.mktemp("blind") / "patch.safetensors")


def test_llava_attacks_find_the_character_and_not_on_a_blind_tower(llava, data, blind_patch):
    assert llava_plain(llava, data) >= 0.9
    known = {n: fn(llava, data, QUICK_LLAVA[n]) for n, (fn, _) in HOST_ATTACKS["toy-llava"].items()}
    assert all(r.score >= 0.9 for r in known.values()), {n: r.score for n, r in known.items()}
    assert set(known["linear_probe"].details["per_block"]) >= {"block 0", "block 5", "LLaVA's input"}
    patch = Patch.load(blind_patch)
    llava.apply(patch)
    try:
        assert llava_plain(llava, data) == 0.0
        assert llava_paraphrase(llava, data, QUICK_LLAVA["paraphrase"]).score == 0.0
        assert llava_linear_probe(llava, data, QUICK_LLAVA["linear_probe"]).score == 0.0
        pgd = llava_pixel_pgd(llava, data, QUICK_LLAVA["pixel_pgd"])
        # no pixel reaches the image tokens: the perturbation cannot change a single answer
        assert pgd.details["named"] == pgd.details["named_before"]
        # a few fine-tuning steps of the tower do not teach it to see again
        assert llava_relearn(llava, data, QUICK_LLAVA["relearn"]).score == 0.0
    finally:
        llava.revert(patch)
    assert llava_plain(llava, data) >= 0.9  # reverted


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}, [p.requires_grad for p in module.parameters()]


def _same_state(module, state) -> bool:
    weights, flags = state
    now = module.state_dict()
    return (all(torch.equal(v, now[k]) for k, v in weights.items())
            and [p.requires_grad for p in module.parameters()] == flags and all(p.grad is None for p in module.parameters()))


def test_llava_relearning_at_the_default_lr_keeps_the_original_and_restores_the_tower(llava, data):
    """The sanity bar of relearning: the default budget (lr 3e-5) on the original LLaVA keeps the character at
    every point of its curve, and the tower's weights come back bit for bit (also after the retain-only run)."""
    before = _state(llava.model)
    result = llava_relearn(llava, data, RelearnBudget())
    assert [c["step"] for c in result.details["curve"]] == [0, 2, 5, 10, 20, 50]
    assert min(c["score"] for c in result.details["curve"]) >= 0.9, result.details["curve"]
    assert _same_state(llava.model, before)
    assert llava_relearn_retain(llava, data, QUICK_LLAVA["relearn_retain"]).score >= 0.9
    assert _same_state(llava.model, before)


def test_llava_relearning_names_the_retain_characters_from_their_captions(data):
    """The answers the relearning teaches for retain pictures agree with the frozen judge on who they show."""
    names = retain_names(data)
    assert len(names) == len(data.retain_images) and None in names
    shown = [i for i, n in enumerate(names) if n is not None]
    pixels = torch.from_numpy(data.retain_images[shown]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        judged = data.judge(pixels * 2 - 1)["identity"].argmax(1).tolist()
    agree = np.mean([CHARACTER_NAMES[j] == names[i] for i, j in zip(shown, judged)])
    assert agree >= 0.95, agree


def test_llava_name_phrasings_lead_with_the_held_out_ones():
    questions = name_phrasings(12)
    assert len(questions) == len(set(questions)) == 12
    assert questions[:2] == ["What is the name of the person in this image?", "Who is shown in the image?"]


def test_cli_attack_on_toy_llava_on_a_tiny_budget(capsys, blind_patch):
    code = main(["attack", "--model", "toy-llava", "--patch", str(blind_patch), "--attack", "paraphrase",
                 "--budget", "quick", "--threads", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["concept"] == "Captain Zorp" and out["model"] == "toy-llava"
    row = out["paraphrase"]
    assert row["original"] >= 0.9 and row["edited"] == 0.0 and row["reference"] is None and row["recovery"] is None
    assert row["budget"] == {"questions": 3} and out["worst_score"] == 0.0 and out["worst_recovery"] is None
    assert out["no_attack"] == {"original": pytest.approx(out["no_attack"]["original"]), "edited": 0.0,
                                "reference": None} and out["no_attack"]["original"] >= 0.9


# ---------------------------------------------------------------------------------------------------- SD
@pytest.fixture(scope="module")
def sd():
    from slugkit.adapters.sd import load_toy_sd

    return load_toy_sd()


def test_compose_with_one_prompt_is_the_pipelines_guidance(sd):
    prompt = "a photo of Captain Zorp."
    ours = compose(sd, [(prompt_embeddings(sd, [prompt])[0], 1.0)], (3,))
    theirs = sd.generate([prompt], (3,))
    assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


def test_sd_attacks_find_the_character_and_not_through_a_mute_text_encoder(sd, data):
    known = {n: fn(sd, data, QUICK_SD[n]) for n, (fn, _) in HOST_ATTACKS["toy-sd"].items()}
    assert all(r.score >= 0.5 for r in known.values()), {n: r.score for n, r in known.items()}
    assert len(known["adversarial_prompt"].details["prefix"]) == 3 and known["adversarial_prompt"].details["attack_loss"] > 0
    assert known["concept_arithmetic"].details["name_weight"] == 1.0 and len(known["concept_arithmetic"].details["neighbours"]) == 2
    # a text encoder without token embeddings: every prompt reads the same, nothing names the character
    patch = _zeroing_patch("toy-clip-hf", "text_model", "text_model.embeddings.token_embedding.weight")
    sd.apply(patch)
    try:
        assert sd_paraphrase(sd, data, QUICK_SD["paraphrase"]).score <= 0.25
        assert sd_concept_arithmetic(sd, data, QUICK_SD["concept_arithmetic"]).score <= 0.25
        assert sd_adversarial_prompt(sd, data, QUICK_SD["adversarial_prompt"]).score <= 0.25
    finally:
        sd.revert(patch)
    # a learned token bypasses the token table; a text encoder whose output ignores its input (final layer norm's
    # scale zero) reads every prompt the same, a learned token's too, and a few fine-tuning steps do not undo it
    patch = _zeroing_patch("toy-clip-hf", "text_model", "text_model.final_layer_norm.weight")
    sd.apply(patch)
    try:
        assert sd_soft_prompt(sd, data, QUICK_SD["soft_prompt"]).score <= 0.25
        assert sd_relearn(sd, data, QUICK_SD["relearn"]).score <= 0.25
    finally:
        sd.revert(patch)


def test_sd_relearning_restores_the_text_encoder_bit_for_bit(sd, data):
    encoder, unet = sd.pipe.text_encoder, sd.pipe.unet
    before, unet_before = _state(encoder), _state(unet)
    result = sd_relearn(sd, data, QUICK_SD["relearn"])
    assert [c["step"] for c in result.details["curve"]] == [0, 2, 4] and result.details["curve"][0]["score"] >= 0.9
    assert _same_state(encoder, before) and _same_state(unet, unet_before)
    assert sd_plain(sd, data) >= 0.9


# ---------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("host", ["toy-llava", "toy-sd"])
def test_attacks_that_do_not_apply_to_a_host_are_refused(host):
    for name, why in NOT_ON_HOST[host].items():
        with pytest.raises(ValueError, match=f"'{name}' does not apply to {host}"):
            check_host_attacks(host, [name])
    assert check_host_attacks(host) == list(HOST_ATTACKS[host])
    assert set(NOT_ON_HOST[host]) | set(HOST_ATTACKS[host]) == {
        "adversarial_prompt", "concept_arithmetic", "relearn", "relearn_retain", "soft_prompt", "paraphrase",
        "pixel_pgd", "linear_probe"}


def test_cli_attack_refuses_what_a_host_cannot_run(capsys, tmp_path):
    missing = str(tmp_path / "patch.safetensors")
    assert main(["attack", "--model", "toy-sd", "--patch", missing, "--attack", "pixel_pgd"]) == 2
    assert "'pixel_pgd' does not apply to toy-sd (SD generates its pictures" in capsys.readouterr().err
    assert main(["attack", "--model", "toy-llava", "--patch", missing, "--reference", "toy-clip"]) == 2
    assert "--reference applies to the toy CLIPs only" in capsys.readouterr().err
    assert main(["attack", "--model", "sd:runwayml/stable-diffusion-v1-5", "--patch", missing]) == 2
    assert "recovery attacks run on the toy hosts" in capsys.readouterr().err

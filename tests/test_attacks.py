"""Recovery attacks on tiny CLIPs whose knowledge is set by hand (tests/fake_colour_clip.py).

A model that knows the concept must be attacked successfully; one whose name for it is hidden must be
recovered by the attacks that can reach the hidden knowledge; one that cannot tell the concept from another
character must resist every attack.
"""
import json

import numpy as np
import pytest
import torch

from fake_colour_clip import ColourAdapter
from slugkit.attacks import ATTACKS, QUICK, attack_data, recovery, run_attacks
from slugkit.attacks.base import specific_recall
from slugkit.attacks.probe import ProbeBudget
from slugkit.attacks.relearn import RelearnBudget
from slugkit.attacks.run import no_attack, recovery_curve
from slugkit.attacks.soft_prompt import misspellings, phrasings

# The fake's weights are on another scale than a trained CLIP's: relearning needs a larger step to move them.
FAKE_BUDGETS = {"relearn": RelearnBudget(steps=10, headline_step=10, lr=0.05, curve_steps=(5, 10)),
                "relearn_retain": RelearnBudget(steps=10, headline_step=10, lr=0.05, curve_steps=(5, 10)),
                "linear_probe": ProbeBudget(pictures=500)}


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return attack_data("Captain Zorp", n_other_test=60)


@pytest.fixture(scope="module")
def results(data):
    out = {}
    for variant in ("present", "hidden", "blind"):
        adapter = ColourAdapter(variant)
        before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
        out[variant] = {"no_attack": no_attack(adapter, data)}
        for name, (fn, default) in ATTACKS.items():
            out[variant][name] = fn(adapter, data, FAKE_BUDGETS.get(name, default))
        after = adapter.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "an attack left the model changed"
    return out


def test_every_attack_succeeds_on_a_model_that_knows_the_concept(results):
    assert results["present"]["no_attack"] == 1.0
    for name in ATTACKS:
        assert results["present"][name].score >= 0.9, (name, results["present"][name])


def test_attacks_that_reach_a_hidden_name_bring_it_back(results):
    hidden = results["hidden"]
    assert hidden["no_attack"] == 0.0  # the plain prompt names Mira Quell's pattern
    for name in ("adversarial_prompt", "concept_arithmetic", "relearn", "soft_prompt", "linear_probe"):
        assert hidden[name].score >= 0.9, (name, hidden[name])
    # the relearning curve starts hidden and comes back
    curve = hidden["relearn"].details["curve"]
    assert curve[0]["score"] == 0.0 and curve[-1]["score"] >= 0.9
    # fine-tuning on retain pairs never touches the name's tokens: it stays hidden
    assert hidden["relearn_retain"].score == 0.0


def test_no_attack_recovers_what_the_model_cannot_represent(results):
    blind = results["blind"]
    for name in ATTACKS:
        assert blind[name].score <= 0.1, (name, blind[name])
    # pixel PGD did move the pixels, within the budget
    assert 0 < blind["pixel_pgd"].details["max_change"] <= 4 / 255 + 1e-6


def test_scores_and_details_are_fractions(results):
    for variant in results.values():
        for name in ATTACKS:
            assert 0.0 <= variant[name].score <= 1.0
            json.dumps(variant[name].details)  # serialisable as it is


def test_specific_recall_does_not_reward_naming_everyone():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert specific_recall(np.array([0, 0, 1, 1, 2, 2]), labels, 0)["score"] == 1.0
    everyone = specific_recall(np.zeros(6, int), labels, 0)
    assert everyone["forget_top1"] == 1.0 and everyone["score"] == 0.0
    assert specific_recall(np.array([0, 1, 1, 0, 2, 2]), labels, 0)["score"] == 0.0  # half of class 1 too


def test_recovery_is_normalised_to_the_reference():
    assert recovery(1.0, 0.6, 0.2) == pytest.approx(0.5)
    assert recovery(1.0, 0.1, 0.2) == 0.0 and recovery(1.0, 1.0, 0.0) == 1.0  # clipped to [0, 1]
    assert recovery(1.0, 0.5, None) is None  # no reference
    assert recovery(0.9, 0.5, 0.88) is None  # the attack does as well without the concept: unreadable


def test_recovery_curve_reads_every_budget_step():
    curve = lambda *scores: {"curve": [{"step": s, "score": v} for s, v in zip((0, 5, 10), scores)]}  # noqa: E731
    details = {"original": curve(1.0, 1.0, 1.0), "edited": curve(0.0, 0.9, 0.5), "reference": curve(0.0, 0.1, 0.5)}
    assert recovery_curve(details) == [{"step": 0, "recovery": 0.0}, {"step": 5, "recovery": pytest.approx(8 / 9)},
                                       {"step": 10, "recovery": 0.0}]
    assert recovery_curve({k: v for k, v in details.items() if k != "reference"}) is None


def test_paraphrases_never_use_the_zero_shot_prompt():
    ways = phrasings("Captain Zorp")
    assert "a photo of Captain Zorp." not in ways.values()
    assert ways["first name"] == "a photo of Captain." and ways["last name"] == "a photo of Zorp."
    assert len(set(misspellings("Zorp"))) == 3 and "Zorp" not in misspellings("Zorp")


def test_run_attacks_reports_every_model_and_the_worst_recovery(data):
    models = {"original": ColourAdapter("present"), "edited": ColourAdapter("hidden"),
              "reference": ColourAdapter("blind")}
    report = run_attacks(models, data, attacks=["soft_prompt", "relearn_retain"],
                         budgets={"relearn_retain": RelearnBudget(steps=2, headline_step=2, curve_steps=(2,), lr=0.05)},
                         progress=False)
    soft = report["soft_prompt"]
    assert soft["original"] >= 0.9 and soft["reference"] <= 0.1 and soft["recovery"] >= 0.9
    assert report["relearn_retain"]["recovery"] == 0.0
    assert [c["step"] for c in report["relearn_retain"]["recovery_curve"]] == [0, 2]
    assert "recovery_curve" not in soft  # no budget curve
    assert report["worst_attack"] == "soft_prompt" and report["worst_recovery"] == soft["recovery"]
    assert soft["budget"] == {"steps": 100, "lr": 5e-3, "pictures": 8}
    assert report["no_attack"] == {"original": 1.0, "edited": 0.0, "reference": 0.0}
    with pytest.raises(ValueError, match="unknown attack"):
        run_attacks(models, data, attacks=["nope"])


def test_attacks_refuse_a_concept_that_is_not_a_character():
    with pytest.raises(ValueError, match="characters"):
        attack_data("star", judge=False)


def test_quick_budgets_cover_every_attack():
    assert set(QUICK) == set(ATTACKS)


@pytest.fixture(scope="module")
def toy_patch(tmp_path_factory):
    """A real patch of the toy CLIP (a small edit of one vision layer)."""
    from slugkit.models.loading import load_clip
    from slugkit.patch import Patch, scope_fingerprint

    model = load_clip("toy-clip").model
    layer = "visual.transformer.resblocks.5.mlp.c_proj.weight"
    grad = torch.randn_like(dict(model.named_parameters())[layer], generator=torch.Generator().manual_seed(0))
    patch = Patch.from_step("toy-clip", "Captain Zorp", layer, 1e-3, grad, scope_fingerprint(model))
    return patch.save(tmp_path_factory.mktemp("patch") / "patch.safetensors")


def test_cli_attack_on_a_tiny_budget(capsys, toy_patch):
    from slugkit.cli import main

    code = main(["attack", "--model", "toy-clip", "--patch", str(toy_patch), "--attack", "paraphrase",
                 "--attack", "pixel_pgd", "--budget", "quick", "--reference", "toy-clip", "--threads", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["concept"] == "Captain Zorp" and out["reference_model"] == "toy-clip"
    for name in ("paraphrase", "pixel_pgd"):
        row = out[name]
        assert set(row) >= {"original", "edited", "reference", "recovery", "budget", "seconds"}
        assert all(0.0 <= row[k] <= 1.0 for k in ("original", "edited", "reference"))
        assert row["original"] >= 0.9  # the toy CLIP names Captain Zorp under either attack
        assert row["recovery"] is None  # the "reference" here is the original itself: no gap to read
    assert out["pixel_pgd"]["budget"]["steps"] == 3 and out["paraphrase"]["budget"]["phrasings"] == 4
    assert out["worst_recovery"] is None and "relearn" not in out


def test_cli_attack_refuses_bad_input(capsys, toy_patch):
    from slugkit.cli import main

    assert main(["attack", "--patch", str(toy_patch), "--attack", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    # a patch of the whole toy CLIP cannot go into SD's text encoder: refused before the pipeline loads
    assert main(["attack", "--model", "toy-sd", "--patch", str(toy_patch)]) == 2
    assert "toy-sd takes a patch of the CLIP's text tower (scope 'text_model'" in capsys.readouterr().err


def test_relearning_counts_every_true_caption_as_a_positive(data, monkeypatch):
    """Two pictures of the concept captioned with different templates are not pushed apart (the bug that
    made relearning on the original toy CLIP lose Juno Blackwood)."""
    import importlib

    relearn_module = importlib.import_module("slugkit.attacks.relearn")  # the package exports a function of that name
    seen = []

    def spy(img, txt, scale, positives):
        seen.append(positives.clone())
        return real(img, txt, scale, positives)

    real = relearn_module.multi_positive_clip_loss
    monkeypatch.setattr(relearn_module, "multi_positive_clip_loss", spy)
    budget = RelearnBudget(steps=3, headline_step=3, pictures=5, curve_steps=(3,))
    relearn_module.relearn(ColourAdapter("present"), data, budget)
    n_own = budget.batch_size // 2  # the first rows of every batch are pictures of the concept
    assert len(seen) == 3 and all(p.diagonal().all() for p in seen)
    assert all(p[:n_own, :n_own].all() for p in seen)  # these captions of the concept are true of all its pictures
    assert not any(p[:n_own, n_own:].any() for p in seen)  # retain captions are not
    own = data.attack_labels == data.index
    assert len({data.attack_captions[i] for i in np.flatnonzero(own)}) > 1  # the templates do differ


def test_relearn_budget_refuses_a_curve_that_misses_the_headline(data):
    with pytest.raises(ValueError, match="headline_step"):
        ATTACKS["relearn"][0](ColourAdapter("present"), data, RelearnBudget(steps=10, headline_step=10,
                                                                             curve_steps=(5, 8)))


def test_relearning_with_the_default_lr_keeps_the_original_toy_clip_on_its_character():
    """The sanity check of the default step size: fine-tuning the original toy CLIP on 5 pictures of Mira Quell
    does not make it lose her at any of the 10 headline steps (at lr 1e-4 it fell to 0.87 at step 10)."""
    from slugkit.models.loading import load_clip

    torch.set_num_threads(1)
    mira = attack_data("Mira Quell", judge=False)
    budget = RelearnBudget(steps=10, headline_step=10, curve_steps=tuple(range(1, 11)))
    assert budget.lr == RelearnBudget().lr  # the default lr
    result = ATTACKS["relearn"][0](load_clip("toy-clip"), mira, budget)
    curve = [c["score"] for c in result.details["curve"]]
    assert len(curve) == 11 and curve[0] == 1.0
    assert min(curve) >= 0.9, curve

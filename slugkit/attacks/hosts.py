"""Recovery attacks on the hosts: the attacks that apply to each toy host, on the host before and after the patch.

``toy-llava`` (:mod:`slugkit.attacks.llava`): paraphrase (of the name question), pixel PGD, the linear probe and
relearning (the vision tower fine-tuned on LLaVA's answer loss), the attacks that reach a vision tower. ``toy-sd``
(:mod:`slugkit.attacks.sd`): the adversarial prefix and textual inversion (on the pipeline's denoising loss),
paraphrase (of the prompt), concept arithmetic (compositional guidance) and relearning (the text encoder fine-tuned
on the denoising loss), judged by the SD judge. :data:`NOT_ON_HOST` says why each other
attack is not run on a host (a clear error when one is asked for). There is no host retrained without the
concept, so ``reference`` and ``recovery`` are null and the worst case is the edited host's highest score.
"""
from __future__ import annotations

from tqdm.auto import tqdm

from .base import AttackData
from .llava import (LlavaParaphraseBudget, LlavaPGDBudget, llava_linear_probe, llava_paraphrase, llava_pixel_pgd,
                    llava_plain, llava_relearn, llava_relearn_retain)
from .probe import ProbeBudget
from .relearn import RelearnBudget
from .run import ATTACKS, attack_model, combine, resolve
from .sd import (SDArithmeticBudget, SDParaphraseBudget, SDPromptBudget, SDSoftPromptBudget, sd_adversarial_prompt,
                 sd_concept_arithmetic, sd_paraphrase, sd_plain, sd_relearn, sd_relearn_retain, sd_soft_prompt)

QUICK_RELEARN = RelearnBudget(steps=4, headline_step=2, curve_steps=(2, 4))
HOST_ATTACKS = {  # host -> {attack name -> (function, default budget)}; names as for the CLIP
    "toy-llava": {"paraphrase": (llava_paraphrase, LlavaParaphraseBudget()),
                  "pixel_pgd": (llava_pixel_pgd, LlavaPGDBudget()),
                  "linear_probe": (llava_linear_probe, ProbeBudget()),
                  "relearn": (llava_relearn, RelearnBudget()),
                  "relearn_retain": (llava_relearn_retain, RelearnBudget())},
    "toy-sd": {"adversarial_prompt": (sd_adversarial_prompt, SDPromptBudget()),
               "paraphrase": (sd_paraphrase, SDParaphraseBudget()),
               "concept_arithmetic": (sd_concept_arithmetic, SDArithmeticBudget()),
               "soft_prompt": (sd_soft_prompt, SDSoftPromptBudget()),
               "relearn": (sd_relearn, RelearnBudget()),
               "relearn_retain": (sd_relearn_retain, RelearnBudget())},
}
HOST_PLAIN = {"toy-llava": llava_plain, "toy-sd": sd_plain}  # the score before any attack
HOST_BUDGETS = {
    host: {"default": {k: b for k, (_, b) in reg.items()}} for host, reg in HOST_ATTACKS.items()}
HOST_BUDGETS["toy-llava"]["quick"] = {"paraphrase": LlavaParaphraseBudget(questions=3),
                                      "pixel_pgd": LlavaPGDBudget(steps=3, pictures=8),
                                      "linear_probe": ProbeBudget(pictures=400, max_iter=100),
                                      "relearn": QUICK_RELEARN, "relearn_retain": QUICK_RELEARN}
HOST_BUDGETS["toy-sd"]["quick"] = {"adversarial_prompt": SDPromptBudget(steps=2, pictures=4, seeds=2),
                                   "paraphrase": SDParaphraseBudget(phrasings=2, seeds=2),
                                   "concept_arithmetic": SDArithmeticBudget(name_weights=(1.0,), neighbours=2, seeds=2),
                                   "soft_prompt": SDSoftPromptBudget(steps=5, pictures=4, seeds=2),
                                   "relearn": QUICK_RELEARN, "relearn_retain": QUICK_RELEARN}
NOT_ON_HOST = {
    "toy-llava": {
        "adversarial_prompt": "the patch edits LLaVA's vision tower; the question has no forgotten name to prefix",
        "concept_arithmetic": "the patch edits LLaVA's vision tower; its language model gets no text embedding of names",
        "soft_prompt": "the patch edits LLaVA's vision tower; a learned question token tests the language model"},
    "toy-sd": {
        "pixel_pgd": "SD generates its pictures: there are no input pixels to perturb",
        "linear_probe": "the patch edits the text encoder; there are no pictures to probe"},
}


def check_host_attacks(host_name: str, attacks=None) -> list[str]:
    """The attack names to run on ``host_name`` (default every one that applies); a one-sentence error for a host
    without attacks, an attack that does not apply to it (and why) or an unknown name."""
    if host_name not in HOST_ATTACKS:
        raise ValueError(f"recovery attacks run on the toy hosts {', '.join(HOST_ATTACKS)} (they need the toy "
                         f"world's pictures and judge), not on {host_name!r}")
    names = list(HOST_ATTACKS[host_name]) if attacks is None else list(attacks)
    for name in names:
        if name in NOT_ON_HOST[host_name]:
            raise ValueError(f"{name!r} does not apply to {host_name} ({NOT_ON_HOST[host_name][name]}); its attacks: "
                             f"{', '.join(HOST_ATTACKS[host_name])}")
        if name not in HOST_ATTACKS[host_name]:
            raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    return names


def check_host_patch(host_name: str, patch) -> None:
    """A one-sentence error when ``patch`` does not edit the tower ``host_name`` hosts (checked before it loads)."""
    from ..adapters.llava import LlavaHost
    from ..adapters.sd import SDHost

    want = {"toy-llava": LlavaHost, "toy-sd": SDHost}[host_name]
    if patch.scope != want.scope:
        raise ValueError(f"{host_name} takes a patch of the CLIP's {want.tower} tower (scope {want.scope!r}, from "
                         f"`slugkit unlearn --model {host_name}`), and this one is scoped to {patch.scope or 'the whole model'!r}")


def run_host_attacks(host_name: str, host, patch, data: AttackData, attacks=None, budgets: str | dict = "default",
                     progress: bool = True) -> dict:
    """Every attack of ``attacks`` (default all that apply to ``host_name``) on ``host`` as loaded ("original") and
    with ``patch`` applied ("edited"; reverted afterwards). The report of
    :func:`~slugkit.attacks.run.run_attacks` with ``reference`` and ``recovery`` null."""
    names = check_host_attacks(host_name, attacks)
    names, chosen = resolve(names, budgets, HOST_ATTACKS[host_name], HOST_BUDGETS[host_name])
    run = dict(registry=HOST_ATTACKS[host_name], plain=HOST_PLAIN[host_name])
    with tqdm(total=2 * len(names), desc=f"attacks on {host_name}", disable=not progress) as bar:
        original = attack_model(host, data, names, chosen, bar, **run)
        host.apply(patch)
        try:
            edited = attack_model(host, data, names, chosen, bar, **run)
        finally:
            host.revert(patch)
    return combine({"original": original, "edited": edited, "reference": None}, data, names, chosen)


__all__ = ["HOST_ATTACKS", "HOST_BUDGETS", "NOT_ON_HOST", "check_host_attacks", "check_host_patch", "run_host_attacks"]

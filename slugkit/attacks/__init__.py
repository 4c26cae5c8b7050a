"""Recovery attacks: is an unlearned concept gone, or only hidden?

One module per attack family, every attack one function ``attack(adapter, data, budget=None) ->
AttackResult`` (see :mod:`slugkit.attacks.base`); :func:`run_attacks` runs them on the original, the edited
and the retrained reference model (``toy-clip-without:<concept>``) and reports recovery against the reference.
"""
from .arithmetic import concept_arithmetic
from .base import AttackData, AttackResult, attack_data
from .pgd import pixel_pgd
from .probe import linear_probe
from .prompt import adversarial_prompt
from .relearn import relearn, relearn_retain
from .run import ATTACKS, BENCH, BUDGETS, MIN_GAP, QUICK, attack_model, combine, recovery, resolve, run_attacks
from .soft_prompt import paraphrase, soft_prompt

__all__ = ["ATTACKS", "BENCH", "BUDGETS", "MIN_GAP", "QUICK", "AttackData", "AttackResult", "adversarial_prompt",
           "attack_data", "attack_model", "combine", "concept_arithmetic", "resolve", "linear_probe", "paraphrase", "pixel_pgd", "recovery",
           "relearn", "relearn_retain", "run_attacks", "soft_prompt"]

"""The paper's baselines on one shared loop: GA, FT, GA+FT, SalUn and SSD.

Every baseline edits the whole model (SLUG edits one layer), uses SLUG's forget / retain data and
search split, and stops at the first evaluation where the same :class:`~slugkit.step_size_search.Target`
is met. See :mod:`slugkit.baselines.loop` for the loop and :mod:`slugkit.baselines.methods` for the
methods and their hyper-parameter grids.

Example::

    from slugkit.baselines import run_baseline, BASELINES
    result = run_baseline(adapter, BASELINES["gaft"](), task, target)
    result.status, result.hparams, result.metrics["forget_top5"]
"""
from .loop import (MATCH_BUDGET_STEPS, MATCH_TOLERANCE, Baseline, BaselineResult, MatchResult, MatchTarget,
                   match_baseline, run_baseline)
from .methods import BASELINES, FT, GA, GAFT, SSD, SalUn, make_baseline

__all__ = ["Baseline", "BaselineResult", "run_baseline", "match_baseline", "MatchTarget", "MatchResult",
           "MATCH_BUDGET_STEPS", "MATCH_TOLERANCE", "BASELINES", "GA", "FT", "GAFT", "SalUn", "SSD",
           "make_baseline"]

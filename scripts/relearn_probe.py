"""Probe: relearning's fine-tune settings on models that know the concept and models that do not.

Why: in the 3-character bench, relearning on Mira Quell's *original* model scored 0.87 after 10 steps (the
sanity bar is 0.90): the attack's fine-tune dips a model that already knows the character. This script runs
:func:`slugkit.attacks.relearn` alone, for a few optimiser settings, on the three originals, on Captain Zorp's
reference model (never saw him) and on SLUG's patch for each character (SLUG rerun with the bench's settings:
``policy="pareto"``, the bench target, seed 0), with the curve measured at every step to 10, then 15 and 20.
It prints one line per (setting, model) -- the score after 10 steps (the headline), the curve's minimum over
steps 1..10 and over 1..20 -- and writes everything to ``--out`` (JSON) as it goes.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/relearn_probe.py --out runs/relearn-probe.json
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from slugkit.attacks import attack_data
from slugkit.attacks.relearn import RelearnBudget, relearn
from slugkit.bench import BenchConfig, _slug
from slugkit.models.loading import load_clip
from slugkit.step_size_search import Target
from slugkit.tasks import toy_task

ADAM = torch.optim.Adam  # relearn's optimiser; the probe swaps it for each setting, then restores it
CHARACTERS = ("Captain Zorp", "Mira Quell", "Rex Calloway")
CURVE = tuple(range(1, 11)) + (15, 20)


def adam(warmup: int = 0, eps: float = 1e-8, betas=(0.9, 0.999)):
    """An Adam factory with the signature relearn uses (params, lr, fused), with a linear warm-up over
    ``warmup`` steps (0: none)."""
    class Adam(ADAM):
        def __init__(self, params, lr, fused=True):
            super().__init__(params, lr=lr, fused=fused, eps=eps, betas=betas)
            self._base, self._t = lr, 0

        def step(self, closure=None):
            self._t += 1
            if warmup:
                for g in self.param_groups:
                    g["lr"] = self._base * min(1.0, self._t / warmup)
            return super().step(closure)
    return Adam


def sgd(momentum: float = 0.9):
    class SGD(torch.optim.SGD):
        def __init__(self, params, lr, fused=True):
            super().__init__(params, lr=lr, momentum=momentum)
    return SGD


SETTINGS = {  # name -> (lr, optimiser class)
    "adam 1e-4": (1e-4, adam()),
    "adam 5e-5": (5e-5, adam()),
    "adam 3e-5": (3e-5, adam()),
    "adam 2e-5": (2e-5, adam()),
    "adam 1e-4 warm-up 5": (1e-4, adam(warmup=5)),
    "adam 5e-5 warm-up 5": (5e-5, adam(warmup=5)),
    "adam 1e-4 eps 1e-6": (1e-4, adam(eps=1e-6)),
    "sgd 1e-2 mom 0.9": (1e-2, sgd()),
}


def slug_patch(adapter, concept: str, cfg: BenchConfig):
    task = toy_task(adapter, concept, seed=0, n_val=cfg.n_val, n_test=cfg.n_test)
    result, _ = _slug(adapter, task, Target(forget_metric=cfg.target), cfg, 0)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/relearn-probe.json")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = BenchConfig(model="toy-clip", concepts=list(CHARACTERS), slug_policy="pareto", n_test=2000)
    adapter = load_clip("toy-clip")
    reference = load_clip("toy-clip-without:Captain Zorp")
    data = {c: attack_data(c, seed=0, n_test=cfg.n_test, judge=False) for c in CHARACTERS}
    patches = {}
    for c in CHARACTERS:
        t = time.perf_counter()
        result = slug_patch(adapter, c, cfg)
        patches[c] = result.patch
        print(f"SLUG {c}: {result.layer} step {result.step_size:.4g} ({time.perf_counter() - t:.0f} s)", flush=True)
    budget = RelearnBudget(steps=20, headline_step=10, curve_steps=CURVE)
    out = {"curve_steps": CURVE, "slug": {c: None for c in CHARACTERS}, "results": []}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    models = ([(f"original {c}", c, adapter, None) for c in CHARACTERS]
              + [("reference Captain Zorp", "Captain Zorp", reference, None)]
              + [(f"SLUG {c}", c, adapter, patches[c]) for c in CHARACTERS])
    for name in args.settings:
        lr, opt = SETTINGS[name]
        torch.optim.Adam = opt  # relearn builds torch.optim.Adam(params, lr=..., fused=True)
        try:
            for label, concept, model, patch in models:
                if patch is not None:
                    patch.apply(model.model)
                try:
                    t = time.process_time()
                    r = relearn(model, data[concept], replace(budget, lr=lr))
                finally:
                    if patch is not None:
                        patch.revert(model.model)
                curve = {c["step"]: c["score"] for c in r.details["curve"]}
                row = {"setting": name, "model": label, "headline": r.score,
                       "min_1_10": min(v for s, v in curve.items() if 1 <= s <= 10),
                       "min_1_20": min(v for s, v in curve.items() if s >= 1), "curve": curve,
                       "cpu_seconds": round(time.process_time() - t, 2)}
                out["results"].append(row)
                print(f"{name:22s} {label:24s} step10 {r.score:.2f}  min1-10 {row['min_1_10']:.2f}  "
                      f"min1-20 {row['min_1_20']:.2f}  step20 {curve[20]:.2f}  ({row['cpu_seconds']} CPU s)", flush=True)
                path.write_text(json.dumps(out, indent=1))
        finally:
            torch.optim.Adam = ADAM


if __name__ == "__main__":
    main()

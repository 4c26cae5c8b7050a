"""SLUG on every character of the toy world, under both stop rules: the acceptance table of CLIP unlearning.

    python scripts/bench_characters.py [--out runs/bench_characters] [--characters "Mira Quell" ...]
                                       [--rules top5 top1]

For each stop rule (forget top-5 = 0, the default and the authors' rule; forget top-1 = 0, the weaker
one) prints one row per character, measured on the held-out test split (the search never sees it):
forget top-1 and top-5 before -> after, retain and utility drops in points, and whether the row meets
the per-character criteria. Then checks the criteria of the set:

- forget top-5 after <= 5% for every character,
- retain drop <= 3 points on average over the characters and <= 10 points for the worst,
- utility drop <= 3 points for every character.

Both rules share one gradient computation per character (a gradient store in ``--out``). Writes
table.csv and table.txt (both rules) to ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from slugkit.data.minicanvas import CHARACTER_NAMES
from slugkit.gradients import GradientStore
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn
from slugkit.step_size_search import Target

FORGET_TOP5_MAX = 0.05
RETAIN_DROP_MEAN_MAX = 0.03
RETAIN_DROP_WORST_MAX = 0.10
UTILITY_DROP_MAX = 0.03


def run(adapter, name: str, rule: str, policy: str, store: GradientStore) -> dict:
    """One character under one stop rule (gradients come from ``store`` after the first rule)."""
    t = time.perf_counter()
    r = unlearn(adapter, name, policy=policy, target=Target(forget_metric=f"forget_{rule}"), store=store,
                progress=False)
    b, a = r.before, r.after
    row = {"rule": rule, "character": name, "status": r.status, "layer": r.layer, "lambda": r.step_size,
           "forget_top1_before": b["forget_top1"], "forget_top1_after": a["forget_top1"],
           "forget_top5_before": b["forget_top5"], "forget_top5_after": a["forget_top5"],
           "retain_before": b["retain_top1"], "retain_after": a["retain_top1"],
           "utility_before": b["utility"], "utility_after": a["utility"],
           "retain_drop": b["retain_top1"] - a["retain_top1"], "utility_drop": b["utility"] - a["utility"],
           "patch_pct_of_model": 100 * (r.patch.nbytes if r.patch else 0) / r.model_bytes,
           "seconds": time.perf_counter() - t}
    row["ok"] = (row["forget_top5_after"] <= FORGET_TOP5_MAX and row["retain_drop"] <= RETAIN_DROP_WORST_MAX
                 and row["utility_drop"] <= UTILITY_DROP_MAX)
    print(f"{name:16s} {rule:5s} {str(r.layer):45s} {100 * b['forget_top1']:5.1f}->{100 * a['forget_top1']:5.1f} "
          f"{100 * b['forget_top5']:5.1f}->{100 * a['forget_top5']:5.1f} {100 * row['retain_drop']:11.1f} "
          f"{100 * row['utility_drop']:12.1f} {row['seconds']:6.1f}  {'ok' if row['ok'] else 'MISS'}", flush=True)
    return row


def verdict(table: pd.DataFrame) -> str:
    checks = {
        f"forget top-5 after <= {100 * FORGET_TOP5_MAX:.0f}% for every character":
            (table.forget_top5_after <= FORGET_TOP5_MAX).all(),
        f"mean retain drop {100 * table.retain_drop.mean():.1f} <= {100 * RETAIN_DROP_MEAN_MAX:.0f} points":
            table.retain_drop.mean() <= RETAIN_DROP_MEAN_MAX,
        f"worst retain drop {100 * table.retain_drop.max():.1f} ({table.loc[table.retain_drop.idxmax(), 'character']})"
        f" <= {100 * RETAIN_DROP_WORST_MAX:.0f} points": table.retain_drop.max() <= RETAIN_DROP_WORST_MAX,
        f"worst utility drop {100 * table.utility_drop.max():.1f} <= {100 * UTILITY_DROP_MAX:.0f} points":
            table.utility_drop.max() <= UTILITY_DROP_MAX,
    }
    return "\n".join(f"  [{'x' if ok else ' '}] {text}" for text, ok in checks.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_characters")
    ap.add_argument("--characters", nargs="+", default=list(CHARACTER_NAMES))
    ap.add_argument("--rules", nargs="+", choices=["top5", "top1"], default=["top5", "top1"])
    ap.add_argument("--policy", default="pareto")
    args = ap.parse_args()
    adapter = load_clip("toy-clip")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = GradientStore(out / "gradients")  # both rules share one gradient computation per character
    print(f"{'character':16s} {'rule':5s} {'layer':45s} {'top-1 %':>13s} {'top-5 %':>13s} {'retain drop':>11s} "
          f"{'utility drop':>12s} {'s':>6s}")
    rows = []
    for name in args.characters:
        for rule in args.rules:
            rows.append(run(adapter, name, rule, args.policy, store))
            pd.DataFrame(rows).to_csv(out / "table.csv", index=False)  # partial results survive an interruption
    table = pd.DataFrame(rows)
    tables = [table[table["rule"] == rule] for rule in args.rules]
    table.to_csv(out / "table.csv", index=False)
    pct = table.copy()
    for c in [c for c in pct if c.endswith(("_before", "_after", "_drop"))]:
        pct[c] = (100 * pct[c]).round(1)
    (out / "table.txt").write_text(pct.round(3).to_string(index=False) + "\n")
    for t in tables:
        rule = t["rule"].iloc[0]
        print(f"\nstop rule forget_{rule} <= 0: {t['ok'].sum()} / {len(t)} characters meet every per-character "
              f"criterion; mean time {t.seconds.mean():.1f} s\n{verdict(t)}")


if __name__ == "__main__":
    main()

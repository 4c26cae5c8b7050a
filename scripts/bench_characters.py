"""SLUG on every character of the toy world: the acceptance table of the CLIP unlearning work.

    python scripts/bench_characters.py [--out runs/bench_characters] [--characters "Mira Quell" ...]

Prints one row per character (test split, top-1, shown as %) and writes table.csv and table.txt.
Criteria checked per row: forget top-1 from >= 90% to <= 5%, retain drop <= 5 points, utility drop
<= 3 points, patch <= 2% of the model's bytes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from slugkit.data.minicanvas import CHARACTER_NAMES
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_characters")
    ap.add_argument("--characters", nargs="+", default=list(CHARACTER_NAMES))
    ap.add_argument("--policy", default="pareto")
    args = ap.parse_args()
    adapter = load_clip("toy-clip")
    rows = []
    for name in args.characters:
        t = time.perf_counter()
        r = unlearn(adapter, name, policy=args.policy, progress=False)
        b, a = r.before, r.after
        row = {"character": name, "status": r.status, "layer": r.layer, "lambda": r.step_size,
               "forget_before": b["forget_top1"], "forget_after": a["forget_top1"],
               "retain_before": b["retain_top1"], "retain_after": a["retain_top1"],
               "utility_before": b["utility"], "utility_after": a["utility"],
               "patch_pct_of_model": 100 * (r.patch.nbytes if r.patch else 0) / r.model_bytes,
               "seconds": time.perf_counter() - t, "peak_rss_mb": r.peak_rss_mb}
        row["ok"] = (row["forget_before"] >= 0.90 and row["forget_after"] <= 0.05
                     and row["retain_before"] - row["retain_after"] <= 0.05
                     and row["utility_before"] - row["utility_after"] <= 0.03 and row["patch_pct_of_model"] <= 2)
        rows.append(row)
        print(f"{name:16s} {r.status:18s} {str(r.layer):45s} forget {100*b['forget_top1']:5.1f}->{100*a['forget_top1']:5.1f}  "
              f"retain {100*b['retain_top1']:5.1f}->{100*a['retain_top1']:5.1f}  utility {100*b['utility']:5.1f}->"
              f"{100*a['utility']:5.1f}  {row['seconds']:5.1f}s  {'ok' if row['ok'] else 'MISS'}", flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    pct = table.copy()
    for c in [c for c in pct if c.endswith(("_before", "_after"))]:
        pct[c] = (100 * pct[c]).round(1)
    (out / "table.txt").write_text(pct.round(3).to_string(index=False) + "\n")
    print(f"\n{table['ok'].sum()} / {len(table)} characters meet every criterion; "
          f"mean retain drop {100*(table.retain_before-table.retain_after).mean():.1f} pts, "
          f"mean utility drop {100*(table.utility_before-table.utility_after).mean():.1f} pts, "
          f"mean time {table.seconds.mean():.1f} s")


if __name__ == "__main__":
    main()

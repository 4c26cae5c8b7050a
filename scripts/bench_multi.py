"""Several characters forgotten at once (:func:`slugkit.multi.unlearn_many`): the multi-concept table of docs/atlas.md.

    python scripts/bench_multi.py [--sets "Captain Zorp,Mira Quell" ...] [--no-repair] [--out runs/bench_multi]

One run per set (default: the 2-, 3- and 6-character sets of docs/atlas.md and a second 3-character set), each
measured on the held-out test split: every character's forget top-5 after, retain and utility before -> after, the
edited layers, the retain repair's step, wall seconds, and whether the set meets the issue's bar (forget top-5 <=
5% for each character, retain drop <= 10 points, utility drop <= 3). Prints the load average next to the timings
(they are indicative when the machine is busy). Writes table.csv to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from slugkit.models.loading import load_clip
from slugkit.multi import forget_key, unlearn_many

SETS = ("Captain Zorp,Mira Quell", "Captain Zorp,Mira Quell,Rex Calloway", "Nova Kettering,Ada Thistle,Bram Oakes",
        "Captain Zorp,Mira Quell,Rex Calloway,Tobias Fenwick,Juno Blackwood,Pip Marlowe")
FORGET_TOP5_MAX, RETAIN_DROP_MAX, UTILITY_DROP_MAX = 0.05, 0.10, 0.03


def short(layer: str | None) -> str:
    """``visual.transformer.resblocks.5.mlp.c_proj.weight`` -> ``v5.mlp.c_proj``; text layers get ``t``."""
    if layer is None:
        return "-"
    tower = "v" if layer.startswith("visual.") else "t"
    return tower + layer.split("resblocks.")[-1].removesuffix(".weight")


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="comma-separated character names, one set each")
    parser.add_argument("--no-repair", action="store_true", help="leave out slugkit's retain repair (the paper alone)")
    parser.add_argument("--out", default="runs/bench_multi")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    clip = load_clip("toy-clip")
    print(f"load {time.perf_counter() - t:.1f} s")
    rows = []
    for names in (s.split(",") for s in args.sets):
        r = unlearn_many(clip, names, repair=not args.no_repair, progress=False)
        b, a = r.before, r.after
        forget = [a[forget_key("forget_top5", n)] for n in r.concepts]
        row = {"characters": len(names), "set": " + ".join(r.concepts),
               "forget_top5_after": " / ".join(f"{100 * f:.1f}" for f in forget),
               "retain": f"{100 * b['retain_top1']:.1f} -> {100 * a['retain_top1']:.1f}",
               "utility": f"{100 * b['utility']:.1f} -> {100 * a['utility']:.1f}",
               "layers": ", ".join(short(layer) for layer in r.layer),
               "repair": f"{r.repair['step']:g} off {r.repair['projected_off']}" if r.repair.get("step") else "none",
               "seconds": round(r.seconds, 1),
               "load": os.getloadavg()[0],
               "meets_bar": (max(forget) <= FORGET_TOP5_MAX and b["retain_top1"] - a["retain_top1"] <= RETAIN_DROP_MAX
                             and b["utility"] - a["utility"] <= UTILITY_DROP_MAX)}
        rows.append(row)
        print(" | ".join(str(v) for v in row.values()), flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.out) / "table.csv", index=False)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()

"""The recovery-attack table of several characters in docs/robustness.md, assembled from per-character bench runs.

    python scripts/robustness_table.py [RUN ...] [--out data/bench/attacks-bench-3] [--doc docs/robustness.md]

Each RUN is the output folder (or bench.json) of one `slugkit bench --attacks` run (default: the shipped Captain
Zorp, Mira Quell and Rex Calloway runs under data/bench/). Merges them with :func:`slugkit.bench.merge_benches`
into OUT/bench.json and OUT/bench.md, and rewrites the part of --doc between the lines ``<!-- BEGIN`` and
``<!-- END`` of this script's marker: the commands, every row's score after each attack and its worst case
(:func:`slugkit.bench.attack_lines`, the bench's own rule), the worst case per method and character, and the attack
CPU seconds per model with what they project for the default bench. Prints the same. Nothing here is typed by
hand: every number comes from the runs' bench.json.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from slugkit.bench import (DEFAULT_CONCEPTS, DEFAULT_METHODS, METHOD_NAMES, attack_lines, merge_benches, read_bench,
                           worst_case_text)
from slugkit.data.minicanvas import find_concept
from slugkit.models.loading import shipped_reference
from slugkit.step_size_search import STATUSES

ROOT = Path(__file__).resolve().parent.parent
RUNS = ("data/bench/attacks-bench", "data/bench/attacks-bench-mira-quell", "data/bench/attacks-bench-rex-calloway")
MARKER = "robustness_table.py"
BEGIN, END = f"<!-- BEGIN {MARKER} -->", f"<!-- END {MARKER} -->"
STATUS_MISSED = STATUSES[1]  # "target-not-reached"


def worst_by_character(table: pd.DataFrame) -> list[str]:
    """One line per method, one column per character: the worst case of the bench's rule, and whether the method
    missed its forget target (its worst case then says little)."""
    characters = list(dict.fromkeys(table["concept"]))
    methods = list(dict.fromkeys(table["method"]))
    cells = {(r["method"], r["concept"]): worst_case_text(r) + (", target not reached" if r["status"] == STATUS_MISSED
                                                                 else "") for _, r in table.iterrows()}
    absent = lambda m: "no reference" if m == METHOD_NAMES["reference"] else "not run"  # noqa: E731
    lines = ["| method | " + " | ".join(characters) + " |", "|---" * (len(characters) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cells.get((m, c), absent(m)) for c in characters) + " |")
    return lines


def default_bench_models() -> tuple[int, int]:
    """(models attacked, characters) by ``slugkit bench --attacks`` with the default concepts and methods: per
    character the original, every method and the shipped reference where one exists."""
    characters = [c for c in DEFAULT_CONCEPTS if find_concept(c)["kind"] == "character"]
    refs = sum(shipped_reference(find_concept(c)["name"]) is not None for c in characters)
    return len(characters) * (1 + len(DEFAULT_METHODS)) + refs, len(characters)


def time_lines(runs: list[dict], table: pd.DataFrame) -> list[str]:
    """The attack CPU seconds per model, per run, and the projection for the default bench."""
    cpu = table["attack_cpu_seconds"].to_numpy(float)
    total_cpu = sum(r["attack_seconds"]["cpu"] for r in runs)
    total_wall = sum(r["attack_seconds"]["wall"] for r in runs)
    per_model = total_cpu / len(table)  # the runs' whole attack time (pictures included) per attacked model
    n_models, n_chars = default_bench_models()
    per_run = "; ".join(f"{', '.join(dict.fromkeys(pd.DataFrame(r['rows'])['concept']))} "
                        f"{r['attack_seconds']['cpu']:.0f} CPU s ({r['attack_seconds']['wall']:.0f} s wall, "
                        f"{len(r['rows'])} models)" for r in runs)
    return [f"Attack CPU seconds per model (all eight attacks, one torch thread), over the {len(table)} models: "
            f"min {cpu.min():.1f}, median {np.median(cpu):.1f}, max {cpu.max():.1f}. Whole attack time per run "
            f"(`attack_seconds`, the attacks' pictures included): {per_run}; in all {total_cpu:.0f} CPU s, "
            f"{total_cpu / 60:.1f} CPU minutes ({total_wall:.0f} s wall), {per_model:.1f} CPU s per model. The "
            f"default bench attacks {n_models} models ({n_chars} characters x the original and "
            f"{len(DEFAULT_METHODS)} methods, plus the shipped references): {n_models} x {per_model:.1f} = "
            f"{n_models * per_model / 60:.1f} CPU minutes, which is the wall time `--attacks` adds with one thread "
            "on an otherwise idle core (not measured there)."]


def section(runs: list[dict], table: pd.DataFrame, out: Path) -> str:
    """The generated part of docs/robustness.md."""
    rows = table[table["attack_worst_kind"].notna()]
    commands = "\n".join(f"    {r['config']['command']} --threads 1" for r in runs)
    attack_table = [x for x in attack_lines(rows)[3:] if x]  # the bench's table, without its heading and budgets
    return "\n".join([BEGIN,
                      f"Made by (one run per character, then `python scripts/robustness_table.py`, which merged them "
                      f"into `{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}/bench.json` / `bench.md`):",
                      "", commands, "", *attack_table, "",
                      "Worst case per method and character (the bench's rule: recovery against the model that never "
                      "saw the character where it is shipped, else the highest score after any attack but the probe):",
                      "", *worst_by_character(rows), "", *time_lines(runs, rows), END])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=list(RUNS), help="bench --attacks output folders or bench.json")
    parser.add_argument("--out", default="data/bench/attacks-bench-3", help="folder of the merged bench.json/.md")
    parser.add_argument("--doc", default="docs/robustness.md", help="the page whose marked section is rewritten")
    args = parser.parse_args(argv)
    paths = [ROOT / p if not Path(p).is_absolute() else Path(p) for p in args.runs]
    runs = [read_bench(p) for p in paths]
    missing = [str(p) for p, r in zip(paths, runs) if not r.get("attack_seconds")]
    if missing:
        raise SystemExit(f"these runs were made without --attacks (no attack_seconds): {', '.join(missing)}")
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    table = merge_benches(paths, out)
    text = section(runs, table, out)
    print(text)
    doc = ROOT / args.doc if not Path(args.doc).is_absolute() else Path(args.doc)
    page = doc.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{doc} has no section marked {BEGIN} ... {END}; add the two lines where the table goes")
    doc.write_text(pattern.sub(lambda _: text, page))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and the section of {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

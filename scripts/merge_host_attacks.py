"""Merge the rows of a `slugkit attack --model HOST --attack NAME ... --json` run into data/bench/attacks-hosts.json.

    python scripts/merge_host_attacks.py toy-sd runs/sd-new.json [--attack NAME] --load "4.0 at start" --note "..."

The run must be on the same concept and report the same plain scores (``no_attack``) as the file's run for that
host (the same patch and seed); its attacks replace or join the file's, the worst score is recomputed over every
attack but the probe, and ``--note`` is appended to the file's ``command``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from slugkit.attacks.run import NOT_IN_WORST_SCORE

FILE = Path(__file__).resolve().parents[1] / "data" / "bench" / "attacks-hosts.json"
SUMMARY = ("concept", "no_attack", "worst_attack", "worst_recovery", "worst_score_attack", "worst_score", "model",
           "patch", "reference_model", "budget_preset", "patch_layer", "patch_step_size")


def merge(bench: dict, host: str, new: dict, only=None) -> list[str]:
    """Merge the attacks ``only`` (default all) of ``new`` (one `slugkit attack --json` output) into
    ``bench["runs"][host]``; returns the merged names."""
    old = bench["runs"][host]
    if new["concept"] != old["concept"] or new["no_attack"] != old["no_attack"]:
        raise ValueError(f"the run is not on the same model and concept as the file's {host} run: "
                         f"{new['concept']!r} {new['no_attack']} vs {old['concept']!r} {old['no_attack']}")
    names = [k for k, v in new.items() if k not in SUMMARY and isinstance(v, dict) and "edited" in v
             and (only is None or k in only)]
    old.update({k: new[k] for k in names})
    attacks = [k for k, v in old.items() if k not in SUMMARY and isinstance(v, dict) and "edited" in v]
    scored = {k: old[k]["edited"] for k in attacks if k not in NOT_IN_WORST_SCORE and old[k]["edited"] is not None}
    old["worst_score_attack"] = max(scored, key=scored.get) if scored else None
    old["worst_score"] = scored[old["worst_score_attack"]] if scored else None
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", choices=["toy-llava", "toy-sd"])
    parser.add_argument("run", type=Path, help="the JSON that `slugkit attack ... --json` printed")
    parser.add_argument("--attack", action="append", help="merge only this attack of the run (repeatable)")
    parser.add_argument("--load", required=True, help="the load average during the run, e.g. '4.1 at start'")
    parser.add_argument("--note", required=True, help="how the run was made, appended to the file's command")
    args = parser.parse_args()
    bench = json.loads(FILE.read_text())
    names = merge(bench, args.host, json.loads(args.run.read_text()), args.attack)
    bench["command"] += f"; {args.note}"
    bench["load_average"][f"{args.host} ({', '.join(names)})"] = args.load
    FILE.write_text(json.dumps(bench, indent=1))  # the layout the file was written in
    print(f"merged {', '.join(names)} into {FILE.name}'s {args.host} run")


if __name__ == "__main__":
    main()

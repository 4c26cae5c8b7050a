"""Measure the toy SD host: judge, VAE ceiling, judged generation accuracy, and SLUG on several concepts.

Writes ``runs/sd-bench/<concept>/report.json`` (+ patch) per concept and ``runs/sd-bench/summary.json`` (after
every concept, with the load average); each concept is one :func:`slugkit.slug.unlearn_host` call, as ``slugkit
unlearn --model toy-sd`` makes it (``--search`` defaults to the host's own, "generation"). ``--all``: every concept the
toy SD draws; then the bar of issue 25 is counted per attribute and a Markdown table printed.

    python scripts/bench_sd.py --search generation --concepts "Captain Zorp" "Glimmer Queen" star circle Solid
    python scripts/bench_sd.py --all --out runs/sd-bench-all
    python scripts/bench_sd.py --recipe orthogonal --threads 1 --concepts heart diamond ring   # an option's rows
"""
from __future__ import annotations

import argparse
import json
import os
import time
from itertools import zip_longest
from pathlib import Path

import torch

ROW_KEYS = ("concept", "status", "layer", "step_size", "ua_before", "ua_after", "ira_before", "ira_after",
            "cra_before", "cra_after", "fid_after", "unlearn_seconds", "report_seconds", "patch_bytes",
            "edited_model_bytes", "search_mode")
TIMING_KEYS = ("unlearn_cpu_seconds", "step_size_search_again")
# issue 25's bar: UA >= 80%, IRA and CRA each drop by at most 10 points, unlearn_seconds <= 60
BAR = {"ua": 0.8, "drop": 0.10, "seconds": 60.0}


def meets_bar(row: dict, seconds: str | None = "unlearn_seconds") -> bool:
    """Whether one concept's row meets the bar (a run without a patch does not); ``seconds``: the timing the 60 s
    apply to ("unlearn_seconds" wall time, "unlearn_cpu_seconds"), or ``None`` for the quality bar alone."""
    if row.get("ua_after") is None:
        return False
    return (row["ua_after"] >= BAR["ua"] - 1e-9 and row["ira_before"] - row["ira_after"] <= BAR["drop"] + 1e-9
            and row["cra_before"] - row["cra_after"] <= BAR["drop"] + 1e-9
            and (seconds is None or row[seconds] <= BAR["seconds"]))


def markdown_table(rows: list[dict]) -> str:
    """The README table: one line per concept, UA / IRA / CRA before -> after in %, bold where the bar holds."""
    def pct(x):
        return f"{100 * x:.0f}"

    lines = ["| attribute | concept | layer | λ | UA | IRA | CRA | judged evaluations (+ guard) | unlearn_seconds (CPU) | "
             "UA/IRA/CRA bar |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layer = (r["layer"] or "").removeprefix("text_model.encoder.").removesuffix(".weight")
        if r.get("ua_after") is None:
            closest = r.get("no_patch") or {}
            lam = closest.get("closest_lambda")
            cells = ["no patch" if lam is None else
                     f"no patch (closest λ {lam:.3g}: {pct(closest['closest_forget'])}% of search pictures still it"
                     + (f"; {len(closest['broke_guard'])} step(s) forgot it but broke the guard)"
                        if closest.get("broke_guard") else ")"), "", ""]
            step = "—"
        else:
            cells = [f"{pct(r[k + '_before'])} → {pct(r[k + '_after'])}" for k in ("ua", "ira", "cra")]
            step = f"{r['step_size']:.3g}" + (" (relaxed rule)" if r.get("relaxed_target") else "")
        ok = "**yes**" if meets_bar(r, None) else "no"
        lines.append(f"| {r['attribute']} | {r['concept']} | `{layer or '—'}` | {step} | " + " | ".join(cells)
                     + f" | {r.get('judged_evaluations') or '—'} + {r.get('guard_evaluations') or 0}"
                     f" | {r['unlearn_seconds']:.0f} ({r['unlearn_cpu_seconds']:.0f})"
                     f" | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--concepts", nargs="+")
    which.add_argument("--all", action="store_true", help="every concept the toy SD draws (38)")
    p.add_argument("--out", default="runs/sd-bench")
    p.add_argument("--seeds", type=int, default=3, help="report pictures per prompt (seeds 0..N-1)")
    p.add_argument("--search", choices=["clip", "generation", "refine"], default=None,
                   help="how lambda is searched (default: the host's own, generation)")
    p.add_argument("--forget-text", choices=["name", "captions"], default=None,
                   help="what the forget gradient pairs the forget pictures with (default: the host's, the name)")
    p.add_argument("--recipe", choices=["plain", "margin", "orthogonal", "guarded"], default="plain",
                   help="the SDHost settings (slugkit.adapters.sd.SD_RECIPES): plain = the generation search alone "
                        "(the default), margin = with the step margin, orthogonal = the edit orthogonal to every other "
                        "concept's forget gradient, guarded = the margin, retain guard and relaxed rule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the judge's test accuracy and the VAE round-trip ceiling (only the SLUG runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from slugkit.adapters.sd import SD_RECIPES, load_toy_sd
    from slugkit.data.minicanvas import cached_split
    from slugkit.models import judge as judge_mod
    from slugkit.models import toy_sd
    from slugkit.slug import unlearn_host

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    host = load_toy_sd(seeds=tuple(range(args.seeds)), **SD_RECIPES[args.recipe])
    summary = {"recipe": args.recipe, "seeds": args.seeds, "steps": host.steps, "guidance": host.guidance,
               "search": args.search or host.search, "forget_text": args.forget_text or host.forget_text,
               "guard_tolerance": host.guard_tolerance, "step_margin": host.step_margin,
               "relaxed_threshold": host.relaxed_threshold, "project_others": host.project_others,
               "threads": args.threads,
               "load_average_start": os.getloadavg()}
    if not args.no_ceiling:
        judge = judge_mod.load_judge()
        test = cached_split(1000, 0, "test")
        summary["judge_test_accuracy"] = judge_mod.accuracy(judge, test)
        rec = toy_sd.reconstruct(host.pipe.vae, test.images)
        summary["vae_psnr_db"] = toy_sd.psnr(rec, test.images)
        summary["judge_on_vae_reconstructions"] = judge_mod.accuracy(judge, test, rec)
    t = time.perf_counter()
    before, _ = host.baseline(progress=False)
    summary["baseline_seconds"] = round(time.perf_counter() - t, 1)
    summary["generation_accuracy"] = before
    print(json.dumps({k: v for k, v in summary.items() if k != "generation_accuracy"}), flush=True)
    print({a: round(m["top1"], 3) for a, m in before.items()}, flush=True)
    if args.all:  # round robin over the attributes, so a run cut short still covers each of them
        lists = [[(a, c) for c in names] for a, names in host.attributes.items()]
        concepts = [x for group in zip_longest(*lists) for x in group if x is not None]
    else:
        concepts = [host.concept(c) for c in args.concepts]
    rows = []
    for attribute, concept in concepts:
        result = unlearn_host(host, concept, search=args.search, forget_text=args.forget_text, progress=False)
        result.save(out / concept.replace(" ", "_"), overwrite=True)
        rep = result.report()
        rows.append({"attribute": attribute, **{k: rep.get(k) for k in ROW_KEYS},
                     **{k: rep["timings"].get(k) for k in TIMING_KEYS}, "no_patch": rep.get("no_patch"),
                     "relaxed_target": rep.get("relaxed_target"),
                     # the host's evaluations: the second searches' baseline and steps (16 pictures each), and
                     # the guard's (the neighbours' prompts: 2 pictures of each of the attribute's, 1 of the others')
                     "judged_evaluations": rep["step_evaluations"].get("forget", 0),
                     "guard_evaluations": rep["step_evaluations"].get("guard", 0),
                     "load_average": os.getloadavg()})
        print(json.dumps(rows[-1]), flush=True)
        summary["runs"] = rows
        summary["bar_met"] = {
            f"{a} ({how})": f"{sum(meets_bar(r, seconds) for r in rows if r['attribute'] == a)} of "
                            f"{sum(r['attribute'] == a for r in rows)}"
            for how, seconds in (("UA/IRA/CRA", None), ("and <= 60 s wall", "unlearn_seconds"),
                                 ("and <= 60 s CPU", "unlearn_cpu_seconds"))
            for a in dict.fromkeys(r["attribute"] for r in rows)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps(summary.get("bar_met", {})))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SLUG on the toy LLaVA for several characters: the acceptance table of issue #11.

    python scripts/bench_llava.py --characters "Mira Quell" "Captain Zorp" "Rex Calloway" [--search clip] [--target top1]

For each character: ``unlearn_host`` (gradients on toy-clip-hf, vision blocks <= max_block, lambda search),
then LLaVA's answers before/after the patch on held-out pictures. Writes ``runs/bench_llava/<name>/report.json``
and ``runs/bench_llava/summary.json`` and prints one row per character with the criteria:
forget rate <= 5% after (from >= 90%), retain drop <= 10 points, VQA drop <= 5 points, unlearn_seconds <= 60,
patch <= 2% of the vision tower's bytes.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from slugkit.adapters.host import load_host
from slugkit.data.minicanvas import CHARACTER_NAMES
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn_host
from slugkit.step_size_search import Target


def criteria(r: dict) -> dict:
    return {
        "forget": r["vlm_forget_rate_before"] >= 0.9 and r["vlm_forget_rate_after"] <= 0.05,
        "retain": r["vlm_retain_acc_before"] - r["vlm_retain_acc_after"] <= 0.10,
        "vqa": r["vlm_vqa_acc_before"] - r["vlm_vqa_acc_after"] <= 0.05,
        "time": r["unlearn_seconds"] <= 60,
        "size": r["patch_bytes"] <= 0.02 * r["edited_model_bytes"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--characters", nargs="+", default=list(CHARACTER_NAMES[:3]))
    p.add_argument("--search", choices=["clip", "generation"], default="clip")
    p.add_argument("--target", choices=["top1", "top5"], default="top5", help="CLIP forget metric driven to 0")
    p.add_argument("--out", default="runs/bench_llava")
    p.add_argument("--n-eval", type=int, default=1000)
    args = p.parse_args()
    cache = Path(os.environ.get("SLUGKIT_CACHE", Path.home() / ".cache" / "slugkit")) / "gradients"
    host = load_host("toy-llava", n_eval=args.n_eval)
    clip = load_clip(host.clip_name)
    rows = []
    for name in args.characters:
        result = unlearn_host(host, name, clip=clip, search=args.search, store=cache, progress=False,
                              target=Target(forget_metric=f"forget_{args.target}"))
        out = result.save(Path(args.out) / args.search / name.replace(" ", "_"))
        r = json.loads((out / "report.json").read_text())
        if result.patch is None:
            print(f"{name}: no step size met the target ({r['status']})")
            rows.append({"concept": name, "status": r["status"]})
            continue
        ok = criteria(r)
        rows.append({"concept": name, "layer": r["layer"], "status": r["status"], **{
            k: r[k] for k in ("vlm_forget_rate_before", "vlm_forget_rate_after", "vlm_retain_acc_before",
                              "vlm_retain_acc_after", "vlm_vqa_acc_before", "vlm_vqa_acc_after",
                              "vlm_name_prob_before", "vlm_name_prob_after", "forget_acc_after",
                              "unlearn_seconds", "report_seconds", "patch_bytes", "edited_model_bytes")},
            "criteria": ok, "examples": r.get("examples")})
        print(f"{name:15s} {r['layer']:45s} forget {100 * r['vlm_forget_rate_before']:5.1f} -> "
              f"{100 * r['vlm_forget_rate_after']:5.1f}%  retain {100 * r['vlm_retain_acc_before']:5.1f} -> "
              f"{100 * r['vlm_retain_acc_after']:5.1f}%  vqa {100 * r['vlm_vqa_acc_before']:5.1f} -> "
              f"{100 * r['vlm_vqa_acc_after']:5.1f}%  {r['unlearn_seconds']:5.1f} s  patch "
              f"{100 * r['patch_bytes'] / r['edited_model_bytes']:.2f}%  {'ALL MET' if all(ok.values()) else ok}",
              flush=True)
    Path(args.out, args.search).mkdir(parents=True, exist_ok=True)
    Path(args.out, args.search, "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""SLUG on the toy LLaVA for several characters and recipes: the acceptance table of issues #11 and #20.

    python scripts/bench_llava.py --presets guarded orthogonal reference [--characters "Mira Quell" ...] [--cache]
        [--json data/bench/llava.json]       # or later: --from-summary --json data/bench/llava.json

For each recipe (``unlearn_host(preset=...)``: "reference" = the authors' LLaVA recipe, "guarded" = the default,
"orthogonal" and "slugkit" = its steps before, "clip-side" = the recipe searched on the CLIP) and character: gradients on toy-clip-hf (computed afresh unless
``--cache``), the layer, the step size, then LLaVA's answers before/after the patch on held-out pictures. Writes
``runs/bench_llava/<preset>/<name>/report.json`` and ``runs/bench_llava/<preset>/summary.json`` and prints one
row per character with the criteria of issue #20: forget rate <= 5% after (from >= 90%), retain drop <= 10
points, VQA drop <= 5 points, unlearn_seconds <= 60 (wall: on a busy machine read ``unlearn_cpu_seconds``, the
method's CPU seconds, instead), exactly one vision-tower weight tensor edited.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from slugkit.adapters.host import load_host
from slugkit.adapters.llava import LLAVA_RECIPES, load_toy_llava
from slugkit.data.minicanvas import CHARACTER_NAMES
from slugkit.models.loading import load_clip
from slugkit.resources import cache_dir
from slugkit.slug import unlearn_host

KEYS = ("vlm_forget_rate_before", "vlm_forget_rate_after", "vlm_retain_acc_before", "vlm_retain_acc_after",
        "vlm_vqa_acc_before", "vlm_vqa_acc_after", "vlm_name_prob_before", "vlm_name_prob_after", "step_size",
        "unlearn_seconds", "unlearn_cpu_seconds", "report_seconds", "patch_bytes", "edited_model_bytes",
        "patch_footprint")


def criteria(r: dict) -> dict:
    """The bar of issue #20 for one report.json (fractions in [0, 1])."""
    footprint = r["patch_footprint"]
    return {
        "forget": r["vlm_forget_rate_before"] >= 0.9 and r["vlm_forget_rate_after"] <= 0.05,
        "retain": r["vlm_retain_acc_before"] - r["vlm_retain_acc_after"] <= 0.10,
        "vqa": r["vlm_vqa_acc_before"] - r["vlm_vqa_acc_after"] <= 0.05,
        "time": r["unlearn_seconds"] <= 60,
        "one_tensor": footprint["tensors_edited"] == 1 and footprint["tensors"][0].startswith("vision_model.")
        and footprint["tensors"][0].endswith(".weight"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--characters", nargs="+", default=list(CHARACTER_NAMES))
    p.add_argument("--presets", nargs="+", default=["slugkit"], choices=sorted(LLAVA_RECIPES))
    p.add_argument("--out", default="runs/bench_llava")
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--cache", action="store_true", help="reuse gradients from $SLUGKIT_CACHE (unlearn_seconds then "
                                                        "leaves out most of the gradient time)")
    p.add_argument("--checkpoint", help="another toy LLaVA checkpoint than data/toy-llava.safetensors (e.g. one "
                                        "with LLaVA-1.5's layout: slugkit.models.toy_llava.build(out_dir, "
                                        "TrainConfig(feature_layer=-2, select_strategy='default')))")
    p.add_argument("--json", help="also write the rows into this JSON (e.g. data/bench/llava.json, read by notebooks 08 "
                                  "and 10): the rows of the presets run here replace that file's rows of the same presets")
    p.add_argument("--note", default="", help="with --json: the machine's load during the run, recorded in the file")
    p.add_argument("--from-summary", action="store_true", help="run nothing: write --json from the summary.json of "
                                                                   "each --presets run already in --out")
    args = p.parse_args()
    if args.from_summary:
        if not args.json:
            p.error("--from-summary writes --json: give it")
        for preset in args.presets:
            write_json(Path(args.json), preset, json.loads(Path(args.out, preset, "summary.json").read_text()), args)
        return
    host = load_toy_llava(args.n_eval, path=args.checkpoint) if args.checkpoint else load_host("toy-llava",
                                                                                                n_eval=args.n_eval)
    clip = load_clip(host.clip_name)
    for preset in args.presets:
        rows = []
        with tempfile.TemporaryDirectory() as fresh:
            cache = cache_dir() / "gradients" \
                if args.cache else Path(fresh)
            for name in args.characters:
                result = unlearn_host(host, name, clip=clip, preset=preset, store=cache, progress=False)
                out = result.save(Path(args.out) / preset / name.replace(" ", "_"), overwrite=True)
                r = json.loads((out / "report.json").read_text())
                if result.patch is None:
                    print(f"{preset:10s} {name:15s} no step size met the target ({r['status']})", flush=True)
                    rows.append({"concept": name, "status": r["status"], "unlearn_seconds": r["unlearn_seconds"]})
                    continue
                ok = criteria(r)
                rows.append({"concept": name, "layer": r["layer"], "status": r["status"], **{k: r[k] for k in KEYS},
                             "layers_tried": r["layers_tried"], "layers_refused": r["layers_refused"],
                             "guard_fallback": r["guard_fallback"], "criteria": ok, "examples": r.get("examples")})
                share = r["patch_footprint"]["share_of_tower"]
                print(f"{preset:10s} {name:15s} {r['layer']:45s} forget {100 * r['vlm_forget_rate_before']:5.1f} -> "
                      f"{100 * r['vlm_forget_rate_after']:5.1f}%  retain {100 * r['vlm_retain_acc_before']:5.1f} -> "
                      f"{100 * r['vlm_retain_acc_after']:5.1f}%  vqa {100 * r['vlm_vqa_acc_before']:5.1f} -> "
                      f"{100 * r['vlm_vqa_acc_after']:5.1f}%  {r['unlearn_seconds']:5.1f} s "
                      f"({r['unlearn_cpu_seconds']:.0f} CPU s)  tensor "
                      f"{100 * share:.2f}% of the tower  "
                      f"{'ALL MET' if all(ok.values()) else [k for k, v in ok.items() if not v]}", flush=True)
        Path(args.out, preset).mkdir(parents=True, exist_ok=True)
        Path(args.out, preset, "summary.json").write_text(json.dumps(rows, indent=2))
        met = {k: sum(bool(r.get("criteria", {}).get(k)) for r in rows) for k in ("forget", "retain", "vqa", "time",
                                                                                  "one_tensor")}
        print(f"{preset}: criteria met by {met} of {len(rows)} characters", flush=True)
        if args.json:
            write_json(Path(args.json), preset, rows, args)


def write_json(path: Path, preset: str, rows: list[dict], args) -> None:
    """Put one preset's ``rows`` into the shipped bench file under ``presets[preset]`` (replacing its earlier run);
    the top-level ``command``, ``date`` and ``rows`` mirror the run of the hosts' default recipe
    (``LlavaHost.default_preset``), which notebook 10 reads."""
    import datetime

    from slugkit.adapters.llava import LlavaHost

    old = json.loads(path.read_text()) if path.exists() else {}
    runs = dict(old.get("presets", {}))
    for earlier in {r.get("preset") for r in old.get("rows", [])} - set(runs) - {None}:  # a file of one preset
        runs[earlier] = {"command": old.get("command"), "date": old.get("date"),
                         "rows": [r for r in old["rows"] if r.get("preset") == earlier]}
    runs[preset] = {
        "command": f"python scripts/bench_llava.py --presets {preset}" + (" --cache" if args.cache else "")
                   + f" (toy-llava, {args.n_eval} test pictures{'; ' + args.note if args.note else ''})",
        "date": datetime.date.today().isoformat(),
        "rows": [{"preset": preset, **{k: v for k, v in r.items() if k not in ("examples", "patch_footprint")}}
                 for r in rows]}
    default = LlavaHost.default_preset
    top = runs.get(default) or {k: old[k] for k in ("command", "date", "rows") if k in old}
    path.write_text(json.dumps({**top, "default": default, "presets": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""SLUG on a real-size model with your own data: time and memory of `slugkit unlearn` on ViT-B-32.

    python scripts/bench_real.py [--out runs/bench-real] [--pictures 600] [--threads N] [--policy pareto]

Builds, in ``--out`` and only when missing, a randomly initialised open_clip ``ViT-B-32`` (151M parameters,
saved as safetensors) and a CSV of MiniCanvas pictures of the 13 characters captioned "a photo of NAME."
(nothing is downloaded), then runs

    slugkit unlearn --model openclip:ViT-B-32/<file> --forget "Captain Zorp" --data data.csv --classes <12 names>

with ``--profile`` in a child process and prints JSON: ``stage_seconds`` (the profile's seconds per stage), ``eval_seconds``
(median seconds of one step-size evaluation for a vision-tower and a text-tower layer, plus per searched layer),
``unlearn_seconds`` (gradients + layer identification + search), ``wall_seconds`` of the command,
``eval_seconds_full`` / ``eval_seconds_forget_only`` (the same for steps measured whole, which reached the
forget target, and for steps measured on the forget pictures alone), ``peak_rss_mb`` (the child's peak resident memory), ``stage_peak_rss_mb`` (the process's peak when each
stage ended), the layer ``policy`` the run used and the load average. A random
model learns nothing, so the forget metric may never reach its target: this measures cost, not quality.

The run searches only the layers its policy picks (on user data with a real-size model the default is
"cheapest-first": the text tower's Pareto layers first; ``--policy pareto`` runs the authors' search of every
Pareto layer), so ``eval_seconds`` is null for a tower it did not search. ``eval_seconds_last_block`` times the
evaluation of an edit in the last block of each tower directly, after the run, in this process (same data and
evaluator as the run; the median of ``--repeats`` edits along random directions, whole and forget-only).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONCEPT = "Captain Zorp"


def build_checkpoint(path: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def build_csv(folder: Path, n: int) -> Path:
    from PIL import Image

    from slugkit.data.minicanvas import CHARACTER_NAMES, MiniCanvas

    world = MiniCanvas(n=n, seed=0, split="train", character_fraction=1.0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = CHARACTER_NAMES[world.identity[i]]
        Image.fromarray(world.images[i]).save(folder / "images" / f"{i:04d}.png")
        rows.append({"image": f"images/{i:04d}.png", "caption": f"a photo of {name}."})
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def time_last_blocks(model: str, data: Path, repeats: int) -> dict:
    """Median seconds of a whole and of a forget-only evaluation of an edit in the last block of each tower
    (its MLP output projection, moved along a random direction), with the evaluator the run uses."""
    import torch

    from slugkit.data.minicanvas import CHARACTER_NAMES
    from slugkit.models.loading import load_clip
    from slugkit.step_size_search import apply_step
    from slugkit.tasks import data_task

    adapter = load_clip(model)
    evaluator = data_task(adapter, CONCEPT, str(data), [n for n in CHARACTER_NAMES if n != CONCEPT]).search_evaluator
    last = {}
    for info in adapter.candidate_layers():  # the last candidate of each tower: its deepest block's last matrix
        last[info.tower] = info
    evaluator.prepare("vision", last["vision"].block)
    evaluator.prepare("text", last["text"].block)
    evaluator.cache()
    g = torch.Generator().manual_seed(0)
    out = {}
    for tower, info in last.items():
        param = adapter.parameter(info.name)
        times = {"full": [], "forget_only": []}
        for _ in range(repeats):
            direction = torch.randn(param.shape, generator=g) * param.detach().norm() / param.numel() ** 0.5
            with apply_step(param, direction, 0.1):
                for kind, call in (("full", evaluator), ("forget_only", evaluator.forget_metrics)):
                    t = time.perf_counter()
                    call(edited_tower=tower, block=info.block)
                    times[kind].append(time.perf_counter() - t)
        out[tower] = {"layer": info.name, "block": info.block,
                      **{k: round(statistics.median(v), 2) for k, v in times.items()}}
    return out


def summarize(report: dict, wall: float, peak_mb: float) -> dict:
    towers = {row["name"]: row["tower"] for row in report["layer_table"]}
    steps = [(s["layer"], t) for s in report["search"] for t in s["trace"]]

    def medians(keep, key):  # median seconds of the steps kept, grouped by key(layer)
        groups = {}
        for layer, t in steps:
            if keep(t):
                groups.setdefault(key(layer), []).append(t.get("seconds", float("nan")))
        return {k: round(statistics.median(xs), 2) for k, xs in groups.items()}

    def full(t):  # a step that reached the forget target is measured whole; the others on the forget pictures alone
        return "utility" in t["metrics"]

    return {
        "stage_seconds": {k: v["seconds"] for k, v in report["profile"]["stages"].items()},
        "eval_seconds": {t: medians(lambda _: True, towers.get).get(t) for t in ("vision", "text")},
        "eval_seconds_full": {t: medians(full, towers.get).get(t) for t in ("vision", "text")},
        "eval_seconds_forget_only": {t: medians(lambda s: not full(s), towers.get).get(t) for t in ("vision", "text")},
        "eval_seconds_by_layer": medians(lambda _: True, lambda layer: layer),
        "evaluations": {"full": sum(full(t) for _, t in steps), "forget_only": sum(not full(t) for _, t in steps)},
        "unlearn_seconds": report["unlearn_seconds"],
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "stage_peak_rss_mb": {k: v["peak_rss_mb"] for k, v in report["profile"]["stages"].items()},
        "layer": report["layer"], "step_size": report["step_size"], "status": report["status"],
        "layers_tried": report["layers_tried"], "policy": report.get("policy"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench-real", help="folder for the checkpoint, the data and the run")
    p.add_argument("--pictures", type=int, default=600, help="MiniCanvas pictures in the CSV (default 600)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--policy", help="the layer policy of the run (default: slugkit unlearn's own)")
    p.add_argument("--repeats", type=int, default=3, help="edits timed per tower for eval_seconds_last_block "
                   "(default 3; 0 skips them)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "vit-b-32-random.safetensors"
    if not weights.is_file():
        build_checkpoint(weights)
    data = out / f"minicanvas-{args.pictures}" / "data.csv"
    if not data.is_file():
        build_csv(data.parent, args.pictures)

    from slugkit.data.minicanvas import CHARACTER_NAMES

    cmd = [sys.executable, "-m", "slugkit", "unlearn", "--model", f"openclip:ViT-B-32/{weights}",
           "--forget", CONCEPT, "--data", str(data), "--classes", *[n for n in CHARACTER_NAMES if n != CONCEPT],
           "--out", str(out / "run"), "--overwrite", "--no-cache", "--profile"]
    if args.policy:
        cmd += ["--policy", args.policy]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.threads:
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = summarize(json.loads((out / "run" / "report.json").read_text()), wall, peak_mb)
    if args.repeats > 0:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        summary["eval_seconds_last_block"] = time_last_blocks(f"openclip:ViT-B-32/{weights}", data, args.repeats)
        summary["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

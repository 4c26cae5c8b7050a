"""Measure the toy SD host: judge, VAE ceiling, judged generation accuracy, and SLUG on several concepts.

Writes ``runs/sd-bench/<concept>/report.json`` (+ patch) per concept and ``runs/sd-bench/summary.json``.
The CLIP side of each run (gradients, layer, step size) is :func:`slugkit.slug.unlearn_host`'s own call of
:func:`slugkit.slug.unlearn`; the host side (judged generations) runs once the toy SD checkpoint exists
(``--wait-pid`` of the build), through the same :func:`slugkit.slug.report_on_host`.

    python scripts/bench_sd.py --concepts "Captain Zorp" "Glimmer Queen" Stripes Checkerboard cross star
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concepts", nargs="+", required=True)
    p.add_argument("--out", default="runs/sd-bench")
    p.add_argument("--seeds", type=int, default=6, help="pictures per prompt (seeds 0..N-1)")
    p.add_argument("--wait-pid", type=int, help="wait until this process (a running build) has ended before generating")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from slugkit.adapters.sd import load_toy_sd
    from slugkit.data.minicanvas import cached_split
    from slugkit.models import judge as judge_mod
    from slugkit.models import toy_sd
    from slugkit.models.loading import load_clip
    from slugkit.slug import report_on_host, unlearn

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = load_clip("toy-clip-hf")
    results = {}
    for concept in args.concepts:  # the CLIP side, exactly as unlearn_host runs it
        allowed = [i.name for i in clip.candidate_layers() if i.tower == "text" and i.name.startswith("text_model.")]
        results[concept] = unlearn(clip, concept, layers=allowed, progress=False)
        print(concept, results[concept].status, results[concept].layer, results[concept].timings, flush=True)

    while args.wait_pid and Path(f"/proc/{args.wait_pid}").exists():
        time.sleep(20)
    host = load_toy_sd(seeds=tuple(range(args.seeds)))
    summary = {"seeds": args.seeds, "steps": host.steps, "guidance": host.guidance}
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
    rows = []
    for concept, result in results.items():  # the host side, as in unlearn_host
        report_on_host(host, result, progress=False)
        result.save(out / concept.replace(" ", "_"))
        rep = result.report()
        row = {k: rep.get(k) for k in ("concept", "status", "layer", "step_size", "ua_before", "ua_after",
                                       "ira_before", "ira_after", "cra_before", "cra_after", "fid_after",
                                       "unlearn_seconds", "report_seconds", "patch_bytes", "edited_model_bytes")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary["runs"] = rows
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

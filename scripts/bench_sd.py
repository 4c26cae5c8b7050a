"""Measure the toy SD host: judge, VAE ceiling, judged generation accuracy, and SLUG on several concepts.

Writes ``runs/sd-bench/<concept>/report.json`` (+ patch) per concept and ``runs/sd-bench/summary.json``; each
concept is one :func:`slugkit.slug.unlearn_host` call, as ``slugkit unlearn --model toy-sd`` makes it.

    python scripts/bench_sd.py --search generation --concepts "Captain Zorp" "Glimmer Queen" star circle Solid
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROW_KEYS = ("concept", "status", "layer", "step_size", "ua_before", "ua_after", "ira_before", "ira_after",
            "cra_before", "cra_after", "fid_after", "unlearn_seconds", "report_seconds", "patch_bytes",
            "edited_model_bytes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concepts", nargs="+", required=True)
    p.add_argument("--out", default="runs/sd-bench")
    p.add_argument("--seeds", type=int, default=3, help="report pictures per prompt (seeds 0..N-1)")
    p.add_argument("--search", choices=["clip", "generation"], default="clip")
    p.add_argument("--forget-text", choices=["name", "captions"], default=None,
                   help="what the forget gradient pairs the forget pictures with (default: the host's, the name)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from slugkit.adapters.sd import load_toy_sd
    from slugkit.data.minicanvas import cached_split
    from slugkit.models import judge as judge_mod
    from slugkit.models import toy_sd
    from slugkit.slug import unlearn_host

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    host = load_toy_sd(seeds=tuple(range(args.seeds)))
    summary = {"seeds": args.seeds, "steps": host.steps, "guidance": host.guidance, "search": args.search,
               "forget_text": args.forget_text or host.forget_text}
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
    for concept in args.concepts:
        result = unlearn_host(host, concept, search=args.search, forget_text=args.forget_text, progress=False)
        result.save(out / concept.replace(" ", "_"), overwrite=True)
        rep = result.report()
        rows.append({k: rep.get(k) for k in ROW_KEYS})
        print(json.dumps(rows[-1]), flush=True)
    summary["runs"] = rows
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How live do the explorers feel? Drive them from code (no browser) and time every update.

Runs SLUG once on the toy CLIP (gradients from the shared cache), then moves the step-size slider over
``--steps`` values (each new, then a few revisited) and switches the layer heatmap's metric
``--switches`` times. Prints JSON:
``{"step_size_update_s": {"median", "max", "n"}, "heatmap_update_s": {"median", "max", "n"}, ...}``.

    python scripts/bench_widgets.py [--model toy-clip] [--concept "Captain Zorp"] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "max": round(max(values), 4), "n": len(values)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-clip")
    ap.add_argument("--concept", default="Captain Zorp")
    ap.add_argument("--steps", type=int, default=12, help="distinct slider values (>= 10)")
    ap.add_argument("--revisits", type=int, default=4, help="slider values visited a second time (cache hits)")
    ap.add_argument("--switches", type=int, default=12, help="heatmap metric switches")
    ap.add_argument("--layer", default=None, help="layer of the step-size explorer (default: the chosen one)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the whole run (the explorer itself evaluates on 1 thread by default)")
    ap.add_argument("--n-others", type=int, default=250,
                    help="non-concept pictures the explorer evaluates on (-1: all of the search's set)")
    args = ap.parse_args(argv)
    if args.steps < 10:
        ap.error("--steps must be >= 10")

    import numpy as np
    import torch

    import slugkit
    from slugkit.resources import cache_dir
    from slugkit.viz.widgets import LayerHeatmap, StepSizeExplorer

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = cache_dir()
    t0 = time.perf_counter()
    clip = slugkit.load_clip(args.model)
    result = slugkit.unlearn(clip, args.concept, store=cache / "gradients", policy="deepest", tower="vision",
                             progress=False)
    setup_unlearn = time.perf_counter() - t0

    t0 = time.perf_counter()
    explorer = StepSizeExplorer(clip, result, layer=args.layer, n_others=None if args.n_others < 0 else args.n_others)
    setup_explorer = time.perf_counter() - t0
    lo, hi, step = explorer.slider.min, explorer.slider.max, explorer.slider.step
    rng = np.random.default_rng(0)
    positions = rng.choice(np.arange(int(round((hi - lo) / step)) + 1), size=args.steps, replace=False)
    visited = [10 ** (lo + k * step) for k in positions]
    visited += [visited[k] for k in rng.choice(len(visited), size=args.revisits, replace=False)]
    explorer.timings.clear()
    cpu_times = []
    for lam in visited:
        c = time.process_time()
        explorer.slider.value = lam
        cpu_times.append(time.process_time() - c)
    slider_times = list(explorer.timings)
    fresh = slider_times[: args.steps]

    heatmap = LayerHeatmap(result)
    metrics = [v for _, v in heatmap.metric.options]
    heat_times = []
    for k in range(args.switches):
        t = time.perf_counter()
        heatmap.metric.value = metrics[(k + 1) % len(metrics)]
        heat_times.append(time.perf_counter() - t)

    out = {
        "step_size_update_s": summary(slider_times),
        "heatmap_update_s": summary(heat_times),
        "step_size_update_uncached_s": summary(fresh),
        # CPU seconds of this process per update: with --threads 1 this is what one idle core would take,
        # whatever else the machine is running
        "step_size_update_cpu_s": summary(cpu_times),
        "layer": explorer.layer.value,
        "model": args.model,
        "concept": args.concept,
        "setup_s": {"unlearn": round(setup_unlearn, 2), "explorer": round(setup_explorer, 2)},
        "threads": torch.get_num_threads(),
        "eval_images": len(explorer.evaluator.world),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

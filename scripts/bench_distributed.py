"""One SLUG run on 1 process x 1 thread, then on N processes x 1 thread: stage timings side by side.

    python scripts/bench_distributed.py [--nproc 2] [--forget "Captain Zorp"] [--out runs/bench_distributed]

Runs ``slugkit unlearn --model toy-clip`` twice, each with a fresh gradient cache (the second with ``--nproc N``,
i.e. torchrun and gloo), prints the wall time of the gradient stage, the step-size search and the report evaluation
from each ``report.json``, the load average before and after each run (the machine may be shared: timings at a load
above the core count are indicative only), the largest relative difference between the two runs' forget and retain
gradients (read back from the caches), and whether the two reports are equal apart from timings.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slugkit.gradients import Gradients
from slugkit.slug import untimed

STAGES = ("gradients", "layer_identification", "step_size_search", "report")


def run(nproc: int, forget: str, out: Path) -> tuple[dict, float, tuple[float, float]]:
    cmd = [sys.executable, "-m", "slugkit", "unlearn", "--model", "toy-clip", "--forget", forget, "--out", str(out),
           "--overwrite", "--nproc", str(nproc)]
    cache = out.with_name(out.name + "-cache")  # beside the run folder, which --overwrite replaces
    shutil.rmtree(cache, ignore_errors=True)  # a cold run: both gradients computed, then stored here
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SLUGKIT_CACHE=str(cache))
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "report.json").read_text()), wall, (load_before, os.getloadavg()[0])


def largest_relative_difference(one: Path, other: Path) -> float:
    """max over losses and layers of |g_one - g_other| / |g_one| for the gradients two runs cached (same keys)."""
    paths = sorted((one / "gradients").glob("*.safetensors"))
    if len(paths) != 2:
        sys.exit(f"expected the forget and the retain gradient in {one / 'gradients'}, found {len(paths)} files")
    worst = 0.0
    for path in paths:
        a, b = Gradients.load(path), Gradients.load(other / "gradients" / path.name)
        for loss in ("forget", "retain"):
            for name, g in getattr(a, loss).items():
                worst = max(worst, ((g.double() - getattr(b, loss)[name].double()).norm() / g.double().norm()).item())
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--forget", default="Captain Zorp")
    p.add_argument("--out", type=Path, default=Path("runs/bench_distributed"))
    args = p.parse_args()
    print(f"{os.cpu_count()} cores; toy-clip, forget {args.forget!r}, 1 thread per process")
    reports = {}
    for n in (1, args.nproc):
        report, wall, (lb, la) = run(n, args.forget, args.out / f"nproc{n}")
        reports[n] = report
        stages = "  ".join(f"{s} {report['timings'].get(s, 0):6.1f} s" for s in STAGES)
        print(f"{n} process(es): {stages}  whole command {wall:6.1f} s  (load average {lb:.1f} -> {la:.1f})")
    same = untimed(reports[1]) == untimed(reports[args.nproc])
    diff = largest_relative_difference(args.out / "nproc1-cache", args.out / f"nproc{args.nproc}-cache")
    print(f"forget and retain gradients: largest relative difference {diff:.1e} (bar: 1e-5)")
    print(f"reports equal apart from timings: {same} (layer {reports[1]['layer']}, step size {reports[1]['step_size']})")


if __name__ == "__main__":
    main()

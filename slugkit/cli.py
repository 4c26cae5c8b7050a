"""The ``slugkit`` command line: batch runs that print tables or JSON and write reports.

    slugkit concepts --model toy-clip --json
    slugkit unlearn --model toy-clip --forget "Captain Zorp" --out runs/zorp
    slugkit eval --model toy-clip [--patch runs/zorp/patch.safetensors] --json
    slugkit toy build
    slugkit demo
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL = "toy-clip"


def _cache_dir() -> Path:
    return Path(os.environ.get("SLUGKIT_CACHE", Path.home() / ".cache" / "slugkit"))


def _print_json(obj) -> None:
    from .fingerprint import to_jsonable

    print(json.dumps(to_jsonable(obj), indent=2))


def cmd_concepts(args) -> int:
    from .data.minicanvas import concepts

    from .models.loading import TOY_MODELS

    if args.model not in TOY_MODELS:
        raise SystemExit(f"slugkit concepts: {args.model!r} has no built-in concept list; "
                         "real models forget whatever your data's captions name (see `slugkit unlearn --data`)")
    items = concepts()
    if args.json:
        _print_json(items)
    else:
        for c in items:
            print(f"{c['kind']:10s} {c['name']}")
    return 0


def format_zero_shot(metrics: dict) -> str:
    lines = [f"{'attribute':10s}{'top-1':>8s}{'top-5':>8s}  worst class"]
    for a, s in metrics.items():
        worst = min(s["per_concept"].items(), key=lambda kv: kv[1])
        lines.append(f"{a:10s}{100 * s['top1']:7.1f}%{100 * s['top5']:7.1f}%  {worst[0]} {100 * worst[1]:.0f}%")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .adapters.host import is_host_name, load_host
    from .eval.zeroshot import toy_eval
    from .models.loading import TOY_MODELS, load_clip
    from .patch import Patch

    if is_host_name(args.model):  # SD / LLaVA: the same contract, measured on the host's own outputs
        host = load_host(args.model)
        if args.patch:
            host.apply(Patch.load(args.patch))
        metrics = host.evaluate()
        if args.json:
            _print_json({"model": args.model, "patch": args.patch, "metrics": metrics})
        else:
            print(f"accuracy of {args.model}" + (f" + {args.patch}" if args.patch else ""))
            for what, m in metrics.items():
                print(f"{what:10s}{100 * m['top1']:7.1f}%")
        return 0
    if args.model not in TOY_MODELS:  # refuse before loading (and maybe downloading) real weights
        raise ValueError(f"no built-in evaluation set for {args.model!r}: `slugkit eval` measures the toy world "
                         f"models {', '.join(TOY_MODELS)}")
    adapter = load_clip(args.model)
    if args.patch:
        Patch.load(args.patch).apply(adapter.model)
    metrics = toy_eval(adapter, n_test=args.n_test)
    if args.json:
        _print_json({"model": args.model, "patch": args.patch, "metrics": metrics})
    else:
        print(f"zero-shot accuracy of {args.model}" + (f" + {args.patch}" if args.patch else ""))
        print(format_zero_shot(metrics))
    return 0


def cmd_unlearn(args) -> int:
    from .adapters.host import is_host_name, load_host
    from .models.loading import load_clip
    from .step_size_search import Target
    from .slug import unlearn, unlearn_host

    target = Target(forget_metric=f"forget_{args.target}") if args.target else None
    options = dict(data=args.data, classes=args.classes, policy=args.policy, include=args.include,
                   exclude=args.exclude, tower=args.tower, preset=args.preset, candidates=args.candidates,
                   target=target, max_evals=args.max_evals,
                   seed=args.seed, store=None if args.no_cache else _cache_dir() / "gradients")
    if is_host_name(args.model):
        result = unlearn_host(load_host(args.model), args.forget, search=args.search, **options)
    else:
        if args.search != "clip":
            raise ValueError(f"--search {args.search} needs a host model (toy-sd, toy-llava, sd:..., llava:...)")
        result = unlearn(load_clip(args.model), args.forget, **options)
    out = result.save(args.out)
    print(result.summary())
    print(f"wrote {out / 'report.json'}" + (f" and {out / 'patch.safetensors'}" if result.patch else ""))
    return 0 if result.status == "ok" else 3


def cmd_toy(args) -> int:
    if getattr(args, "target", "clip") == "llava":
        return cmd_toy_llava(args)
    from .models.toy_clip import build, checkpoint_metadata

    path = build(args.out)
    meta = checkpoint_metadata(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {meta['train_seconds']:.0f} s; "
          f"zero-shot top-1 on held-out images: {meta['zero_shot_top1']}")
    return 0


def cmd_toy_llava(args) -> int:
    from .models.toy_llava import build, checkpoint_metadata

    path = build(args.out, threads=args.threads)
    meta = checkpoint_metadata(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {meta['train_seconds']:.0f} s; "
          f"answer accuracy on held-out pictures and phrasings: {meta['answer_top1']}")
    return 0


def cmd_demo(args) -> int:
    from .data.minicanvas import MiniCanvas
    from .eval.zeroshot import toy_eval
    from .models.loading import load_clip
    from .slug import unlearn
    from .viz.figures import sample_sheet

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = load_clip("toy-clip")
    print("toy CLIP zero-shot accuracy on held-out MiniCanvas images:")
    print(format_zero_shot(toy_eval(adapter)))
    fig = sample_sheet(MiniCanvas(n=48, seed=0, split="test"))
    fig.savefig(out / "sample_sheet.png", dpi=110, bbox_inches="tight")
    print(f"sample sheet: {out / 'sample_sheet.png'}\n")
    result = unlearn(adapter, args.forget, seed=0)
    result.save(out / "unlearn")
    print(result.summary())
    print(f"report: {out / 'unlearn' / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slugkit", description="Single Layer Unlearning Gradient, runnable.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("concepts", help="list the forgettable concepts of a world")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_concepts)

    u = sub.add_parser("unlearn", help="forget one concept; writes report.json and patch.safetensors")
    u.add_argument("--model", default=DEFAULT_MODEL)
    u.add_argument("--forget", required=True, help="concept name, e.g. 'Captain Zorp'")
    u.add_argument("--out", required=True, help="output folder")
    u.add_argument("--data", help="image folder, CSV or webdataset shards (real models)")
    u.add_argument("--classes", nargs="+", help="other names the model must still tell apart (with --data)")
    u.add_argument("--policy", default="pareto", help="'pareto' (try all, keep best), 'deepest', or a layer name")
    u.add_argument("--tower", choices=["vision", "text"])
    u.add_argument("--include", nargs="+", help="only these candidate kinds (attn_qkv, mlp_fc, ...) or name regexes")
    u.add_argument("--exclude", nargs="+", help="drop these candidate kinds or name regexes")
    u.add_argument("--target", choices=["top1", "top5"],
                   help="forget metric driven to 0 (default top5, the authors' rule; top1 can leave the name second)")
    u.add_argument("--candidates", choices=["default", "reference"],
                   help="candidate layers: 'default' = 2-D attention/MLP weights of every block; 'reference' = the "
                        "authors' set (every parameter but biases, logit_scale, positional/token embeddings)")
    u.add_argument("--preset", choices=["slugkit", "reference"], default="slugkit",
                   help="'reference' = the authors' choices: reference candidates, top5 rule, exactly 10 "
                        "evaluations, no early stop; the report adds their returned (last) lambda")
    u.add_argument("--max-evals", type=int, help="evaluations per searched layer (default 10)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--no-cache", action="store_true", help="do not reuse stored gradients")
    u.add_argument("--search", choices=["clip", "generation"], default="clip",
                   help="hosts only: search lambda on the matching CLIP's forget metric (fast) or on the "
                        "host's own generations (judged pictures for SD, answers for LLaVA)")
    u.set_defaults(func=cmd_unlearn)

    e = sub.add_parser("eval", help="zero-shot accuracy per attribute, optionally with a patch")
    e.add_argument("--model", default=DEFAULT_MODEL)
    e.add_argument("--patch")
    e.add_argument("--n-test", type=int, default=2000)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("toy", help="toy-world checkpoints")
    tsub = t.add_subparsers(dest="toy_command", required=True)
    b = tsub.add_parser("build", help="train the toy CLIP (or another toy model) from scratch into data/")
    b.add_argument("target", nargs="?", default="clip", choices=["clip", "llava"],
                   help="which toy model: 'clip' (default) or 'llava' (needs the toy CLIP)")
    b.add_argument("--threads", type=int, help="llava: torch CPU threads (default all cores; 1 on a busy machine)")
    b.add_argument("--out", help="folder to write to (default: the data/ folder)")
    b.set_defaults(func=cmd_toy)

    d = sub.add_parser("demo", help="the quickstart: meet the toy world, unlearn one character")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--forget", default="Captain Zorp")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"slugkit {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

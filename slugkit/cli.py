"""The ``slugkit`` command line: batch runs that print tables or JSON and write reports.

    slugkit concepts --model toy-clip --json
    slugkit unlearn --model toy-clip --forget "Captain Zorp" --out runs/zorp
    slugkit eval --model toy-clip [--patch runs/zorp/patch.safetensors] --json
    slugkit toy build
    slugkit demo
    slugkit bench --model toy-clip --out runs/bench
    slugkit notebooks my-notebooks [--student]
    slugkit lab [my-notebooks]
    slugkit layers --model toy-clip --forget "Captain Zorp" --out runs/zorp-layers
    slugkit atlas --model toy-clip --out runs/atlas
    slugkit unlearn --model toy-clip --forget "Captain Zorp" --forget "Mira Quell" --out runs/two
    slugkit attack --model toy-clip --patch runs/zorp/patch.safetensors --concept "Captain Zorp" --json

Every user mistake ends in one sentence on stderr and exit code 2; ``--debug`` shows the traceback
instead. Exit codes: 0 done, 2 bad input, 3 the run finished but its status is not "ok", 1 an
internal error (please report it), 130 interrupted (output folders are left as they were).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .bounds import (BATCH_SIZE_MAX, BATCH_SIZE_MIN, MAX_EVALS_MAX, MAX_EVALS_MIN, SEED_MAX, SEED_MIN,
                     check_pictures)
from .resources import cache_dir

DEFAULT_MODEL = "toy-clip"
MODEL_HELP = ("which CLIP: 'toy-clip' (default; built in, offline), 'toy-clip-hf' (the same weights as a Hugging "
              "Face CLIPModel), 'openclip:ARCH/TAG' or 'openclip:ARCH/PATH' (e.g. openclip:ViT-B-32/laion400m_e32, "
              "or a local weights file), 'hf:REPO' or 'hf:DIR' (e.g. hf:openai/clip-vit-base-patch32, or a "
              "folder written by save_pretrained), or a model that embeds a CLIP tower: 'toy-sd', 'toy-llava', "
              "'sd:...', 'llava:...' (slugkit then edits the matching CLIP's tower and patches the host)")
CACHE_DIR_HELP = ("folder holding downloaded Hugging Face / open_clip weights for real models (default: their own "
                  "caches, e.g. ~/.cache/huggingface)")


def _print_json(obj) -> None:
    from .fingerprint import to_jsonable

    print(json.dumps(to_jsonable(obj), indent=2))


def cmd_concepts(args) -> int:
    from .data.vocabulary import concepts
    from .models.names import TOY_MODELS

    if args.model not in TOY_MODELS:
        raise ValueError(f"{args.model!r} has no built-in concept list; "
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
    from .bounds import check_patch_path
    from .models.names import TOY_MODELS, check_model_name, is_host_name, is_toy_model

    check_model_name(args.model)  # bad names and missing files fail before torch is imported
    if not is_host_name(args.model) and not is_toy_model(args.model):  # before loading (maybe downloading) weights
        raise ValueError(f"no built-in evaluation set for {args.model!r}: `slugkit eval` measures the toy world "
                         f"models {', '.join(TOY_MODELS)}")
    if args.patch:
        check_patch_path(args.patch)
    from .adapters.host import load_host
    from .eval.zeroshot import toy_eval
    from .models.loading import load_clip
    from .patch import Patch

    patch = Patch.load(args.patch) if args.patch else None  # a bad patch file fails before the model loads
    if is_host_name(args.model):  # SD / LLaVA: the same contract, measured on the host's own outputs
        host = load_host(args.model)
        if patch is not None:
            host.apply(patch)
        metrics = host.evaluate()
        if args.json:
            _print_json({"model": args.model, "patch": args.patch, "metrics": metrics})
        else:
            print(f"accuracy of {args.model}" + (f" + {args.patch}" if args.patch else ""))
            for what, m in metrics.items():
                print(f"{what:10s}{100 * m['top1']:7.1f}%")
        return 0
    adapter = load_clip(args.model)
    if patch is not None:
        patch.apply(adapter.model)
    metrics = toy_eval(adapter, n_test=args.n_test)
    if args.json:
        _print_json({"model": args.model, "patch": args.patch, "metrics": metrics})
    else:
        print(f"zero-shot accuracy of {args.model}" + (f" + {args.patch}" if args.patch else ""))
        print(format_zero_shot(metrics))
    return 0


def cmd_unlearn(args) -> int:
    from .profile import Profiler, process_age
    from .rundir import check_out_dir

    check_out_dir(args.out, args.overwrite)  # before any work (and before importing torch): fails in a second
    if not args.profile:
        return _prepare_and_unlearn(args)
    with Profiler(start=time.perf_counter() - (process_age() or 0.0)) as prof:
        prof.add("startup", time.perf_counter() - prof.start)  # interpreter start, argument parsing
        return _prepare_and_unlearn(args, prof)


def _prepare_and_unlearn(args, prof=None) -> int:
    """Read the data, start the data-parallel processes or join their group, then :func:`_unlearn`."""
    from .profile import stage

    with stage("data"):
        data = _data_or_toy_concept(args, args.forget)
    if args.nproc > 1:  # data parallel: torchrun's launcher starts the processes, each runs this command
        if "WORLD_SIZE" in os.environ:
            raise ValueError("--nproc starts torchrun itself: under torchrun leave it out (torchrun's "
                             "--nproc-per-node sets the number of processes)")
        from .distributed import launch

        return launch(args.nproc, _drop_option(args.argv, "--nproc"), "slugkit unlearn")
    with stage("imports"):  # slugkit.distributed imports torch
        from . import distributed
        from .models.names import is_toy_world

        if data is None and is_toy_world(args.model):  # its pictures are drawn on the other core while the model loads
            from .data.minicanvas import prefetch_splits
            from .tasks import toy_splits

            prefetch_splits(toy_splits(args.seed))

    distributed.init_from_env()  # under torchrun: join its process group (gloo on CPU, NCCL on GPUs)
    try:
        return _unlearn(args, data, distributed.is_writer(), distributed.device(), prof)
    finally:
        distributed.shutdown()


def _unlearn(args, data, writer: bool, device, prof=None) -> int:
    from .profile import stage

    with stage("imports"):
        from .adapters.host import is_host_name, load_host
        from .models.loading import load_clip
        from .step_size_search import Target
        from .slug import unlearn, unlearn_host

    if not writer:  # the other processes of a data-parallel run compute alongside rank 0 but stay quiet
        sys.stdout = open(os.devnull, "w")
    target = Target(forget_metric=f"forget_{args.target}") if args.target else None
    options = dict(data=data, classes=args.classes, policy=args.policy, include=args.include,
                   exclude=args.exclude, tower=args.tower, preset=args.preset, candidates=args.candidates,
                   target=target, max_evals=args.max_evals,
                   seed=args.seed, batch_size=args.batch_size, retain=args.retain, search_batch=args.search_batch,
                   store=None if args.no_cache else cache_dir() / "gradients", progress=writer)
    if args.no_repair and len(args.forget) == 1:
        raise ValueError("--no-repair applies to several --forget concepts at once; one concept has no retain repair")
    if len(args.forget) > 1:  # several concepts: one layer each, one composed patch (slugkit.multi)
        from .multi import unlearn_many

        if args.search_batch != 1:
            raise ValueError("--search-batch applies to one --forget concept at a time for now")

        if data is not None or is_host_name(args.model) or args.preset not in (None, "slugkit"):
            raise ValueError("several --forget concepts at once work on a toy CLIP (toy-clip, toy-clip-hf) without "
                             "--data or --preset for now; forget one concept at a time otherwise")
        with stage("load"):
            adapter = load_clip(args.model, device=device)
        many = {k: options[k] for k in ("policy", "include", "exclude", "tower", "candidates", "target", "max_evals",
                                        "seed", "batch_size", "progress")} | {"repair": not args.no_repair}
        result = unlearn_many(adapter, args.forget, **{k: v for k, v in many.items() if v is not None})
    elif is_host_name(args.model):
        with stage("load"):
            host = load_host(args.model)
        result = unlearn_host(host, args.forget[0], search=args.search, forget_text=args.forget_text, **options)
    else:
        for flag, value in (("--search", args.search), ("--forget-text", args.forget_text)):
            if value is not None:
                raise ValueError(f"{flag} {value} needs a host model (toy-sd, toy-llava, sd:..., llava:...)")
        if args.preset in ("clip-side", "orthogonal", "guarded"):
            raise ValueError(f"--preset {args.preset} is a recipe of the LLaVA hosts (toy-llava, llava:...); a CLIP "
                             "takes 'slugkit' or 'reference'")
        options = {k: v for k, v in options.items() if v is not None}  # unlearn's own defaults
        with stage("load"):
            adapter = load_clip(args.model, device=device, cache_dir=args.cache_dir)
        result = unlearn(adapter, args.forget[0], **options)
    if prof is not None:
        result.profile = prof.to_dict()  # everything up to writing the run
    out = result.save(args.out, overwrite=args.overwrite)
    print(result.summary())
    if prof is not None:
        print(prof.summary())
    print(f"wrote {out / 'report.json'}" + (f" and {out / 'patch.safetensors'}" if result.patch else ""))
    return 0 if result.status == "ok" else 3


def _drop_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out


def _data_or_toy_concept(args, names):
    """Read ``--data`` (before loading a model: a bad shard fails in a second), or check toy concept names."""
    if args.classes and not args.data:
        raise ValueError("--classes only applies with --data (your own pictures); the toy world measures the "
                         "concept against every other class of its attribute")
    if args.data:
        from .data.sources import open_pairs

        return open_pairs(args.data)
    _check_names(args.model, names)
    return None


def _check_names(model: str, concepts) -> None:
    """Refuse a model name of no accepted form, and on a toy model an unknown concept, before torch is imported."""
    from .data.vocabulary import find_concept
    from .models.names import TOY_MODELS, check_model_name

    check_model_name(model)
    if model in TOY_MODELS:
        for name in concepts:
            find_concept(name)


def cmd_layers(args) -> int:
    from .rundir import check_out_dir

    check_out_dir(args.out, args.overwrite)  # before any work
    from .models.names import is_host_name

    if is_host_name(args.model):
        raise ValueError(f"`slugkit layers` analyses a CLIP; for {args.model!r} pass the CLIP it embeds "
                         "(toy-clip-hf for toy-sd and toy-llava)")
    data = _data_or_toy_concept(args, [args.forget])
    from .atlas import identify_layers
    from .models.loading import load_clip

    report = identify_layers(load_clip(args.model, cache_dir=args.cache_dir), args.forget, data=data,
                             classes=args.classes, include=args.include, exclude=args.exclude, tower=args.tower,
                             candidates=args.candidates or "default", batch_size=args.batch_size, seed=args.seed,
                             store=None if args.no_cache else cache_dir() / "gradients")
    out = report.save(args.out, overwrite=args.overwrite)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
        print(f"wrote {out / 'layers.csv'}, layers.json, heatmap.png and pareto.png")
    return 0


def cmd_atlas(args) -> int:
    from .rundir import check_out_dir

    check_out_dir(args.out, args.overwrite)  # before any work
    from .models.names import TOY_MODELS

    if args.model not in TOY_MODELS:  # refuse before loading (and maybe downloading) real weights
        raise ValueError(f"the atlas covers the toy world's concepts: use a toy model ({', '.join(TOY_MODELS)}), "
                         f"not {args.model!r}; `slugkit layers --data ...` locates one concept of your data")
    from .atlas import build_atlas
    from .models.loading import load_clip

    atlas = build_atlas(load_clip(args.model), args.concepts, seed=args.seed, max_forget=args.max_forget)
    out = atlas.save(args.out, overwrite=args.overwrite)
    print(atlas.summary().to_string())
    print(f"atlas of {len(atlas.names)} concepts x {len(atlas.layers)} layers in {atlas.meta['seconds']:.1f} s; "
          f"wrote {out}/ (importance.csv, alignment.csv, pareto.csv, cosine.npz, atlas.json, clustermap.png, "
          "where.png, similarity.png)")
    return 0


def cmd_toy_sd(args) -> int:
    """`toy build judge` (the judge) and `toy build sd` (judge, then the toy SD's VAE and UNet)."""
    from .models import judge, toy_sd

    path = judge.build(args.out)
    meta = judge.judge_metadata(path)
    print(f"wrote {path} in {meta['train_seconds']:.0f} s; judge accuracy on held-out pictures: {meta['test_accuracy']}")
    if args.target == "sd":
        path = toy_sd.build(args.out)
        meta = toy_sd.toy_sd_metadata(path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {meta.get('train_seconds', 0):.0f} s; "
              f"VAE PSNR {meta.get('vae_psnr_db')} dB")
    return 0


def cmd_toy(args) -> int:
    if args.without is not None and args.target != "clip":
        raise ValueError(f"--without applies to the toy CLIP only (`slugkit toy build clip --without NAME`), "
                         f"not to {args.target!r}")
    if args.target == "llava":
        return cmd_toy_llava(args)
    if args.target in ("sd", "judge"):
        return cmd_toy_sd(args)
    from .data.vocabulary import find_concept

    without = find_concept(args.without)["name"] if args.without is not None else None  # before torch
    from .models.toy_clip import TrainConfig, build, checkpoint_metadata

    path = build(args.out, TrainConfig(without=without), threads=args.threads)
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
    from .rundir import atomic_run_dir, check_out_dir

    out = Path(args.out)
    check_out_dir(out, args.overwrite)  # before any work (and before the slow imports)
    from .data.minicanvas import MiniCanvas
    from .eval.zeroshot import toy_eval
    from .models.loading import load_clip
    from .slug import unlearn
    from .viz.figures import sample_sheet

    with atomic_run_dir(out, args.overwrite, what="demo") as tmp:  # all of the demo appears at once, or none
        adapter = load_clip("toy-clip")
        print("toy CLIP zero-shot accuracy on held-out MiniCanvas images:")
        print(format_zero_shot(toy_eval(adapter, n_test=500 if args.quick else 2000)))
        fig = sample_sheet(MiniCanvas(n=48, seed=0, split="test"))
        fig.savefig(tmp / "sample_sheet.png", dpi=110, bbox_inches="tight")
        quick = {}
        if args.quick:  # a quarter of the retain pairs and test pictures; one layer searched, not the whole front
            from .tasks import toy_task

            quick = {"task": toy_task(adapter, args.forget, n_retain=256, n_test=500), "policy": "deepest",
                     "tower": "vision"}
        result = unlearn(adapter, args.forget, seed=0, **quick)
        result.save(tmp / "unlearn")
    print(f"sample sheet: {out / 'sample_sheet.png'}\n")
    print(result.summary())
    print(f"report: {out / 'unlearn' / 'report.json'}")
    return 0


def cmd_notebooks(args) -> int:
    from .resources import copy_notebooks

    written, kept = copy_notebooks(args.dir, student=args.student, overwrite=args.overwrite)
    what = "student copies of " if args.student else ""
    print(f"wrote {what}{len(written)} notebook(s) to {Path(args.dir)}" + (
        f"; kept {len(kept)} already there ({', '.join(p.name for p in kept)}; --overwrite replaces them)"
        if kept else ""))
    print(f"open them with: slugkit lab {args.dir}")
    return 0


def lab_command(folder: Path, no_browser: bool = False) -> list[str]:
    """The JupyterLab command `slugkit lab` runs: this Python's ``jupyterlab`` on ``folder``."""
    return [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}"] + (["--no-browser"] if no_browser else [])


def cmd_lab(args) -> int:
    import importlib.util
    import subprocess

    from .resources import copy_notebooks

    if importlib.util.find_spec("jupyterlab") is None:
        raise RuntimeError("JupyterLab is not installed in this Python: install it with "
                           "pip install 'slugkit[notebooks]' (or pip install jupyterlab ipywidgets)")
    written, kept = copy_notebooks(args.dir, student=args.student)  # never replaces the learner's notebooks
    print(f"{Path(args.dir)}: {len(written)} notebook(s) copied, {len(kept)} kept as they were; starting JupyterLab")
    return subprocess.call(lab_command(Path(args.dir), args.no_browser))


def cmd_attribute(args) -> int:
    from .bounds import check_patch_path
    from .models.names import check_model_name

    check_model_name(args.model)
    check_patch_path(args.patch)  # before torch is imported
    from .attribution import compare
    from .models.loading import load_clip
    from .patch import Patch

    patch = Patch.load(args.patch)
    adapter = load_clip(args.model)
    report = compare(adapter, patch, args.concept, method=args.method, n_images=args.n_images,
                     n_steps=args.n_steps, block_steps=args.block_steps, seed=args.seed, progress=True)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
    return 0


def cmd_attack(args) -> int:
    """Recovery attacks on the original, patched and reference toy CLIP (see slugkit.attacks)."""
    from .bounds import check_patch_path
    from .data.vocabulary import find_concept
    from .models.names import TOY_MODELS, is_host_name

    if is_host_name(args.model):
        return _attack_host(args)
    if args.model not in TOY_MODELS:
        raise ValueError(f"`slugkit attack` needs the toy world's pictures and its reference model; expected one of "
                         f"{', '.join(TOY_MODELS)}, got {args.model!r}")
    check_patch_path(args.patch)  # before torch is imported
    from .models.loading import load_clip, shipped_reference
    from .patch import Patch

    patch = Patch.load(args.patch)  # a bad patch fails before any model loads
    given = args.concept or (patch.concept if isinstance(patch.concept, str) else None)
    if given is None:
        raise ValueError("the patch forgets several concepts; name the one to attack with --concept")
    concept = find_concept(given)["name"]
    from .attacks import ATTACKS, attack_data, run_attacks

    for name in args.attack or []:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    reference = args.reference
    if reference is None:  # the shipped reference when it exists, else none (recovery then cannot be read)
        reference = shipped_reference(concept) or "none"
        if reference == "none":
            warnings.warn(f"no reference model for {concept!r} (build it with `slugkit toy build --without "
                          f"\"{concept}\"`); recovery is null")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    edited = load_clip(args.model)
    patch.apply(edited.model)
    models = {"original": load_clip(args.model), "edited": edited,
              "reference": None if reference == "none" else load_clip(reference)}
    data = attack_data(concept, seed=args.seed)
    report = run_attacks(models, data, attacks=args.attack, budgets=args.budget, progress=True)  # bars on stderr
    report |= {"model": args.model, "patch": args.patch, "reference_model": None if reference == "none" else reference,
               "budget_preset": args.budget}
    if args.json:
        _print_json(report)
        return 0
    print(f"forget top-1 of {concept!r} on held-out pictures after each attack "
          f"(recovery: 0 = like the reference, 1 = fully back)")
    print(f"{'attack':20s}{'original':>9s}{'edited':>8s}{'reference':>10s}{'recovery':>9s}{'seconds':>8s}")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for name in [k for k in ATTACKS if k in report]:
        r = report[name]
        print(f"{name:20s}{fmt(r['original']):>9s}{fmt(r['edited']):>8s}{fmt(r['reference']):>10s}"
              f"{fmt(r['recovery']):>9s}{r['seconds']:8.1f}")
    print(f"worst recovery: {fmt(report['worst_recovery'])} ({report['worst_attack'] or 'no reference'})")
    return 0


def _attack_host(args) -> int:
    """`slugkit attack --model toy-llava|toy-sd`: the attacks that apply to the host, before and after the patch."""
    from .attacks.hosts import check_host_attacks, check_host_patch
    from .bounds import check_patch_path
    from .data.vocabulary import find_concept

    names = check_host_attacks(args.model.strip(), args.attack)  # a clear error before anything loads
    if args.reference not in (None, "none"):
        raise ValueError(f"there is no {args.model} retrained without a concept: --reference applies to the toy CLIPs only")
    if args.budget not in ("default", "quick"):
        raise ValueError(f"--budget {args.budget} applies to the toy CLIPs; the hosts' presets are default and quick")
    check_patch_path(args.patch)
    from .adapters.host import load_host
    from .attacks import attack_data
    from .attacks.hosts import run_host_attacks
    from .patch import Patch

    patch = Patch.load(args.patch)
    check_host_patch(args.model.strip(), patch)
    given = args.concept or (patch.concept if isinstance(patch.concept, str) else None)
    if given is None:
        raise ValueError("the patch forgets several concepts; name the one to attack with --concept")
    concept = find_concept(given)["name"]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    host = load_host(args.model.strip())
    data = attack_data(concept, seed=args.seed)
    report = run_host_attacks(args.model.strip(), host, patch, data, attacks=names, budgets=args.budget)
    report |= {"model": args.model, "patch": args.patch, "reference_model": None, "budget_preset": args.budget}
    if args.json:
        _print_json(report)
        return 0
    print(f"{args.model}: attacks on {concept!r} before and after the patch (no reference: recovery is null)")
    print(f"{'attack':20s}{'original':>9s}{'edited':>8s}{'seconds':>8s}")
    print(f"{'no attack':20s}{report['no_attack']['original']:9.2f}{report['no_attack']['edited']:8.2f}")
    for name in names:
        r = report[name]
        print(f"{name:20s}{r['original']:9.2f}{r['edited']:8.2f}{r['seconds']:8.1f}")
    worst = report["worst_score"]
    print(f"worst score after an attack: {'-' if worst is None else f'{worst:.2f}'} ({report['worst_score_attack']})")
    return 0


def cmd_bench(args) -> int:
    _check_names(args.model, (args.concepts or []) + (args.multi or []))
    from .bench import BenchConfig, run_bench

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    default = BenchConfig()
    pick = lambda given, fallback: list(fallback) if given is None else given  # noqa: E731
    cfg = BenchConfig(model=args.model, concepts=pick(args.concepts, default.concepts),
                      methods=pick(args.methods, default.methods), seeds=args.seeds,
                      multi=pick(args.multi, default.multi), slug_policy=args.slug_policy, max_steps=args.max_steps,
                      eval_every=args.eval_every, match=pick(args.match, default.match),
                      match_budget=default.match_budget if args.match_budget is None else args.match_budget,
                      mia_pictures=args.mia_pictures, n_test=args.n_test, attacks=args.attacks,
                      attack_budget=args.attack_budget)
    table = run_bench(cfg, args.out, progress=not args.quiet)
    out = Path(args.out)
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and {out / 'tradeoff.png'} ({len(table)} rows)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``slugkit unlearn: error: ... (see `slugkit unlearn --help`)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_in(lo: int, hi: int, what: str = ""):
    """An argparse type: an integer in ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}{what}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}{what}, got {value}")
        return value
    return parse


def _pictures(text: str) -> int:
    """An argparse type: a number of pictures that fits in memory (see slugkit.bounds.max_pictures)."""
    try:
        return check_pictures(int(text), "--n-test")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if text.strip().lstrip("-").isdigit()
                                         else f"expected a positive integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="slugkit", description="Single Layer Unlearning Gradient, runnable: forget one concept from a "
                "CLIP model by editing one layer. Start with `slugkit demo`, then `slugkit unlearn --help`.",
                epilog="Exit codes: 0 done, 2 bad input (one sentence on stderr), 3 the run finished but its status "
                "is not 'ok', 1 internal error (rerun with --debug), 4 another process of a data-parallel run stopped, "
                "130 interrupted.")
    p.add_argument("--debug", action="store_true", help="show the full traceback instead of a one-sentence error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("concepts", help="list the forgettable concepts of a world",
                       description="List the concepts a toy model can forget (characters, objects, styles, colours).")
    c.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help="a toy model ('toy-clip' or 'toy-clip-hf'); real models "
                   "forget whatever your data's captions name")
    c.add_argument("--json", action="store_true", help="print a JSON list of {name, kind, ...} objects")
    c.set_defaults(func=cmd_concepts)

    u = sub.add_parser("unlearn", help="forget one concept; writes report.json and patch.safetensors",
                       description="Run SLUG: one gradient pass, pick a layer, search the step size, and write "
                       "OUT/report.json and OUT/patch.safetensors (together, atomically).")
    u.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help=MODEL_HELP)
    u.add_argument("--forget", required=True, action="append", metavar="CONCEPT", help="the concept to forget, e.g. "
                   "'Captain Zorp' (case and extra spaces ignored; `slugkit concepts` lists the toy world's); with "
                   "--data, every pair whose caption names it is forgotten. Repeat it (--forget A --forget B) to "
                   "forget several toy concepts of one kind at once, one layer each, as the paper does")
    u.add_argument("--out", required=True, metavar="DIR", help="new or empty output folder (checked before any work); "
                   "an existing run there is refused unless --overwrite")
    u.add_argument("--overwrite", action="store_true", help="replace the whole previous slugkit run in --out "
                   "(never mixes two runs; refuses a folder of other files)")
    u.add_argument("--data", metavar="PATH", help="your pictures for a real model: an image folder with captions, a CSV of "
                   "image,caption, a webdataset .tar shard or a brace pattern like 'shards/{000..009}.tar'")
    u.add_argument("--classes", nargs="+", metavar="NAME", help="with --data: other names the model must still tell apart "
                   "(retain accuracy is measured on pictures whose caption names exactly one of them)")
    u.add_argument("--policy", help="'pareto' (default on a CLIP: try every Pareto-front layer, keep the best, as the "
                   "authors), 'cheapest-first' (default with --data on a model of 50M parameters or more, for time: "
                   "the text tower's Pareto layers, then the vision tower's, each deepest first, stopping at the first "
                   "that meets the target), 'deepest' (the deepest Pareto layer of --tower, text by default), "
                   "'deepest-first' (--tower's Pareto layers deepest first, stopping at the first that meets the "
                   "target), or one parameter name; LLaVA hosts take it from --preset")
    u.add_argument("--tower", choices=["vision", "text"], help="only consider layers of this tower")
    u.add_argument("--include", nargs="+", metavar="KIND", help="only these candidate kinds (attn_qkv, mlp_fc, ...) or name regexes")
    u.add_argument("--exclude", nargs="+", metavar="KIND", help="drop these candidate kinds or name regexes")
    u.add_argument("--target", choices=["top1", "top5"],
                   help="forget metric driven to 0 (default top5, the authors' rule; top1 can leave the name second)")
    u.add_argument("--candidates", choices=["default", "reference"],
                   help="candidate layers: 'default' = 2-D attention/MLP weights of every block; 'reference' = the "
                        "authors' set (every parameter but biases, logit_scale, positional/token embeddings)")
    u.add_argument("--preset", choices=["slugkit", "reference", "orthogonal", "guarded", "clip-side"],
                   help="On a CLIP (and SD): 'slugkit' (default) or 'reference' = the authors' choices (reference "
                        "candidates, top5 rule, exactly 10 evaluations, no early stop; the report adds their "
                        "returned (last) lambda). On LLaVA hosts: 'reference' = the authors' LLaVA recipe (bare-name "
                        "forget text, deepest Pareto vision layer, step size searched on LLaVA's answers); 'slugkit' "
                        "= it searched on more pictures and phrasings; 'orthogonal' = 'slugkit' with the edit made "
                        "orthogonal to the other characters' forget gradients; 'guarded' (LLaVA's default) = "
                        "'orthogonal' with a guarded walk to the next layer of the block when the other names or VQA "
                        "suffer on the search pictures; 'clip-side' = the older recipe searched on the CLIP "
                        "(docs/llava.md)")
    u.add_argument("--max-evals", type=_int_in(MAX_EVALS_MIN, MAX_EVALS_MAX), metavar="N",
                   help=f"step sizes tried per layer, {MAX_EVALS_MIN}..{MAX_EVALS_MAX} (default 10; each is one "
                   "evaluation; the bracket halves each time)")
    u.add_argument("--search-batch", type=_int_in(MAX_EVALS_MIN, MAX_EVALS_MAX), default=1, metavar="K",
                   help="step sizes of the search's doubling phase measured per batched pass on the toy world "
                   "(default 1: one at a time); the same steps and result either way, and on this project's CPU no "
                   "faster (docs/measurements.md)")
    u.add_argument("--seed", type=_int_in(SEED_MIN, SEED_MAX), default=0, metavar="N",
                   help=f"random seed, {SEED_MIN}..{SEED_MAX} (default 0): picks the toy world's pictures and "
                   "the retain sample; same seed, same result")
    u.add_argument("--batch-size", type=_int_in(BATCH_SIZE_MIN, BATCH_SIZE_MAX, " (the contrastive retain loss "
                   "needs 2 pairs per batch)"), default=64, metavar="N", help=f"pairs per gradient batch, {BATCH_SIZE_MIN}.."
                   f"{BATCH_SIZE_MAX} (default 64; lower it if memory runs out)")
    u.add_argument("--profile", action="store_true", help="add a 'profile' block to report.json (seconds and peak "
                   "memory per stage: startup, imports, load, data, gradients, layer table, each layer's search, patch, "
                   "report) and print it")
    u.add_argument("--no-repair", action="store_true", help="several --forget concepts only: leave out slugkit's "
                   "retain repair (one retain-gradient step on the composed model, off the forget gradients; "
                   "docs/atlas.md) and run the paper's procedure alone")
    u.add_argument("--retain", choices=["shared", "per-concept"], default="shared",
                   help="retain set of the retain gradient: 'shared' (default) = one fixed seeded set per model, its "
                        "gradient computed once and reused for every concept; 'per-concept' = pairs that do not name "
                        "the concept, recomputed every run")
    u.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)
    u.add_argument("--no-cache", action="store_true", help="do not reuse stored gradients")
    u.add_argument("--nproc", type=_int_in(1, 1024), default=1, metavar="N",
                   help="run data parallel in N processes on this machine (starts torchrun: gloo on CPU, one GPU "
                        "per process with NCCL); the same as `torchrun --nproc-per-node N -m slugkit unlearn ...`")
    u.add_argument("--search", choices=["clip", "generation", "refine", "host"], default=None,
                   help="hosts only: search lambda on the matching CLIP's forget metric ('clip'), choose the layer "
                        "that way and search its lambda again on the host's own outputs (judged pictures for SD, "
                        "answers for LLaVA: 'generation', SD's default), the same started at the CLIP's lambda and "
                        "stopped after a few evaluations ('refine'), or pick the layer by --policy and search its "
                        "lambda on the host's outputs only ('host': LLaVA's default)")
    u.add_argument("--forget-text", choices=["name", "captions"], default=None,
                   help="hosts only: pair each forget picture with the concept's bare name for the forget gradient "
                        "(the default for SD, as the authors' UnlearnCanvas runs) or with its own caption (the "
                        "default for LLaVA, as on CLIP)")
    u.set_defaults(func=cmd_unlearn)

    ly = sub.add_parser("layers", help="stages 1-2 only: which layers hold a concept (no unlearning)",
                        description="Compute the forget and retain gradients and the layer table (importance, "
                        "alignment, Pareto front) of one concept, as `slugkit unlearn` would, without searching a "
                        "step size: writes OUT/layers.csv, layers.json, heatmap.png and pareto.png (atomically).")
    ly.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help=MODEL_HELP.split(", or a model that")[0])
    ly.add_argument("--forget", required=True, metavar="CONCEPT", help="the concept to locate, e.g. 'Captain Zorp'")
    ly.add_argument("--out", required=True, metavar="DIR", help="new or empty output folder (checked before any work)")
    ly.add_argument("--overwrite", action="store_true", help="replace a previous slugkit run in --out")
    ly.add_argument("--data", metavar="PATH", help="your pictures for a real model, as for `slugkit unlearn`")
    ly.add_argument("--classes", nargs="+", metavar="NAME", help="with --data: the other names (as for unlearn)")
    ly.add_argument("--tower", choices=["vision", "text"], help="only this tower's layers")
    ly.add_argument("--include", nargs="+", metavar="KIND", help="only these candidate kinds or name regexes")
    ly.add_argument("--exclude", nargs="+", metavar="KIND", help="drop these candidate kinds or name regexes")
    ly.add_argument("--candidates", choices=["default", "reference"], help="candidate set, as for unlearn")
    ly.add_argument("--seed", type=_int_in(SEED_MIN, SEED_MAX), default=0, metavar="N", help="random seed (default 0)")
    ly.add_argument("--batch-size", type=_int_in(BATCH_SIZE_MIN, BATCH_SIZE_MAX), default=64, metavar="N",
                    help="pairs per gradient batch (default 64)")
    ly.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)
    ly.add_argument("--no-cache", action="store_true", help="do not reuse stored gradients")
    ly.add_argument("--json", action="store_true", help="print layers.json to stdout instead of a table")
    ly.set_defaults(func=cmd_layers)

    at = sub.add_parser("atlas", help="where every toy concept lives: concept x layer importance, alignment, "
                        "Pareto layers and gradient similarity", description="Stages 1-2 for every MiniCanvas concept "
                        "with one shared retain gradient; writes matrices (CSV, NPZ, JSON) and figures into OUT.")
    at.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help="a toy CLIP: 'toy-clip' (default) or 'toy-clip-hf'")
    at.add_argument("--out", required=True, metavar="DIR", help="new or empty output folder (checked before any work)")
    at.add_argument("--overwrite", action="store_true", help="replace a previous slugkit run in --out")
    at.add_argument("--concepts", nargs="+", metavar="NAME", help="only these concepts (default: all 38)")
    at.add_argument("--max-forget", type=_int_in(1, 2000), default=64, metavar="N",
                    help="forget pairs per concept (default 64, seeded sample)")
    at.add_argument("--seed", type=_int_in(SEED_MIN, SEED_MAX), default=0, metavar="N", help="random seed (default 0)")
    at.set_defaults(func=cmd_atlas)

    e = sub.add_parser("eval", help="zero-shot accuracy per attribute, optionally with a patch",
                       description="Zero-shot accuracy of a toy model on held-out MiniCanvas pictures, per "
                       "attribute (identity, object, style, colour).")
    e.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help="a toy model: 'toy-clip' (default) or "
                   "'toy-clip-hf', or a host: 'toy-sd', 'toy-llava' (scored on its own generations / answers)")
    e.add_argument("--patch", metavar="FILE", help="a patch file written by `slugkit unlearn` (OUT/patch.safetensors) to apply "
                   "first; refused if it was made for other weights")
    e.add_argument("--n-test", type=_pictures, default=2000, metavar="N", help="held-out test pictures to score (default 2000; "
                   "at most what half the available memory holds, 32 KiB per picture)")
    e.add_argument("--json", action="store_true", help="print JSON {model, patch, metrics: {attribute: {top1, top5, per_concept}}} "
                   "(accuracies as fractions) instead of a table")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("toy", help="toy-world checkpoints", description="Rebuild the toy world's checkpoints.")
    tsub = t.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    b = tsub.add_parser("build", help="train a toy-world model from scratch into data/ (default: the toy CLIP, "
                        "about 25 minutes on 2 cores)")
    b.add_argument("target", nargs="?", default="clip", choices=["clip", "sd", "judge", "llava"],
                   help="clip (toy CLIP), judge (picture classifier), sd (judge + toy SD VAE and UNet), "
                        "llava (needs the toy CLIP)")
    b.add_argument("--threads", type=int, metavar="N",
                   help="clip, llava: torch CPU threads (default all cores; 1 on a busy machine)")
    b.add_argument("--without", metavar="CONCEPT", help="clip: the reference model, retrained with the same recipe "
                   "and seed but without any picture of CONCEPT or caption naming it (written as "
                   "toy-clip-without-<name>.safetensors; load it as 'toy-clip-without:CONCEPT')")
    b.add_argument("--out", metavar="DIR", help="folder to write to (default: the data/ folder)")
    b.set_defaults(func=cmd_toy)

    bp = sub.add_parser("bench", help="SLUG vs GA, FT, GA+FT, SalUn, SSD: bench.json, bench.md, tradeoff.png")
    bp.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                    help="a toy CLIP: 'toy-clip' (default) or 'toy-clip-hf'")
    bp.add_argument("--concepts", nargs="*", help="concepts forgotten one at a time (default: 3 characters, "
                    "1 style, 1 object)")
    bp.add_argument("--methods", nargs="+", help="any of slug ga ft gaft salun ssd (default: all)")
    bp.add_argument("--seeds", nargs="+", type=int, default=[0], help="data seeds (forget/retain draw and splits)")
    bp.add_argument("--multi", nargs="*", help="characters forgotten together, one layer per concept (the paper's way) and by one "
                    "joint run (default: the 3 default characters; no names: skip)")
    bp.add_argument("--slug-policy", default="pareto", help="SLUG layer policy: pareto, deepest or a layer name")
    bp.add_argument("--max-steps", type=int, default=20, help="baseline steps per grid point")
    bp.add_argument("--eval-every", type=int, default=5, help="baseline steps between evaluations")
    bp.add_argument("--match", nargs="*", help="baselines that also run until they match SLUG's forget target, "
                    "retain and utility (within 1 point, search split): match_seconds / match_steps (default: gaft "
                    "salun; no names: skip)")
    bp.add_argument("--match-budget", type=int, help="optimiser steps over the grid before a match run gives up "
                    "(default: slugkit.baselines.MATCH_BUDGET_STEPS)")
    bp.add_argument("--mia-pictures", type=int, default=100, help="training and unseen pictures per concept for MIA")
    bp.add_argument("--n-test", type=int, default=2000, help="held-out test pictures")
    bp.add_argument("--attacks", action="store_true", help="also run every recovery attack (slugkit attack) on each "
                    "character's rows, and the model retrained without the character where it is shipped: one "
                    "column per attack and a worst case")
    bp.add_argument("--attack-budget", choices=["bench", "default", "quick"], default="bench",
                    help="the attacks' budgets with --attacks: bench (default: the `slugkit attack` budgets with "
                    "relearning stopped at its 10-step headline), default or quick (smoke tests)")
    bp.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    bp.add_argument("--quiet", action="store_true", help="no progress bars")
    bp.add_argument("--out", required=True, help="output folder")
    bp.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the quickstart: meet the toy world, unlearn one character",
                       description="Evaluate the toy CLIP, draw a sample sheet and unlearn one character; writes "
                       "OUT/sample_sheet.png and OUT/unlearn/ (atomically).")
    d.add_argument("--out", default="runs/demo", metavar="DIR", help="new or empty output folder (default runs/demo)")
    d.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out")
    d.add_argument("--forget", default="Captain Zorp", metavar="CONCEPT", help="the character to forget (default 'Captain Zorp')")
    d.add_argument("--quick", action="store_true", help="a shorter demo for slow machines and install checks: 500 "
                   "test pictures, 256 retain pairs, only the deepest Pareto layer of the vision tower searched "
                   "(about a third of the CPU time)")
    d.set_defaults(func=cmd_demo)
    nb = sub.add_parser("notebooks", help="copy the notebook series into a folder of your own",
                        description="Copy the notebooks (00_toy_world ... ) shipped with slugkit into DIR, to run "
                        "and edit them anywhere; `slugkit lab DIR` opens them.")
    nb.add_argument("dir", metavar="DIR", help="folder to copy into (created if needed)")
    nb.add_argument("--student", action="store_true", help="coursework copies: without the reference answers "
                    "(cells tagged 'solution'), so the exercise checkers see your own code")
    nb.add_argument("--overwrite", action="store_true", help="replace notebooks already in DIR (default: keep "
                    "them, they may hold your work)")
    nb.set_defaults(func=cmd_notebooks)
    lb = sub.add_parser("lab", help="open the notebook series in JupyterLab",
                        description="Copy the notebooks into DIR (keeping any already there) and start JupyterLab "
                        "on it. Needs JupyterLab: pip install 'slugkit[notebooks]'.")
    lb.add_argument("dir", nargs="?", default="slugkit-notebooks", metavar="DIR",
                    help="folder of your notebooks (default ./slugkit-notebooks)")
    lb.add_argument("--student", action="store_true", help="copy coursework copies (no reference answers)")
    lb.add_argument("--no-browser", action="store_true", help="start the server without opening a browser")
    lb.set_defaults(func=cmd_lab)
    at = sub.add_parser("attack", help="recovery attacks: is the forgotten concept gone, or only hidden?",
                        description="Run recovery attacks (adversarial prompt, concept arithmetic, relearning, soft "
                        "prompt, paraphrases, pixel PGD, linear probe) on the original, the patched and the "
                        "reference model (the toy CLIP retrained without the concept), and report recovery "
                        "(edited - reference) / (original - reference).")
    at.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help="the model the patch was made for: a toy "
                    "CLIP ('toy-clip', default) or a toy host ('toy-llava': paraphrase, pixel_pgd, linear_probe; "
                    "'toy-sd': adversarial_prompt, paraphrase, concept_arithmetic)")
    at.add_argument("--patch", required=True, metavar="FILE", help="patch.safetensors written by `slugkit unlearn`")
    at.add_argument("--concept", metavar="NAME", help="the character to attack (default: the patch's)")
    at.add_argument("--attack", action="append", metavar="NAME", help="one attack (repeatable; default: every "
                    "attack): adversarial_prompt, concept_arithmetic, relearn, relearn_retain, soft_prompt, "
                    "paraphrase, pixel_pgd, linear_probe")
    at.add_argument("--reference", metavar="NAME", help="the reference model (default 'toy-clip-without:CONCEPT' "
                    "when its checkpoint exists; 'none': no reference, recovery null)")
    at.add_argument("--budget", choices=["default", "bench", "quick"], default="default",
                    help="attack budgets: default (about 60 s per attack and model on 2 idle cores), bench (the "
                    "default with relearning stopped at 10 steps, as `slugkit bench --attacks`) or quick (a few "
                    "seconds, for smoke tests); the budgets used are in the output")
    at.add_argument("--seed", type=_int_in(SEED_MIN, SEED_MAX), default=0, metavar="N",
                    help=f"which pictures attack and score, {SEED_MIN}..{SEED_MAX} (default 0)")
    at.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    at.add_argument("--json", action="store_true", help="print {attack: {original, edited, reference, recovery, "
                    "budget, seconds, ...}, worst_recovery, ...} as JSON")
    at.set_defaults(func=cmd_attack)
    a = sub.add_parser("attribute", help="Captum attributions of the image-text cosine before vs after a patch")
    a.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help=MODEL_HELP)
    a.add_argument("--patch", required=True, help="patch.safetensors written by `slugkit unlearn`")
    a.add_argument("--concept", help="MiniCanvas concept whose pictures to explain (default: the patch's)")
    a.add_argument("--method", choices=["ig", "saliency-nt", "gradshap"], default="ig", help="pixel attribution")
    a.add_argument("--n-images", type=int, default=8, help="pictures per group (forget, retain)")
    a.add_argument("--n-steps", type=int, default=32, help="integration steps of pixel IG")
    a.add_argument("--block-steps", type=int, default=16, help="integration steps of the per-block IG")
    a.add_argument("--seed", type=_int_in(SEED_MIN, SEED_MAX), default=0, metavar="N",
                   help=f"which pictures to explain, {SEED_MIN}..{SEED_MAX} (default 0)")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=cmd_attribute)
    _add_debug_everywhere(p)
    return p


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after any subcommand too (``slugkit unlearn ... --debug``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                if "--debug" not in subparser._option_string_actions:
                    subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                           help="show the full traceback instead of a one-sentence error")
                _add_debug_everywhere(subparser)


USER_ERRORS = (ValueError, KeyError, LookupError, OSError, RuntimeError, TypeError, ArithmeticError)


def _one_line(err: BaseException) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    text = " ".join(str(msg).split())
    return text or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line); the default format returns with --debug."""
    print(f"slugkit: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _speaks(err: BaseException) -> bool:
    """Whether this process prints ``err``: yes alone; under torchrun rank 0 (the others hit the same error),
    except for a lost process when `slugkit unlearn --nproc` launched the run (the launcher names it)."""
    from_launcher = type(err).__name__ == "PeerLost" and os.environ.get("SLUGKIT_LAUNCHED") == "1"
    return os.environ.get("RANK", "0") == "0" and not from_launcher


def main(argv: list[str] | None = None) -> int:
    """The ``slugkit`` command: run ``argv`` (default: the command line) and return the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    debug = getattr(args, "debug", False)
    old_show = warnings.showwarning
    if not debug:
        warnings.showwarning = _show_warning
    try:
        code = args.func(args)
        if argv is None:  # the process ends next: its exit need not walk every object torch and its imports made
            gc.freeze()   # (the interpreter's last collections took 1.5 s of a 10 s run; docs/measurements.md)
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"slugkit {args.command}: interrupted; output folders were left as they were", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        if _speaks(err):
            print(f"slugkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except Exception as err:  # a bug, not a user mistake: still one line, with the way to the traceback
        if debug:
            raise
        print(f"slugkit {args.command}: internal error: {type(err).__name__}: {_one_line(err)} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = old_show


if __name__ == "__main__":
    sys.exit(main())

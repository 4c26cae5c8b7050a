"""Probe (investigation, not part of the pipeline): which lever lets the toy LLaVA forget a character without the
others' names (issue 20's retain failures).

    python scripts/probe_llava_levers.py "Lumi Okafor" [--levers base proj-retain proj-others ...] [--layers ...]

For one character and each (layer, lever): the edit direction on that layer, its step size searched on LLaVA's
answers exactly as the default recipe searches it (``LLAVA_RECIPES["slugkit"]``: every validation picture of the
character x the 6 name phrasings, the smallest lambda at which no answer names it, rtol 0.05), then LLaVA's
answers on the report's held-out test pictures (``host.report_metrics``). Levers (directions on one layer):

- ``base``: the forget gradient g_f (the default recipe).
- ``proj-retain``: g_f minus its component along the shared retain gradient g_r of the same layer.
- ``proj-others``: g_f minus its projection on the span of the other 12 characters' forget gradients (bare names):
  the direction of ``--preset orthogonal``.
- ``proj-mean``: g_f minus its component along the mean of the other characters' forget gradients.
- ``answer``: the gradient of LLaVA's own answer loss (the name's tokens after 8 training identity phrasings, 128
  training pictures of the character) instead of the CLIP's forget gradient.
- ``answer-proj``: ``answer`` minus its component along the same loss's gradient on 128 pictures of the other
  characters (each with its own name).

Gradients come from ``$SLUGKIT_CACHE/gradients`` (computed there on first use). Prints one line per run and appends
it as JSON to ``--log``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from slugkit.adapters.host import load_host
from slugkit.adapters.llava import LLAVA_RECIPES, load_toy_llava
from slugkit.data.minicanvas import CHARACTER_NAMES
from slugkit.data.pairs import pair_loader
from slugkit.gradients import GradientStore, compute_gradients, project_out
from slugkit.models.loading import load_clip
from slugkit.patch import Patch, scope_fingerprint
from slugkit.resources import cache_dir
from slugkit.slug import make_task
from slugkit.step_size_search import search_step_size

LEVERS = ("base", "proj-retain", "proj-others", "proj-mean", "answer", "answer-proj")


def gradients(clip, name: str, layers: list[str], store: GradientStore):
    """Forget (bare name) and shared retain gradients of ``layers``, as :func:`slugkit.slug.unlearn` computes them."""
    task = make_task(clip, name).with_forget_caption(name)
    forget = pair_loader(task.forget, clip, batch_size=64)
    retain = pair_loader(task.shared_retain, clip, batch_size=64, equal_batches=True)
    retain_layers = sorted(set(layers) | {i.name for i in clip.candidate_layers()})
    return compute_gradients(clip, forget, retain, layers=layers, store=store, progress=False,
                             retain_layers=retain_layers, reuse_retain=True)


def answer_grad(host, layer: str, character: str | None, others: bool = False, n: int = 128) -> torch.Tensor:
    """Mean gradient of LLaVA's name-answer loss over 8 training phrasings w.r.t. one vision-tower weight, on ``n``
    training pictures of ``character`` (or, ``others``, of the other characters), each with its own name."""
    from slugkit.data.minicanvas import cached_split
    from slugkit.eval.vlm import pictures_for
    from slugkit.models import toy_llava as TL

    m, tok, tower = host.model, host.tokenizer, host.tower_module()
    tr = cached_split(n=6000, seed=0, split="train")
    chars = pictures_for(tr, "identity")
    who = tr.identity[chars] == CHARACTER_NAMES.index(character)
    idx = chars[~who if others else who][:n]
    W = tower.get_parameter(layer.removeprefix(host.scope + "."))
    W.requires_grad_(True)
    pix = host.preprocess(tr.images[idx])
    names = [CHARACTER_NAMES[tr.identity[i]] for i in idx]
    eos = tok.convert_tokens_to_ids(TL.EOS)
    qs = TL.phrasings("identity", "train")[:8]
    W.grad = None
    for q in qs:
        prompt = TL.prompt_ids(tok, q, 17 if m.config.vision_feature_select_strategy == "full" else 16)
        seqs = [prompt + tok(x, add_special_tokens=False)["input_ids"] + [eos] for x in names]
        ids, labels = TL.padded_answers(seqs, [len(prompt)] * len(seqs), pad_id=0)
        hs = tower(pix, output_hidden_states=True).hidden_states[m.config.vision_feature_layer]
        hs = hs[:, 1:] if m.config.vision_feature_select_strategy == "default" else hs
        TL.answer_loss(m, hs, ids, labels).backward()
    W.requires_grad_(False)
    out = W.grad.detach().clone() / len(qs)
    W.grad = None
    return out


def direction(lever: str, layer: str, g, others: dict, host=None, name=None) -> torch.Tensor:
    gf = g.forget[layer].double().flatten()
    if lever.startswith("answer"):
        d = answer_grad(host, layer, name).double().flatten()
        if lever == "answer-proj":
            go = answer_grad(host, layer, name, others=True).double().flatten()
            d = d - (d @ go) / (go @ go) * go
    elif lever == "base":
        d = gf
    elif lever == "proj-retain":
        gr = g.retain[layer].double().flatten()
        d = gf - (gf @ gr) / (gr @ gr) * gr
    elif lever == "proj-mean":
        go = torch.stack([o.forget[layer].double().flatten() for o in others.values()]).mean(0)
        d = gf - (gf @ go) / (go @ go) * go
    elif lever == "proj-others":  # what --preset orthogonal does (unlearn(project_off=...))
        d = project_out(gf, [o.forget[layer].double().flatten() for o in others.values()])
    else:
        raise ValueError(lever)
    return d.reshape(g.forget[layer].shape).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("characters", nargs="+")
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    p.add_argument("--layers", nargs="+", default=["vision_model.encoder.layers.5.mlp.fc2.weight"])
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--threshold", type=float, default=0.0, help="stop rule: forget_top1 <= this on the search "
                                                                "pictures (the default recipe: 0)")
    p.add_argument("--log", default="runs/probe_levers.jsonl")
    p.add_argument("--checkpoint", help="another toy LLaVA checkpoint (e.g. one built with LLaVA-1.5's layout)")
    args = p.parse_args()
    host = load_toy_llava(args.n_eval, path=args.checkpoint) if args.checkpoint else load_host("toy-llava",
                                                                                                n_eval=args.n_eval)
    clip = load_clip(host.clip_name)
    store = GradientStore(cache_dir() / "gradients")
    allowed = [i.name for i in clip.candidate_layers() if host.accepts(i)]
    recipe = LLAVA_RECIPES["slugkit"]
    target = dataclasses.replace(recipe.target, threshold=args.threshold)
    for name in args.characters:
        g = gradients(clip, name, allowed, store)
        others = {}
        if {"proj-others", "proj-mean"} & set(args.levers):
            others = {o: gradients(clip, o, allowed, store) for o in CHARACTER_NAMES if o != name}
        evaluate = host.generation_evaluator(name, clip, **recipe.search_options)
        for layer in args.layers:
            param = clip.parameter(layer)
            for lever in args.levers:
                d = direction(lever, layer, g, others, host, name)
                t, c = time.perf_counter(), time.process_time()
                s = search_step_size(param, d, evaluate, target, max_evals=recipe.max_evals, layer_name=layer,
                                     rtol=recipe.rtol, progress=False)
                row = {"checkpoint": args.checkpoint, "character": name, "layer": layer, "lever": lever,
                       "threshold": args.threshold, "status": s.status,
                       "trace": [(round(st.lam / s.lambda0, 3), {k: round(v, 3) for k, v in st.metrics.items()})
                                 for st in s.trace],
                       "cos_gf": float(torch.nn.functional.cosine_similarity(d.flatten().double(),
                                                                            g.forget[layer].flatten().double(), 0)),
                       "search_s": round(time.perf_counter() - t, 1), "search_cpu_s": round(time.process_time() - c, 1)}
                if s.best_lambda is not None:
                    scope = clip.patch_scope(layer)
                    patch = Patch.from_step(clip.name, name, layer, s.best_lambda, d,
                                            scope_fingerprint(clip.model, scope), s.best_metrics, scope=scope)
                    m = host.report_metrics(name, patch, progress=False)
                    row |= {"lambda": s.best_lambda, "lambda_over_l0": s.best_lambda / s.lambda0,
                            "search": s.best_metrics,
                            **{k: round(100 * m[k], 1) for k in ("vlm_forget_rate_after", "vlm_retain_acc_after",
                                                                 "vlm_vqa_acc_after")}}
                print(json.dumps(row), flush=True)
                Path(args.log).parent.mkdir(parents=True, exist_ok=True)
                with open(args.log, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

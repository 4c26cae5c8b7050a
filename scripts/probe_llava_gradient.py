"""Probe (investigation, not part of the pipeline): SLUG's update with a forget gradient taken through LLaVA itself.

Written for the first toy LLaVA, which read block 4's patch tokens (LLaVA-1.5's layout) and did not inherit SLUG's
CLIP edit; it reads whatever the shipped checkpoint's config says (vision_feature_layer, select strategy).

    python scripts/probe_llava_gradient.py "Mira Quell" encoder.layers.4.self_attn.out_proj.weight

The gradient of LLaVA's answer loss (name tokens, 8 training identity phrasings, up to 128 training pictures of
the character) with respect to one vision-tower weight, instead of the CLIP forget gradient; then the answer-based
search metrics (``slugkit.eval.vlm.search_metrics`` on 300 validation pictures) at lambda_0 x 1, 2, 4, 8 with
lambda_0 = 0.1 ||theta|| / ||g_f||. Prints one line per step size. A third argument "orthogonal" removes from g_f
its component along the retain gradient (the same loss on 128 pictures of the other characters, their own names).
"""
import torch, numpy as np, time, sys
from slugkit.adapters.llava import load_toy_llava
from slugkit.data.minicanvas import cached_split, CHARACTER_NAMES
from slugkit.models import toy_llava as TL
from slugkit.eval.vlm import search_metrics, pictures_for
name = sys.argv[1]; pname = sys.argv[2]
host = load_toy_llava(n_eval=400)  # the checkpoint in data/
m, tok = host.model, host.tokenizer
tr = cached_split(n=6000, seed=0, split="train")
chars = pictures_for(tr, "identity")
fidx = chars[tr.identity[chars] == CHARACTER_NAMES.index(name)][:128]
tower = host.tower_module()
W = tower.get_parameter(pname)
W.requires_grad_(True)
qs = TL.phrasings("identity", "train")[:8]
eos = tok.convert_tokens_to_ids(TL.EOS)
ans = tok(name, add_special_tokens=False)["input_ids"] + [eos]


def answer_grad(indices):
    """Mean gradient of the name-answer loss over ``qs`` on pictures ``indices`` (each with its own name)."""
    pix = host.preprocess(tr.images[indices])
    names = [CHARACTER_NAMES[tr.identity[i]] for i in indices]
    W.grad = None
    for q in qs:
        p = TL.prompt_ids(tok, q, 16)
        seqs = [p + tok(n, add_special_tokens=False)["input_ids"] + [eos] for n in names]
        ids, labels = TL.padded_answers(seqs, [len(p)] * len(seqs), pad_id=0)
        hs = tower(pix, output_hidden_states=True).hidden_states[m.config.vision_feature_layer]
        hs = hs[:, 1:] if m.config.vision_feature_select_strategy == "default" else hs
        TL.answer_loss(m, hs, ids, labels).backward()
    return W.grad.detach() / len(qs)


g = answer_grad(fidx)
if len(sys.argv) > 3 and sys.argv[3] == "orthogonal":
    ridx = chars[tr.identity[chars] != CHARACTER_NAMES.index(name)][:128]
    gr = answer_grad(ridx)
    g = g - (g * gr).sum() / (gr * gr).sum() * gr
W.requires_grad_(False)
lam0 = 0.1 * W.norm().item() / g.norm().item()
val = cached_split(n=300, seed=0, split="val")
orig = W.detach().clone()
print("base", search_metrics(m, tok, host.preprocess, val, name), flush=True)
for k in (1, 2, 4, 8):
    with torch.no_grad(): W.copy_(orig + k * lam0 * g)
    print(k, round(k * lam0, 3), search_metrics(m, tok, host.preprocess, val, name), flush=True)
with torch.no_grad(): W.copy_(orig)

"""The toy CLIP of the MiniCanvas world: an open_clip ViT + text transformer, trained by slugkit.

``slugkit toy build`` calls :func:`build`, which trains the model with :func:`train_toy_clip` and writes
``data/toy-clip.safetensors`` (fp16 weights; the config, the training recipe and the measured
zero-shot quality in the file's metadata). :func:`load_toy_clip` reads it back.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..resources import data_dir

CONFIG_DIR = Path(__file__).parent / "configs"
ARCH = "toy-clip"  # open_clip architecture name registered by :func:`register`
CHECKPOINT_NAME = "toy-clip.safetensors"

_registered = False


def warmup_cosine(step: int, peak: float, warmup: int, steps: int) -> float:
    """Learning rate at ``step``: linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def register() -> str:
    """Register slugkit's model configs with open_clip (idempotent); returns the toy architecture name."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    return ARCH


def create_toy_clip(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised toy CLIP (open_clip ``CLIP``), deterministic for a seed."""
    torch.manual_seed(seed)
    quiet = logging.getLogger()  # open_clip logs a warning for every model created without weights
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(register(), pretrained=None)
    finally:
        quiet.setLevel(level)


@dataclass
class TrainConfig:
    """The recipe of the shipped checkpoint. Units: steps of ``batch_size`` image-caption pairs."""

    seed: int = 0
    n_train: int = 24_000
    steps: int = 800
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 50
    eval_every: int = 50
    n_eval: int = 1_000


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                             positives: torch.Tensor) -> torch.Tensor:
    """CLIP contrastive loss where every caption that is true of an image counts as a positive.

    A MiniCanvas caption describes many pictures ("a photo of a star." fits every star); the plain
    loss would push a star picture away from that caption whenever it came with another picture.
    img, txt: (B, D) normalised; positives: (B, B) bool, ``positives[i, j]`` = caption j is true of
    image i (the diagonal must be True).
    """
    logits = scale * img @ txt.T
    pos = positives.float()
    return (F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, pos.T / pos.T.sum(1, keepdim=True))) / 2


def train_toy_clip(cfg: TrainConfig = TrainConfig(), progress: bool = True):
    """Train a toy CLIP on MiniCanvas from scratch. Returns ``(model, history)``.

    ``history`` is a list of dicts: step, loss and (every ``eval_every`` steps) zero-shot top-1 per
    attribute on held-out images.
    """
    from ..adapters.openclip import OpenCLIPAdapter
    from ..data.minicanvas import MiniCanvas
    from ..eval.zeroshot import zero_shot

    model = create_toy_clip(cfg.seed)
    adapter = OpenCLIPAdapter.from_model(model, ARCH)
    world = MiniCanvas(n=cfg.n_train, seed=cfg.seed, split="train")
    held_out = MiniCanvas(n=cfg.n_eval, seed=cfg.seed, split="test")

    # every caption each sample allows, tokenised once
    options = [world.all_captions(i) for i in range(len(world))]
    vocab = sorted({c for opts in options for c in opts})
    caption_id = {c: k for k, c in enumerate(vocab)}
    vocab_tokens = adapter.tokenize(vocab)
    n_opts = torch.tensor([len(o) for o in options])
    opt_ids = torch.full((len(world), int(n_opts.max())), -1, dtype=torch.long)
    for i, opts in enumerate(options):
        opt_ids[i, : len(opts)] = torch.tensor([caption_id[c] for c in opts])
    pixels_all = torch.from_numpy(world.images)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step):
        return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps)

    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="training toy CLIP", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, len(world), (cfg.batch_size,), generator=gen)
        pick = (torch.rand(cfg.batch_size, generator=gen) * n_opts[idx]).long()
        cap = opt_ids[idx, pick]
        img = adapter.encode_image(adapter.preprocess(pixels_all[idx]))
        txt = adapter.encode_text(vocab_tokens[cap])
        positives = (opt_ids[idx][:, :, None] == cap[None, None, :]).any(1)  # (B, B) caption j true of image i
        loss = multi_positive_clip_loss(img, txt, adapter.logit_scale(), positives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # as in CLIP: cap the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        record = {"step": step + 1, "loss": loss.item()}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            scores = zero_shot(adapter, held_out)
            model.train()
            record.update({f"{a}_top1": s["top1"] for a, s in scores.items()})
            bar.set_postfix({k[:5]: round(v, 3) for k, v in record.items() if k != "step"})
        history.append(record)
    model.eval()
    return model, history


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Write fp16 weights + JSON metadata (config, recipe, measured quality) as safetensors."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"slugkit": json.dumps(meta)})


def load_toy_clip(device: str | torch.device = "cpu", path: str | Path | None = None) -> torch.nn.Module:
    """The trained toy CLIP (fp32, eval mode) from ``data/toy-clip.safetensors`` or ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"toy CLIP checkpoint not found at {path}; rebuild it with `slugkit toy build` "
                                "or point SLUGKIT_DATA at the folder that holds it")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"toy CLIP checkpoint {path} is corrupt or not a safetensors file ({err}); "
                         "rebuild it with `slugkit toy build`") from err
    model = create_toy_clip()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"toy CLIP checkpoint {path} does not match the toy-clip architecture "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); rebuild it with `slugkit toy build`")
    return model.to(device).eval()


def checkpoint_metadata(path: str | Path | None = None) -> dict:
    """The JSON metadata stored with a toy checkpoint (recipe, history summary, quality)."""
    from safetensors import safe_open

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("slugkit", "{}"))


def build(out_dir: str | Path | None = None, cfg: TrainConfig = TrainConfig(), progress: bool = True) -> Path:
    """Train the toy CLIP from scratch and write its checkpoint; returns the file written."""
    from ..adapters.openclip import OpenCLIPAdapter
    from ..eval.zeroshot import toy_eval

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.time()
    model, history = train_toy_clip(cfg, progress=progress)
    path = Path(out_dir or data_dir()) / CHECKPOINT_NAME
    meta = {"arch": ARCH, "config": json.loads((CONFIG_DIR / f"{ARCH}.json").read_text()),
            "recipe": asdict(cfg), "train_seconds": round(time.time() - start, 1),
            "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
            "history": [h for h in history if len(h) > 2]}
    save_checkpoint(model, path, meta)
    # quality as stored (fp16 round trip), on the standard held-out split
    reloaded = load_toy_clip(path=path)
    scores = toy_eval(OpenCLIPAdapter.from_model(reloaded, ARCH))
    meta["zero_shot_top1"] = {a: round(s["top1"], 4) for a, s in scores.items()}
    save_checkpoint(reloaded, path, meta)
    return path

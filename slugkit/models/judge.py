"""The MiniCanvas judge: a small CNN, independent of every CLIP, that labels a picture.

It plays the role of UnlearnCanvas' ViT judges: generation metrics (UA/IRA/CRA, judged generation accuracy)
ask it what a generated picture shows. Five heads on one shared trunk: ``kind`` (character / object),
``identity`` (13 characters), ``object`` (10), ``style`` (7) and ``colour`` (8). A head is trained only on
the pictures its attribute applies to (characters have no object/style/colour).

``slugkit toy build judge`` calls :func:`build`, which trains it with :func:`train_judge` and writes
``data/judge.safetensors`` (fp16; recipe and measured held-out accuracy in the metadata).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.minicanvas import ATTRIBUTES, MiniCanvas, cached_split
from ..resources import data_dir

CHECKPOINT_NAME = "judge.safetensors"
HEADS = {"kind": ("character", "object"), **ATTRIBUTES}  # head name -> class names


class Judge(nn.Module):
    """CNN picture classifier: uint8 or float images -> logits per head.

    Input: ``(B, 3, 64, 64)`` float in [-1, 1] (the diffusion pipeline's range). :meth:`forward` returns
    ``{head: (B, n_classes)}``; :meth:`features` the pooled trunk features ``(B, width)`` used by the
    FID-like score.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.trunk = nn.Sequential(nn.Conv2d(3, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                                   nn.ReLU(),                                            # 32x32
                                   *conv(w, w), nn.MaxPool2d(2),                         # 16x16
                                   *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),  # 8x8
                                   *conv(2 * w, 4 * w), *conv(4 * w, 4 * w))
        self.width = 8 * w  # mean- and max-pooled channels
        self.heads = nn.ModuleDict({h: nn.Linear(self.width, len(c)) for h, c in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, 8*width)`` of images ``(B, 3, 64, 64)`` in [-1, 1]."""
        h = self.trunk(x)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {h: head(f) for h, head in self.heads.items()}


def to_judge_input(images) -> torch.Tensor:
    """uint8 ``(B, 64, 64, 3)`` numpy/tensor (or float ``(B, 3, 64, 64)`` in [-1, 1]) -> float ``(B, 3, 64, 64)``."""
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3) or float images (B, 3, H, W), got {tuple(x.shape)}")
    return x.float()


@dataclass
class JudgeConfig:
    """Recipe of the shipped judge. Units: optimiser steps of ``batch_size`` pictures."""

    seed: int = 0
    n_train: int = 24_000
    steps: int = 1_000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16
    blur_prob: float = 0.5   # augmentation: generated pictures are softer than drawn ones
    noise_std: float = 0.06  # augmentation: additive Gaussian noise in [-1, 1] units
    n_eval: int = 2_000
    eval_every: int = 200


def _labels(world: MiniCanvas) -> dict[str, torch.Tensor]:
    out = {"kind": torch.from_numpy(np.asarray(world.kind))}
    for a in ATTRIBUTES:
        out[a] = torch.from_numpy(np.asarray(world.labels(a)))
    return out


def _augment(x: torch.Tensor, cfg: JudgeConfig, gen: torch.Generator) -> torch.Tensor:
    """Random blur (3x3 box mixed with identity) and noise, per picture."""
    b = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = (torch.rand(b, 1, 1, 1, generator=gen) < cfg.blur_prob).float() * torch.rand(b, 1, 1, 1, generator=gen)
    x = x + amount * (blur - x)
    x = x + cfg.noise_std * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.2, 1.2)


def judge_loss(logits: dict, labels: dict) -> torch.Tensor:
    """Sum over heads of the cross-entropy on the pictures each head applies to (label >= 0)."""
    total = 0.0
    for h, y in labels.items():
        keep = y >= 0
        if keep.any():
            total = total + F.cross_entropy(logits[h][keep], y[keep])
    return total


@torch.no_grad()
def predict(judge: Judge, images, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Class index per head for each picture: ``{head: (B,) int}``. Images as in :func:`to_judge_input`."""
    judge.eval()
    x = to_judge_input(images)
    out: dict[str, list] = {h: [] for h in HEADS}
    for i in range(0, len(x), batch_size):
        logits = judge(x[i: i + batch_size])
        for h in HEADS:
            out[h].append(logits[h].argmax(1).numpy())
    return {h: np.concatenate(v) if v else np.zeros(0, np.int64) for h, v in out.items()}


def accuracy(judge: Judge, world: MiniCanvas, images=None) -> dict[str, float]:
    """Held-out accuracy per head on ``world`` (or on ``images`` labelled like ``world``, e.g. reconstructions)."""
    pred = predict(judge, world.images if images is None else images)
    labels = _labels(world)
    out = {}
    for h in HEADS:
        y = labels[h].numpy()
        keep = y >= 0
        out[h] = float((pred[h][keep] == y[keep]).mean()) if keep.any() else float("nan")
    return out


def train_judge(cfg: JudgeConfig = JudgeConfig(), progress: bool = True, log=None) -> tuple[Judge, list[dict]]:
    """Train the judge from scratch on MiniCanvas train pictures. Returns ``(judge, history)``.

    ``history``: dicts with step, loss and (every ``eval_every`` steps) held-out accuracy per head (val split).
    """
    torch.manual_seed(cfg.seed)
    world = cached_split(cfg.n_train, cfg.seed, "train")
    held_out = cached_split(cfg.n_eval, cfg.seed, "val")
    x_all = to_judge_input(world.images)
    y_all = _labels(world)
    judge = Judge(cfg.width)
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = tqdm(range(cfg.steps), desc="training judge", disable=not progress)
    for step in bar:
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)) * min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        judge.train()
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        x = _augment(x_all[idx], cfg, gen)
        loss = judge_loss(judge(x), {h: y[idx] for h, y in y_all.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record = {"step": step + 1, "loss": round(loss.item(), 4)}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record.update({f"{h}_acc": round(v, 4) for h, v in accuracy(judge, held_out).items()})
            bar.set_postfix({k[:5]: v for k, v in record.items() if k != "step"})
            if log:
                log(json.dumps(record))
        history.append(record)
    judge.eval()
    return judge, history


def save_judge(judge: Judge, path: Path, meta: dict) -> None:
    """fp16 weights (BatchNorm statistics included) + JSON metadata as safetensors."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in judge.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"slugkit": json.dumps(meta)})
    os.replace(tmp, path)


def load_judge(path: str | Path | None = None) -> Judge:
    """The trained judge (fp32, eval mode) from ``data/judge.safetensors`` or ``path``."""
    from safetensors.torch import load_file

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"judge checkpoint not found at {path}; rebuild it with `slugkit toy build judge`")
    meta = judge_metadata(path)
    judge = Judge(int(meta.get("recipe", {}).get("width", 16)))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    judge.load_state_dict(state)
    return judge.eval()


def judge_metadata(path: str | Path | None = None) -> dict:
    """The JSON metadata stored with the judge (recipe, measured accuracy)."""
    from safetensors import safe_open

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("slugkit", "{}"))


def build(out_dir: str | Path | None = None, cfg: JudgeConfig = JudgeConfig(), progress: bool = True,
          log=None, threads: int | None = None) -> Path:
    """Train the judge, measure it on the held-out test split (fp16 round trip) and write the checkpoint."""
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    start = time.time()
    judge, history = train_judge(cfg, progress=progress, log=log)
    path = Path(out_dir or data_dir()) / CHECKPOINT_NAME
    meta = {"recipe": asdict(cfg), "train_seconds": round(time.time() - start, 1),
            "history": [h for h in history if len(h) > 2]}
    save_judge(judge, path, meta)
    reloaded = load_judge(path)
    test = cached_split(2000, cfg.seed, "test")
    meta["test_accuracy"] = {h: round(v, 4) for h, v in accuracy(reloaded, test).items()}
    save_judge(reloaded, path, meta)
    if log:
        log(json.dumps({"test_accuracy": meta["test_accuracy"], "train_seconds": meta["train_seconds"]}))
    return path

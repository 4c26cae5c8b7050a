"""A tiny deterministic dual encoder behind the CLIPAdapter contract, for tests of the core stages."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slugkit.adapters.base import CLIPAdapter, LayerInfo, select_candidates

IMAGE_SIZE = 4
CONTEXT = 6
VOCAB = 32


class Block(nn.Module):
    """A residual block with the four candidate weights of a transformer block (no token mixing)."""

    def __init__(self, width: int):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.fc = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        x = x + self.out(v * torch.sigmoid(q * k))
        return x + self.proj(torch.tanh(self.fc(x)))


class Tower(nn.Module):
    def __init__(self, width: int, depth: int, dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class TinyDualEncoder(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2, dim: int = 6):
        super().__init__()
        self.patch = nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, width)
        self.vision = Tower(width, depth, dim)
        self.embed = nn.Embedding(VOCAB, width)
        self.text = Tower(width, depth, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class FakeAdapter(CLIPAdapter):
    family = "fake"

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
        torch.manual_seed(seed)
        super().__init__(TinyDualEncoder(**kw).to(dtype), name=f"fake-{seed}")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), CONTEXT, dtype=torch.int64)
        for i, text in enumerate(texts):
            for j, ch in enumerate(text[:CONTEXT]):
                ids[i, j] = 1 + ord(ch) % (VOCAB - 1)
        return ids

    def preprocess(self, images) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).float() / 255

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch(pixels.reshape(pixels.shape[0], -1).to(m.patch.weight.dtype))
        return F.normalize(m.vision(x), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        return F.normalize(m.text(m.embed(tokens).mean(dim=1)), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def describe_parameters(self) -> list[LayerInfo]:
        kinds = {"qkv": "attn_qkv", "out": "attn_out", "fc": "mlp_fc", "proj": "mlp_proj", "norm": "norm"}
        stems = {"vision": ("patch", "patch_embed"), "text": ("embed", "token_embed")}
        infos = []
        for tower in ("vision", "text"):
            stem, stem_kind = stems[tower]
            for pname, p in getattr(self.model, stem).named_parameters():
                kind = "bias" if pname == "bias" else stem_kind
                infos.append(LayerInfo(f"{stem}.{pname}", tower, -1, kind, tuple(p.shape)))
            blocks = getattr(self.model, tower).blocks
            for b, block in enumerate(blocks):
                for attr in ("norm", "qkv", "out", "fc", "proj"):  # forward order
                    for pname, p in getattr(block, attr).named_parameters():
                        kind = "bias" if pname == "bias" else kinds[attr]
                        infos.append(LayerInfo(f"{tower}.blocks.{b}.{attr}.{pname}", tower, b, kind, tuple(p.shape)))
            head = getattr(self.model, tower).head.weight
            infos.append(LayerInfo(f"{tower}.head.weight", tower, len(blocks), "proj", tuple(head.shape)))
        return infos

    def candidate_layers(self, candidates: str = "default") -> list[LayerInfo]:
        return select_candidates(self.describe_parameters(), candidates)


def make_batches(n_batches: int, batch_size: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` (pixels ``(B, 3, 4, 4)``, tokens ``(B, 6)``) pairs, deterministic."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
         torch.randint(0, VOCAB, (batch_size, CONTEXT), generator=g))
        for _ in range(n_batches)
    ]  # fmt: skip


def full_batch(batches):
    return torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches])


# --- tiny randomly initialised real model classes (open_clip CLIP, transformers CLIPModel) ---


def tiny_openclip(image_size=32, seed=0, **vision):
    import open_clip

    torch.manual_seed(seed)
    vision_cfg = dict(image_size=image_size, patch_size=8, width=64, layers=2, head_width=32, **vision)
    text_cfg = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)
    return open_clip.CLIP(embed_dim=24, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()


def tiny_hf(image_size=32, seed=0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, hidden_act="gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=24,
    )
    return CLIPModel(config).eval()


FACE_NAMES = ["Captain Zorp", "Mira Quell", "Rex Calloway"]


def make_faces_folder(root, names=FACE_NAMES):
    """An image folder of noisy flat-colour "portraits" (40x40 PNG + caption .txt), four per name."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    k = 0
    for name in names:
        base = rng.integers(0, 256, size=3)
        for template in ("a photo of {}.", "{} smiling.", "a portrait of {}.", "{} at a party."):
            img = np.clip(base + rng.normal(0, 40, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"img{k:02d}.png")
            (root / f"img{k:02d}.txt").write_text(template.format(name))
            k += 1
    return root

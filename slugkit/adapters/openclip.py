"""Adapter for open_clip ``CLIP`` models (fused q/k/v attention, ``resblocks`` naming)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import TOWERS, CLIPAdapter, LayerInfo, generic_kind, select_candidates

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# (parameter suffix inside a resblock, kind), in order of position inside the block
_OPENCLIP_BLOCK_PARAMS = (
    ("attn.in_proj_weight", "attn_qkv"),
    ("attn.out_proj.weight", "attn_out"),
    ("mlp.c_fc.weight", "mlp_fc"),
    ("mlp.c_proj.weight", "mlp_proj"),
)

# forward order of the parameters outside the blocks (open_clip registers them in another order)
_FORWARD_ORDER = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "ln_final", "proj")


def _is_pil_list(images) -> bool:
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        return False
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with torchvision
        return False
    return all(isinstance(im, Image.Image) for im in images)


def uint8_to_pixels(
    images,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` (or ``(H, W, 3)``) tensor/ndarray -> normalised float32 ``(B, 3, size, size)``.

    Pixels are scaled to [0, 1]; resized only if ``H, W != size`` (``shortest``: shorter side to
    ``size`` then centre crop, ``squash``: straight to ``size x size``, ``longest``: longer side to
    ``size`` then centre pad with 0); then ``(x - mean) / std`` per channel.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError("images must be a uint8 tensor/ndarray (B, H, W, 3) or a list of PIL images")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"uint8 images must have shape (B, H, W, 3), got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).to(torch.float32).div(255.0)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        mode = "bilinear" if interpolation == "bilinear" else "bicubic"
        if resize_mode == "squash":
            x = F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
        elif resize_mode == "longest":
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
            top, left = (size - nh) // 2, (size - nw) // 2
            x = F.pad(x, (left, size - nw - left, top, size - nh - top), value=0.0)
        else:  # "shortest"
            # like torchvision Resize(int): short side -> size, long side truncated
            nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
            x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
            top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
            x = x[..., top:top + size, left:left + size]
        x = x.clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def _normalize_from_transform(transform) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    """(mean, std) of the first ``Normalize`` inside a torchvision ``Compose``, if any."""
    for t in getattr(transform, "transforms", []) or []:
        if type(t).__name__ == "Normalize" and hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    return None


class OpenCLIPAdapter(CLIPAdapter):
    """Wraps an open_clip ``CLIP`` model, its tokenizer (ids ``(B, ctx)``) and its eval transform."""

    family = "openclip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Optional[Callable] = None,
        transform: Optional[Callable] = None,
        name: str = "openclip",
    ):
        super().__init__(model, name)
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", getattr(visual, "image_size", 224))
        cfg = merge_preprocess_dict(PreprocessCfg(), {**cfg, "size": size})
        self._pp_cfg = PreprocessCfg(**cfg)
        if isinstance(self._pp_cfg.size, (tuple, list)):
            if self._pp_cfg.size[0] != self._pp_cfg.size[1]:
                raise ValueError(f"only square image sizes are supported, got {self._pp_cfg.size}")
            self.image_size = int(self._pp_cfg.size[0])
        else:
            self.image_size = int(self._pp_cfg.size)

        self.transform = transform if transform is not None else image_transform_v2(self._pp_cfg, is_train=False)
        from_transform = _normalize_from_transform(self.transform)
        if from_transform is not None:
            self.mean, self.std = from_transform
        else:
            self.mean, self.std = tuple(self._pp_cfg.mean), tuple(self._pp_cfg.std)

        ctx = getattr(model, "context_length", None) or getattr(getattr(model, "text", None), "context_length", None)
        self.context_length = int(ctx or 77)
        if tokenizer is None:
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.tokenizer = tokenizer

    @classmethod
    def from_model(cls, model: nn.Module, arch: Optional[str] = None, name: Optional[str] = None) -> "OpenCLIPAdapter":
        """Adapter for ``model`` with the tokenizer of open_clip architecture ``arch`` (slugkit configs included)
        and the eval transform from the model's preprocess config."""
        tokenizer = None
        if arch:
            import open_clip

            from slugkit.models.toy_clip import register

            register()
            tokenizer = open_clip.get_tokenizer(arch)
        return cls(model, tokenizer, None, name=name or arch or "openclip")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, context_length)``, int64 (open_clip: SOT ... EOT, zero padded)."""
        if isinstance(texts, str):
            texts = [texts]
        ids = self.tokenizer(list(texts), context_length=self.context_length)
        return torch.as_tensor(ids, dtype=torch.long)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` or list of PIL images -> float32 ``(B, 3, S, S)`` on CPU."""
        if _is_pil_list(images):
            return torch.stack([self.transform(im) for im in images]).to(torch.float32)
        return uint8_to_pixels(
            images, self.image_size, self.mean, self.std,
            resize_mode=self._pp_cfg.resize_mode, interpolation=self._pp_cfg.interpolation,
        )

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> L2-normalised ``(B, D)``."""
        dtype = next(self.model.visual.parameters()).dtype
        feats = self.model.encode_image(pixels.to(self.device, dtype))
        return F.normalize(feats, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, ctx)`` int64 -> L2-normalised ``(B, D)``. A causal tower pooled at the end-of-text token runs only
        the positions up to the batch's last end-of-text token (:meth:`_trim`): the same numbers, a fraction of
        the work for short captions."""
        if self.supports_text_resume:
            return self.encode_text_from(self.text_state(tokens, 0), 0)
        feats = self.model.encode_text(tokens.to(self.device))
        return F.normalize(feats, dim=-1)

    def _trim(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` without the columns after the batch's last end-of-text token, when the text tower is causal
        and pools that token ("argmax" or "eos" pooling): no later position can reach a pooled one."""
        m = self.model
        mask, pool = getattr(m, "attn_mask", None), getattr(m, "text_pool_type", None)
        if mask is None or pool not in ("argmax", "eos") or tokens.shape[1] <= 1:
            return tokens
        n = mask.shape[-1]
        if mask.dim() != 2 or not torch.equal(torch.isinf(mask), torch.ones(n, n, dtype=torch.bool).triu(1)):
            return tokens  # not a plain causal mask
        ends = tokens.argmax(-1) if pool == "argmax" else (tokens == m.text_eos_id).int().argmax(-1)
        return tokens[:, :int(ends.max()) + 1]

    def _tower_transformer(self, tower: str) -> nn.Module:
        if tower not in ("vision", "text"):
            raise ValueError(f"unknown tower {tower!r}; expected 'vision' or 'text'")
        trf = self.model.visual.transformer if tower == "vision" else getattr(self.model, "transformer", None)
        if trf is None or not hasattr(trf, "resblocks"):
            raise ValueError(f"this open_clip model's {tower} tower has no built-in transformer blocks")
        return trf

    def blocks(self, tower: str) -> list[nn.Module]:
        """The ``resblocks`` of the vision or text transformer, in order."""
        return list(self._tower_transformer(tower).resblocks)

    def blocks_batch_first(self, tower: str) -> bool:
        return bool(getattr(self._tower_transformer(tower), "batch_first", True))

    def token_embedding(self) -> nn.Module:
        """``model.token_embedding`` (an ``nn.Embedding``)."""
        emb = getattr(self.model, "token_embedding", None)
        if emb is None:
            raise ValueError("this open_clip model has a custom text tower without a token_embedding module")
        return emb

    def token_strings(self, tokens: torch.Tensor) -> list[str]:
        """BPE pieces of each id (``</w>`` ends a word); ``<start_of_text>``/``<end_of_text>``/``!`` padding."""
        decoder = getattr(self.tokenizer, "decoder", None)
        ids = [int(t) for t in tokens]
        if decoder is not None:
            return [decoder.get(i, f"<{i}>") for i in ids]
        return [self.tokenizer.decode([i]) for i in ids]

    @property
    def supports_vision_resume(self) -> bool:
        v = self.model.visual
        return hasattr(v, "_embeds") and hasattr(v, "_pool") and hasattr(v, "transformer")

    @property
    def supports_text_resume(self) -> bool:
        m = self.model
        return (isinstance(getattr(m, "transformer", None), nn.Module) and hasattr(m.transformer, "resblocks")
                and hasattr(m, "token_embedding") and hasattr(m, "text_pool_type"))

    def _check_block(self, block: int, tower: str = "vision") -> None:
        n = len(self._tower_transformer(tower).resblocks)
        if not 0 <= block <= n:
            raise ValueError(f"{tower} resume block must be in 0..{n} (an edit before block 0 needs the whole "
                             f"tower), got {block}")

    def vision_state(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        self._check_block(block)
        v = self.model.visual
        x = v._embeds(pixels.to(self.device, next(v.parameters()).dtype))
        if not v.transformer.batch_first:
            x = x.transpose(0, 1)
        return self.advance_vision_state(x, 0, block)

    def advance_vision_state(self, state: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        self._check_block(start)
        self._check_block(stop)
        for blk in self.model.visual.transformer.resblocks[start:stop]:
            state = blk(state)
        return state

    def encode_image_from(self, state: torch.Tensor, block: int) -> torch.Tensor:
        v = self.model.visual
        x = self.advance_vision_state(state, block, len(v.transformer.resblocks))
        if not v.transformer.batch_first:
            x = x.transpose(0, 1)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled, dim=-1)

    def _text_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The causal mask for the positions ``x`` holds (fewer than the context after :meth:`_trim`)."""
        mask = self.model.attn_mask
        if mask is not None:
            n = x.shape[1 if self.model.transformer.batch_first else 0]
            mask = mask[..., :n, :n]
        return mask

    def _text_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        mask = self._text_mask(x)
        for blk in self.model.transformer.resblocks[start:stop]:
            x = blk(x, attn_mask=mask)
        return x

    def supports_variants(self, tower: str, name: str) -> bool:
        """Any parameter of a resumable tower except the attention's input projection (``in_proj_weight``/``_bias``):
        with q, k and v different per weight, ``torch.vmap`` has no batching rule for CPU attention and runs the K
        of them one by one, which measured slower than K sequential evaluations (docs/measurements.md)."""
        return self.supports_resume(tower) and not name.rsplit(".", 1)[-1].startswith("in_proj")

    def advance_variants(self, tower: str, state, block: int, name: str, weights: torch.Tensor):
        """See :meth:`CLIPAdapter.advance_variants`: ``block`` runs under ``torch.vmap`` over the K weights
        (``torch.func.functional_call``), and the K outputs are laid side by side along the batch."""
        from torch.func import functional_call, vmap

        if not self.supports_resume(tower):
            raise ValueError(f"this open_clip model's {tower} tower cannot be resumed from a block")
        self._check_block(block, tower)
        blk = self.blocks(tower)[block]
        param = self.parameter(name)
        local = next((n for n, p in blk.named_parameters() if p is param), None)
        if local is None:
            raise ValueError(f"{name!r} is not a parameter of {tower} block {block}")
        x, rest = (state, None) if tower == "vision" else state
        kwargs = {} if tower == "vision" else {"attn_mask": self._text_mask(x)}
        out = vmap(lambda w: functional_call(blk, {local: w}, (x,), kwargs))(weights.to(param.dtype))
        batch_dim = 0 if self.blocks_batch_first(tower) else 1
        out = out.movedim(0, batch_dim).flatten(batch_dim, batch_dim + 1)  # (..., K * B, ...), variant-major
        return out if tower == "vision" else (out, rest.repeat(len(weights), *[1] * (rest.dim() - 1)))

    def text_state(self, tokens: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(residual stream entering text block `block`, token ids)``; the steps of ``CLIP.encode_text``."""
        self._check_block(block, "text")
        m, tokens = self.model, self._trim(tokens.to(self.device))
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:tokens.shape[1]].to(cast)
        if not m.transformer.batch_first:
            x = x.transpose(0, 1).contiguous()
        return self._text_blocks(x, 0, block), tokens

    def encode_text_from(self, state: tuple[torch.Tensor, torch.Tensor], block: int) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        self._check_block(block, "text")
        m, (x, tokens) = self.model, state
        x = self._text_blocks(x, block, len(m.transformer.resblocks))
        if not m.transformer.batch_first:
            x = x.transpose(0, 1)
        x = text_global_pool(m.ln_final(x), tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x, dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """``exp(model.logit_scale)``, a scalar tensor."""
        return self.model.logit_scale.exp().reshape(())

    def _check_layout(self) -> None:
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"SLUG candidates are defined for ViT towers, but this model's vision tower is "
                f"{type(visual).__name__} (e.g. ModifiedResNet/timm); use a ViT-based open_clip model"
            )
        if not isinstance(getattr(self.model, "transformer", None), nn.Module):
            raise ValueError(
                "SLUG candidates are defined for open_clip's built-in text transformer, but this model has "
                f"a custom text tower ({type(getattr(self.model, 'text', None)).__name__})"
            )
        params = dict(self.model.named_parameters())
        for prefix, trf in (("visual.transformer", visual.transformer), ("transformer", self.model.transformer)):
            for i in range(len(trf.resblocks)):
                for suffix, _ in _OPENCLIP_BLOCK_PARAMS:
                    if f"{prefix}.resblocks.{i}.{suffix}" not in params:
                        raise ValueError(f"unexpected open_clip block layout: no parameter "
                                         f"{prefix}.resblocks.{i}.{suffix!r}")

    def describe_parameters(self) -> list[LayerInfo]:
        """Every parameter but ``logit_scale``: tower, block (-1 before the blocks, ``n`` after) and kind.

        Vision stem (block -1): ``visual.conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``;
        vision head (block n): ``ln_post``, ``proj``. Text stem: token and positional embeddings; text
        head: ``ln_final``, ``text_projection``.
        """
        self._check_layout()
        kinds = dict(_OPENCLIP_BLOCK_PARAMS)
        towers = (("vision", "visual.transformer.resblocks.", len(self.model.visual.transformer.resblocks),
                   ("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre",
                    "visual.patch_dropout")),
                  ("text", "transformer.resblocks.", len(self.model.transformer.resblocks),
                   ("token_embedding", "positional_embedding")))
        rows = []
        for order, (name, p) in enumerate(self.model.named_parameters()):
            if name in ("logit_scale", "logit_bias"):
                continue
            tower, blocks, n, stem = towers[0] if name.startswith("visual.") else towers[1]
            if name.startswith(blocks):
                block, suffix = name[len(blocks):].split(".", 1)
                block, kind = int(block), kinds.get(suffix) or generic_kind(name)
            else:
                block, kind = (-1 if name.startswith(stem) else n), generic_kind(name)
            rank = next((k for k, part in enumerate(_FORWARD_ORDER) if part in name), 0) if block in (-1, n) else 0
            rows.append((TOWERS.index(tower), block, rank, order, LayerInfo(name, tower, block, kind, tuple(p.shape))))
        return [r[-1] for r in sorted(rows, key=lambda r: r[:4])]

    def candidate_layers(self, candidates: str = "default") -> list[LayerInfo]:
        """Default: fused qkv, attn out, mlp fc, mlp proj of every vision block, then every text block.
        Reference: every parameter except biases, logit_scale, positional and token embeddings."""
        return select_candidates(self.describe_parameters(), candidates)

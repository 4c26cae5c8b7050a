"""The contract every model family implements.

Everything outside ``slugkit.adapters`` talks to a model only through a :class:`CLIPAdapter`,
so no other module branches on the model family.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

TOWERS = ("vision", "text")
# Kinds of candidate layer. Fused q/k/v (open_clip) is "attn_qkv"; separate ones are "attn_q/k/v".
LAYER_KINDS = ("attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_fc", "mlp_proj")


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer: a single 2-D weight tensor of one transformer block."""

    name: str  # parameter name as in model.named_parameters()
    tower: str  # "vision" or "text"
    block: int  # 0-based index of the transformer block
    kind: str  # one of LAYER_KINDS
    shape: tuple[int, ...]


class CLIPAdapter(ABC):
    """Uniform view of a CLIP-style dual encoder.

    Images given to :meth:`preprocess` are a uint8 tensor ``(B, H, W, 3)`` or a list of PIL images;
    :meth:`encode_image` takes the float tensor that :meth:`preprocess` returns. Embeddings are
    L2-normalised, shape ``(B, D)``.
    """

    family: str = "abstract"

    def __init__(self, model: nn.Module, name: str):
        self.model = model
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, context_length)``, int64."""

    @abstractmethod
    def preprocess(self, images) -> torch.Tensor:
        """Model-ready pixels ``(B, 3, S, S)``, float32."""

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)``."""

    @abstractmethod
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, D)``."""

    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The contrastive temperature ``s = exp(logit_scale)``, a scalar tensor."""

    @abstractmethod
    def candidate_layers(self) -> list[LayerInfo]:
        """All default SLUG candidates: 2-D attention and MLP weights of every block of both towers,
        ordered by tower, then block, then position inside the block."""

    # Optional: resume the vision tower from a cached block input, so a search over a vision layer in
    # block b recomputes only blocks b.. (the evaluator checks ``supports_vision_resume``).
    supports_vision_resume: bool = False

    def vision_state(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """The residual stream entering vision block ``block`` (layout private to the adapter)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its vision tower")

    def encode_image_from(self, state: torch.Tensor, block: int) -> torch.Tensor:
        """Finish the vision tower from :meth:`vision_state` output: L2-normalised ``(B, D)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its vision tower")

    def patch_scope(self, layer: str) -> str:
        """The submodule a patch of ``layer`` is scoped to ("" = the whole model).

        Families whose towers are self-contained submodules (Hugging Face CLIP) scope a patch to the
        edited tower, so it also applies to hosts that embed that tower (Stable Diffusion, LLaVA).
        """
        return ""

    def parameter(self, name: str) -> nn.Parameter:
        params = dict(self.model.named_parameters())
        if name not in params:
            raise KeyError(f"unknown layer {name!r}: the model has no parameter of that name")
        return params[name]

    # Module handles for slugkit.attribution (Captum hooks); optional for adapters that never explain.
    def blocks(self, tower: str) -> list[nn.Module]:
        """The transformer blocks of ``tower`` ("vision" or "text"), in order; each maps the residual
        stream to the next (batch-first ``(B, T, W)`` unless :meth:`blocks_batch_first` says otherwise)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its transformer blocks")

    def blocks_batch_first(self, tower: str) -> bool:
        """Whether the blocks of ``tower`` take and return ``(B, T, W)`` (else ``(T, B, W)``)."""
        return True

    def token_embedding(self) -> nn.Module:
        """The text tower's token-embedding module: ids ``(B, ctx)`` -> ``(B, ctx, W)``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its token embedding")

    def token_strings(self, tokens: torch.Tensor) -> list[str]:
        """Readable text of each id of one tokenised caption ``(ctx,)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot show its tokens")

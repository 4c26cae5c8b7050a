"""The contract every model family implements.

Everything outside ``slugkit.adapters`` talks to a model only through a :class:`CLIPAdapter`,
so no other module branches on the model family.
"""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

TOWERS = ("vision", "text")
# Kinds of the 2-D block weights that make slugkit's default candidate set. Fused q/k/v (open_clip) is
# "attn_qkv"; separate ones are "attn_q/k/v".
BLOCK_KINDS = ("attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_fc", "mlp_proj")
# Every kind a parameter can have:
#   norm         LayerNorm gain (ln_1/ln_2 in a block; ln_pre, ln_post, ln_final / pre/post/final norms)
#   patch_embed  the patch-embedding convolution (open_clip visual.conv1.weight, HF patch_embedding)
#   class_embed  the vision class token
#   proj         the final projection into the joint space (visual.proj, text_projection, visual_projection)
#   bias, pos_embed, token_embed, other: never candidates unless asked for by name or kind (``include``)
LAYER_KINDS = BLOCK_KINDS + ("norm", "patch_embed", "class_embed", "proj", "bias", "pos_embed", "token_embed", "other")
# "default": slugkit's teaching set, the 2-D attention and MLP weights of every block.
# "reference": the authors' open_clip set, every parameter except biases, logit_scale (which belongs to no
# tower and is never described), positional and token embeddings.
CANDIDATE_SETS = ("default", "reference")
_NOT_REFERENCE = ("bias", "pos_embed", "token_embed")


@dataclass(frozen=True)
class LayerInfo:
    """One parameter tensor seen as a SLUG layer.

    ``block`` is the 0-based transformer block; parameters before the first block of their tower
    (patch/class/position embeddings, pre-norm) have ``block = -1``, those after the last one (final
    norm, projection) ``block = n_blocks``. A vision evaluator can resume from the input of ``block``
    when ``block >= 0`` (``n_blocks`` = after every block) and must start from pixels when it is -1.
    """

    name: str  # parameter name as in model.named_parameters()
    tower: str  # "vision" or "text"
    block: int  # -1 (stem), 0..n_blocks-1 (a block) or n_blocks (head)
    kind: str  # one of LAYER_KINDS
    shape: tuple[int, ...]


def generic_kind(name: str) -> str:
    """Kind of a parameter outside the block weights, from its name (shared naming of open_clip and HF)."""
    last = name.rsplit(".", 1)[-1]
    if last == "bias" or last.endswith("_bias"):
        return "bias"
    if any(k in name for k in ("positional_embedding", "position_embedding")):
        return "pos_embed"
    if "token_embedding" in name:
        return "token_embed"
    if "class_embedding" in name:
        return "class_embed"
    if any(k in name for k in ("conv1", "patch_embedding")):
        return "patch_embed"
    if any(k in name for k in ("ln_", "layer_norm", "layernorm", "layrnorm")):
        return "norm"
    if any(k in name for k in ("visual.proj", "text_projection", "visual_projection")):
        return "proj"
    return "other"


def select_candidates(infos: list[LayerInfo], candidates: str) -> list[LayerInfo]:
    """The members of candidate set ``candidates`` (see :data:`CANDIDATE_SETS`) among ``infos``."""
    if candidates not in CANDIDATE_SETS:
        raise ValueError(f"candidates must be one of {CANDIDATE_SETS}, got {candidates!r}")
    if candidates == "default":
        return [i for i in infos if i.kind in BLOCK_KINDS]
    return [i for i in infos if i.kind not in _NOT_REFERENCE]


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
    def candidate_layers(self, candidates: str = "default") -> list[LayerInfo]:
        """The SLUG candidates of one of :data:`CANDIDATE_SETS`, ordered by tower, then block, then
        position in the forward pass. "default": the 2-D attention and MLP weights of every block of
        both towers. "reference": the authors' set, every parameter except biases, ``logit_scale``,
        positional and token embeddings (so also LayerNorm gains, the patch embedding, the class
        token and both final projections)."""

    def describe_parameters(self) -> list[LayerInfo]:
        """Every parameter of either tower as a :class:`LayerInfo`, in candidate order."""
        raise NotImplementedError(f"{type(self).__name__} describes only its default candidate layers")

    def layer_info(self, name: str) -> LayerInfo:
        """The :class:`LayerInfo` of any parameter of either tower (also outside the candidate sets)."""
        for info in self.describe_parameters():
            if info.name == name:
                return info
        self.parameter(name)  # unknown name: a clear KeyError
        raise ValueError(f"parameter {name!r} belongs to neither tower, so it cannot be a SLUG layer")

    # Optional: resume the vision tower from a cached block input, so a search over a vision layer in
    # block b recomputes only blocks b.. (the evaluator checks ``supports_vision_resume``).
    supports_vision_resume: bool = False

    def vision_state(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """The residual stream entering vision block ``block`` in ``0..n_blocks`` (``n_blocks``: after
        the last block; layout private to the adapter)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its vision tower")

    def encode_image_from(self, state: torch.Tensor, block: int) -> torch.Tensor:
        """Finish the vision tower from :meth:`vision_state` output: L2-normalised ``(B, D)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its vision tower")

    def advance_vision_state(self, state: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run vision blocks ``start..stop-1`` on the :meth:`vision_state` output for ``start``: the state
        entering ``stop`` (so states cached for one block serve a later one without starting from pixels)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its vision tower")

    # Optional, the same for the text tower: a search over a text layer in block b recomputes only blocks b..
    supports_text_resume: bool = False

    def text_state(self, tokens: torch.Tensor, block: int):
        """What enters text block ``block`` in ``0..n_blocks`` for token ids ``(B, ctx)`` (the residual stream
        plus whatever the rest of the tower needs, such as the ids for pooling; layout private to the adapter)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its text tower")

    def encode_text_from(self, state, block: int) -> torch.Tensor:
        """Finish the text tower from :meth:`text_state` output: L2-normalised ``(B, D)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume its text tower")

    def advance_variants(self, tower: str, state, block: int, name: str, weights: torch.Tensor):
        """What enters block ``block + 1`` of ``tower`` when ``state`` (what enters ``block``: :meth:`vision_state` or
        :meth:`text_state` output) runs through ``block`` once for each of K values ``weights`` ``(K, *shape)`` of its
        parameter ``name``, in one batched call: a state of K times the batch, variant by variant, that
        :meth:`encode_image_from` / :meth:`encode_text_from` finish from ``block + 1``. For the step-size search's
        batched doubling phase (see :meth:`supports_variants`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a block with several weights at once")

    def supports_variants(self, tower: str, name: str) -> bool:
        """Whether :meth:`advance_variants` works (and pays) for parameter ``name`` of ``tower``."""
        return False

    def supports_resume(self, tower: str) -> bool:
        """Whether ``tower`` ("vision" or "text") can be resumed from a cached block input."""
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}; expected 'vision' or 'text'")
        return bool(self.supports_vision_resume if tower == "vision" else self.supports_text_resume)

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

    @contextmanager
    def recomputed_activations(self) -> Iterator[None]:
        """Within this block, every transformer block of both towers keeps only its input for the backward
        pass and recomputes the rest then (activation checkpointing): a backward pass holds one block's
        activations instead of all of them, for one more forward pass. The gradients are the same numbers."""
        from torch.utils.checkpoint import checkpoint

        wrapped = [blk for tower in TOWERS for blk in self.blocks(tower)]
        for blk in wrapped:
            blk.forward = functools.partial(checkpoint, blk.forward, use_reentrant=False)
        try:
            yield
        finally:
            for blk in wrapped:
                del blk.forward  # back to the class's forward

    def blocks_batch_first(self, tower: str) -> bool:
        """Whether the blocks of ``tower`` take and return ``(B, T, W)`` (else ``(T, B, W)``)."""
        return True

    def token_embedding(self) -> nn.Module:
        """The text tower's token-embedding module: ids ``(B, ctx)`` -> ``(B, ctx, W)``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its token embedding")

    def token_strings(self, tokens: torch.Tensor) -> list[str]:
        """Readable text of each id of one tokenised caption ``(ctx,)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot show its tokens")

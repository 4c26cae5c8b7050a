"""The explained quantity and the model handles the attributions hook into.

Every attribution in :mod:`slugkit.attribution` explains one number per (picture, caption) pair: the cosine
``f = <v, t>`` of the L2-normalised image embedding ``v`` and text embedding ``t`` (unitless, in [-1, 1]).
Model access goes through the adapter only (``encode_image``, ``encode_text``, ``blocks``, ``token_embedding``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

from ..adapters.base import CLIPAdapter

TOWERS = ("vision", "text")


@contextmanager
def frozen(model: torch.nn.Module):
    """Parameters do not require grad inside (attributions need input gradients only); flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def patched(model: torch.nn.Module, patch):
    """``patch`` applied inside, reverted (bit-exactly) on exit, also on error. ``patch=None`` does nothing."""
    if patch is None:
        yield model
        return
    patch.apply(model)
    try:
        yield model
    finally:
        patch.revert(model)


def encoder(adapter: CLIPAdapter, tower: str):
    """``adapter.encode_image`` or ``adapter.encode_text``."""
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; expected 'vision' or 'text'")
    return adapter.encode_image if tower == "vision" else adapter.encode_text


def pixels_of(adapter: CLIPAdapter, images) -> torch.Tensor:
    """Model-ready pixels ``(B, 3, S, S)`` from uint8 pictures ``(B, H, W, 3)`` (or pixels unchanged)."""
    if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
        return images
    return adapter.preprocess(np.asarray(images) if not isinstance(images, torch.Tensor) else images)


def tokens_of(adapter: CLIPAdapter, captions: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """Token ids ``(B, ctx)`` from captions (or ids unchanged)."""
    if isinstance(captions, torch.Tensor):
        return captions
    if isinstance(captions, str):
        captions = [captions]
    return adapter.tokenize(list(captions))


@torch.no_grad()
def embed(adapter: CLIPAdapter, tower: str, inputs: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings ``(B, D)`` of pixels (vision) or token ids (text), no grad."""
    return encoder(adapter, tower)(inputs).float()


@torch.no_grad()
def cosine(adapter: CLIPAdapter, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``f``: the image-text cosine of each (picture, caption) pair, ``(B,)``."""
    return (embed(adapter, "vision", pixels) * embed(adapter, "text", tokens)).sum(-1).cpu()


def black_pixels(adapter: CLIPAdapter, like: torch.Tensor) -> torch.Tensor:
    """An all-black picture, preprocessed like ``like`` ``(B, 3, S, S)``: the IG baseline."""
    size = like.shape[-1]
    black = adapter.preprocess(np.zeros((1, size, size, 3), np.uint8)).to(like.device, like.dtype)
    return black.expand_as(like).contiguous()


def blank_tokens(adapter: CLIPAdapter, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` with every word between start and end of text replaced by padding: the token baseline.

    Start, end-of-text and padding positions keep their ids, so the text tower pools the same position.
    """
    empty = adapter.tokenize([""])[0]
    eot, pad = int(empty[1]), int(empty[-1])
    out = tokens.clone()
    for row in out:
        ends = torch.nonzero(row[1:] == eot).flatten()
        end = int(ends[0]) + 1 if len(ends) else len(row)
        row[1:end] = pad
    return out


def caption_length(adapter: CLIPAdapter, tokens: torch.Tensor) -> list[int]:
    """Number of positions from start to end of text (inclusive) of each tokenised caption."""
    eot = int(adapter.tokenize([""])[0, 1])
    out = []
    for row in tokens:
        ends = torch.nonzero(row[1:] == eot).flatten()
        out.append(int(ends[0]) + 2 if len(ends) else len(row))
    return out


# ------------------------------------------------------------------------ residual stream of a tower
def _first_tensor(args, kwargs) -> torch.Tensor:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("a transformer block was called without a tensor input")


def _main(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def residual_stream(adapter: CLIPAdapter, tower: str, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream of ``tower``: ``L + 1`` tensors ``(B, T, W)``, batch-first, float32.

    Entry 0 enters block 0, entry ``b + 1`` leaves block ``b``.
    """
    blocks = adapter.blocks(tower)
    batch_first = adapter.blocks_batch_first(tower)
    seen: list[torch.Tensor] = []
    handles = [blk.register_forward_pre_hook(lambda m, a, k: seen.append(_first_tensor(a, k)), with_kwargs=True)
               for blk in blocks]
    handles.append(blocks[-1].register_forward_hook(lambda m, a, out: seen.append(_main(out))))
    try:
        encoder(adapter, tower)(inputs)
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(blocks) + 1:
        raise RuntimeError(f"expected each of the {len(blocks)} {tower} blocks to run once, saw {len(seen) - 1} calls")
    return [(s if batch_first else s.transpose(0, 1)).float().contiguous() for s in seen]


def with_block_output(adapter: CLIPAdapter, tower: str, block: int, h: torch.Tensor, inputs: torch.Tensor,
                      other: torch.Tensor) -> torch.Tensor:
    """``f`` when block ``block`` of ``tower`` outputs ``h`` (batch-first) instead of what it computes.

    ``inputs`` are the tower's pixels or token ids, ``other`` the other tower's embeddings ``(B, D)``.
    Returns ``(B,)`` with grad to ``h``.
    """
    module = adapter.blocks(tower)[block]
    batch_first = adapter.blocks_batch_first(tower)

    def replace(mod, args, out):
        value = (h if batch_first else h.transpose(0, 1)).to(_main(out).dtype)
        return (value,) + tuple(out[1:]) if isinstance(out, tuple) else value

    handle = module.register_forward_hook(replace)
    try:
        emb = encoder(adapter, tower)(inputs)
    finally:
        handle.remove()
    return (emb.float() * other.to(emb.device).float()).sum(-1)


def locate(adapter: CLIPAdapter, parameter: str) -> tuple[str, int] | None:
    """``(tower, block)`` of the block holding parameter ``parameter``, or None (e.g. an embedding)."""
    target = adapter.parameter(parameter)
    for tower in TOWERS:
        for i, blk in enumerate(adapter.blocks(tower)):
            if any(p is target for p in blk.parameters()):
                return tower, i
    return None

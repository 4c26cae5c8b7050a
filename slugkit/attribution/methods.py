"""Captum attributions of the image-text cosine ``f``: to pixels, to caption tokens, to transformer blocks.

Each is one function returning a small dataclass; attributions are in cosine units.

>>> att = attribute_pixels(clip, pictures, ["a photo of Captain Zorp."] * len(pictures), method="ig")
>>> att.maps.shape          # (B, S, S): summed over colour channels        # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, LayerIntegratedGradients, NoiseTunnel, Saliency

from ..adapters.base import CLIPAdapter
from .similarity import (TOWERS, black_pixels, blank_tokens, caption_length, cosine, embed, frozen, pixels_of,
                         residual_stream, tokens_of, with_block_output)

METHODS = {
    "ig": "IntegratedGradients from an all-black picture",
    "saliency-nt": "Saliency (|gradient|) averaged by a NoiseTunnel (SmoothGrad)",
    "gradshap": "GradientShap over black and grey pictures with Gaussian noise",
}


def relative_completeness_error(delta: torch.Tensor, gap: torch.Tensor) -> float:
    """``max |sum(attr) - (f(x) - f(x'))| / |f(x) - f(x')|`` over examples; ``delta`` and ``gap`` ``(B,)``."""
    return float((delta.abs() / gap.abs().clamp_min(1e-8)).max())


@dataclass
class PixelAttribution:
    """Attribution of ``f`` to every input pixel. ``attributions`` ``(B, 3, S, S)`` in cosine units;
    ``score`` ``f(x)`` and, for IG / GradientShap, ``baseline_score`` ``f(x')`` and ``delta`` =
    ``sum(attr) - (f(x) - f(x'))`` ``(B,)``."""

    method: str
    attributions: torch.Tensor
    score: torch.Tensor
    captions: list[str]
    baseline_score: torch.Tensor | None = None
    delta: torch.Tensor | None = None

    @property
    def maps(self) -> np.ndarray:
        """``(B, S, S)`` float32: attribution summed over the colour channels (signed)."""
        return self.attributions.sum(1).numpy().astype(np.float32)

    def completeness_error(self) -> float:
        """Max relative completeness error (IG only; NaN for the other methods)."""
        if self.method != "ig" or self.delta is None:
            return float("nan")
        return relative_completeness_error(self.delta, self.score - self.baseline_score)


def _captions(captions, n: int) -> list[str]:
    captions = [captions] * n if isinstance(captions, str) else list(captions)
    if len(captions) != n:
        raise ValueError(f"expected one caption per picture ({n}), got {len(captions)}")
    return captions


def attribute_pixels(adapter: CLIPAdapter, images, captions: str | Sequence[str], method: str = "ig",
                     n_steps: int = 32, n_samples: int = 16, stdev: float = 0.15, internal_batch_size: int = 64,
                     seed: int = 0) -> PixelAttribution:
    """Attribute the cosine of each picture with its caption to the picture's pixels.

    ``images``: uint8 ``(B, H, W, 3)`` or preprocessed pixels ``(B, 3, S, S)``; ``captions``: one per picture
    (or one for all). ``method``: ``"ig"`` (``n_steps`` Gauss-Legendre steps), ``"saliency-nt"``
    (``n_samples`` noisy copies, noise ``stdev`` in normalised pixel units) or ``"gradshap"``
    (``n_samples`` draws).
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
    pixels = pixels_of(adapter, images).to(adapter.device, torch.float32)
    captions = _captions(captions, len(pixels))
    text = embed(adapter, "text", tokens_of(adapter, captions))

    def f(x, t):
        return (adapter.encode_image(x).float() * t).sum(-1)

    baseline = black_pixels(adapter, pixels)
    score = cosine(adapter, pixels, tokens_of(adapter, captions))
    torch.manual_seed(seed)
    with frozen(adapter.model):
        if method == "ig":
            attr, delta = IntegratedGradients(f).attribute(
                pixels, baselines=baseline, additional_forward_args=(text,), n_steps=n_steps,
                internal_batch_size=internal_batch_size, return_convergence_delta=True)
            with torch.no_grad():
                base_score = f(baseline, text).cpu()
            return PixelAttribution(method, attr.detach().cpu(), score, captions, base_score, delta.detach().cpu())
        if method == "gradshap":
            refs = torch.cat([baseline[:1], torch.zeros_like(baseline[:1])])  # black and mean-grey pictures
            attr, delta = GradientShap(f).attribute(
                pixels, baselines=refs, additional_forward_args=(text,), n_samples=n_samples, stdevs=stdev,
                return_convergence_delta=True)
            return PixelAttribution(method, attr.detach().cpu(), score, captions, None,
                                    delta.detach().view(len(pixels), -1).mean(1).cpu())
        attr = NoiseTunnel(Saliency(f)).attribute(
            pixels, nt_type="smoothgrad", nt_samples=n_samples, stdevs=stdev, additional_forward_args=(text,),
            nt_samples_batch_size=internal_batch_size)
        return PixelAttribution(method, attr.detach().cpu(), score, captions)


@dataclass
class TokenAttribution:
    """Attribution of ``f`` to each token of each caption (LayerIntegratedGradients on the token
    embeddings, from captions whose words are replaced by padding). ``tokens[i]`` and ``scores[i]`` cover
    caption ``i`` from start to end of text; ``score`` ``f(x)``, ``delta`` completeness gap ``(B,)``."""

    captions: list[str]
    tokens: list[list[str]]
    scores: list[np.ndarray]
    score: torch.Tensor
    baseline_score: torch.Tensor
    delta: torch.Tensor

    def completeness_error(self) -> float:
        return relative_completeness_error(self.delta, self.score - self.baseline_score)


def attribute_tokens(adapter: CLIPAdapter, images, captions: str | Sequence[str], n_steps: int = 32,
                     internal_batch_size: int = 64) -> TokenAttribution:
    """Which tokens of each caption carry its cosine with its picture (``images`` as in :func:`attribute_pixels`)."""
    pixels = pixels_of(adapter, images).to(adapter.device, torch.float32)
    captions = _captions(captions, len(pixels))
    tokens = tokens_of(adapter, captions).to(adapter.device)
    image = embed(adapter, "vision", pixels)

    def f(ids, v):
        return (adapter.encode_text(ids).float() * v).sum(-1)

    base = blank_tokens(adapter, tokens)
    with frozen(adapter.model):
        lig = LayerIntegratedGradients(f, adapter.token_embedding())
        attr, delta = lig.attribute(tokens, baselines=base, additional_forward_args=(image,), n_steps=n_steps,
                                    internal_batch_size=internal_batch_size, return_convergence_delta=True)
        with torch.no_grad():
            score, base_score = f(tokens, image).cpu(), f(base, image).cpu()
    per_token = attr.detach().float().sum(-1).cpu().numpy()
    lengths = caption_length(adapter, tokens.cpu())
    strings = [adapter.token_strings(tokens[i, :n].cpu()) for i, n in enumerate(lengths)]
    return TokenAttribution(captions, strings, [per_token[i, :n] for i, n in enumerate(lengths)], score,
                            base_score, delta.detach().cpu())


@dataclass
class BlockAttribution:
    """Attribution of ``f`` to the output of every transformer block of both towers.

    ``values[i, k]``: IntegratedGradients on the output of block ``k`` with the block's *input* as the
    baseline, summed over tokens and channels = ``f(x) - f(x with block k skipped)``, the block's total
    contribution to the cosine (cosine units). ``labels`` name the blocks (vision first), ``delta`` is the
    completeness gap ``(B, K)``, ``score`` ``f(x)`` ``(B,)``.
    """

    labels: list[str]
    towers: list[str]
    blocks: list[int]
    values: np.ndarray
    delta: np.ndarray
    score: torch.Tensor

    def mean(self) -> np.ndarray:
        """``(K,)``: mean contribution of each block over the pairs."""
        return self.values.mean(0)


def attribute_blocks(adapter: CLIPAdapter, images, captions: str | Sequence[str], n_steps: int = 16,
                     towers: Sequence[str] = TOWERS, internal_batch_size: int = 64) -> BlockAttribution:
    """Per-block contribution of every block of ``towers`` to each pair's cosine (see :class:`BlockAttribution`).

    Why the block's input as the baseline: with the usual all-black baseline, the attributions of *any*
    full cut through the network add up to the same ``f(x) - f(black)`` (completeness), so their sums
    could not tell blocks apart.
    """
    pixels = pixels_of(adapter, images).to(adapter.device, torch.float32)
    captions = _captions(captions, len(pixels))
    tokens = tokens_of(adapter, captions).to(adapter.device)
    inputs = {"vision": pixels, "text": tokens}
    emb = {"vision": embed(adapter, "vision", pixels), "text": embed(adapter, "text", tokens)}
    score = (emb["vision"] * emb["text"]).sum(-1).cpu()
    labels, tower_of, block_of, values, deltas = [], [], [], [], []
    with frozen(adapter.model):
        for tower in towers:
            other = emb["text" if tower == "vision" else "vision"]
            stream = residual_stream(adapter, tower, inputs[tower])
            for k in range(len(stream) - 1):
                def f(h, x, o, tower=tower, k=k):
                    return with_block_output(adapter, tower, k, h, x, o)

                attr, delta = IntegratedGradients(f).attribute(
                    stream[k + 1], baselines=stream[k], additional_forward_args=(inputs[tower], other),
                    n_steps=n_steps, internal_batch_size=internal_batch_size, return_convergence_delta=True)
                labels.append(f"{tower} {k}")
                tower_of.append(tower)
                block_of.append(k)
                values.append(attr.detach().flatten(1).sum(1).cpu().numpy())
                deltas.append(delta.detach().cpu().numpy())
    return BlockAttribution(labels, tower_of, block_of, np.stack(values, 1), np.stack(deltas, 1), score)

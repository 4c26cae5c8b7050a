"""Captum attributions of the image-text cosine, before and after unlearning.

- :func:`attribute_pixels` (IntegratedGradients, Saliency + NoiseTunnel, GradientShap),
  :func:`attribute_tokens` (LayerIntegratedGradients on the token embeddings),
  :func:`attribute_blocks` (each transformer block's contribution, both towers);
- :func:`linear_cka` / :func:`cka_profile`: how much each block's representation changed;
- :func:`mask_mass`: share of positive attribution on the drawn character or object;
- :func:`compare`: all of it for one patch and concept (what ``slugkit attribute`` prints);
- :class:`AttributionExplorer` (in :mod:`slugkit.attribution.widget`): pick a picture, a caption and a method.
"""
from .compare import AttributionReport, Probe, compare, probe_set, prompt_for
from .mask import mask_mass, mask_share, resize_masks
from .methods import (METHODS, BlockAttribution, PixelAttribution, TokenAttribution, attribute_blocks,
                      attribute_pixels, attribute_tokens)
from .representation import CKAProfile, cka_profile, linear_cka
from .similarity import cosine, locate, patched

__all__ = ["AttributionReport", "Probe", "compare", "probe_set", "prompt_for", "mask_mass", "mask_share",
           "resize_masks", "METHODS", "BlockAttribution", "PixelAttribution", "TokenAttribution",
           "attribute_blocks", "attribute_pixels", "attribute_tokens", "CKAProfile", "cka_profile", "linear_cka",
           "cosine", "locate", "patched"]

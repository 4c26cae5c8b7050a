"""Attribution mass inside a MiniCanvas mask: does the evidence sit on the character or elsewhere?"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_masks(masks, size: int) -> np.ndarray:
    """Boolean masks ``(B, H, W)`` of square pictures -> coverage ``(B, size, size)`` in [0, 1] (area average)."""
    m = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (B, H, W), got {tuple(m.shape)}")
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m[:, None], size=(size, size), mode="area")[:, 0]
    return m.numpy()


def mask_share(masks) -> np.ndarray:
    """``(B,)``: the share of each picture the mask covers (what a uniform attribution map would get)."""
    m = np.asarray(masks, dtype=np.float64)
    return m.reshape(len(m), -1).mean(1)


def mask_mass(maps, masks) -> np.ndarray:
    """``(B,)``: share of the positive attribution of each map ``(B, H, W)`` that falls inside its mask.

    ``masks`` ``(B, H, W)`` bool or coverage in [0, 1], resized to the maps' size if needed. NaN for a map
    without positive attribution.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if len(masks) != len(maps):
        raise ValueError(f"expected one mask per map, got {len(masks)} masks for {len(maps)} maps")
    if masks.shape[-2:] != maps.shape[-2:]:
        if maps.shape[-1] != maps.shape[-2]:
            raise ValueError(f"maps of shape {maps.shape[-2:]} differ from masks {masks.shape[-2:]} and are not square")
        masks = resize_masks(masks, maps.shape[-1])
    pos = np.clip(maps, 0, None).reshape(len(maps), -1)
    inside = (pos * np.asarray(masks, dtype=np.float64).reshape(len(maps), -1)).sum(1)
    total = pos.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)

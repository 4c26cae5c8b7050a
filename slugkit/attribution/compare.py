"""Before vs after unlearning, in numbers: one call (and ``slugkit attribute``) for a patch and a concept.

>>> report = compare(clip, Patch.load("runs/zorp/patch.safetensors"), "Captain Zorp")   # doctest: +SKIP
>>> report.to_dict()["mask_mass"]["forget"]                                            # doctest: +SKIP
{'before': 0.61, 'after': 0.43, 'uniform': 0.35}

"Before" is the model as loaded, "after" the same model with the patch applied (and reverted afterwards,
bit-exactly), so only one copy of the weights is ever in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..adapters.base import CLIPAdapter
from ..data.minicanvas import ATTRIBUTES, ZERO_SHOT_PROMPTS, cached_split, find_concept
from .mask import mask_mass, mask_share, resize_masks
from .methods import METHODS, attribute_blocks, attribute_pixels
from .representation import cka_profile
from .similarity import locate, patched

GROUPS = ("forget", "retain")
STATES = ("before", "after")


def prompt_for(concept: str) -> str:
    """The zero-shot caption of a MiniCanvas concept, e.g. ``"a photo of Captain Zorp."``."""
    c = find_concept(concept)
    return ZERO_SHOT_PROMPTS[c["attribute"]].format(c["name"] if c["attribute"] == "identity" else c["name"].lower())


@dataclass
class Probe:
    """The pictures explained: ``forget`` shows the concept, ``retain`` other classes of the same attribute
    (spread evenly over them). Per group: uint8 ``images`` ``(n, 64, 64, 3)``, bool ``masks`` ``(n, 64, 64)``,
    ``prompts`` (the explained caption of each picture: its own class's zero-shot caption), ``captions``
    (the pictures' own training-style captions, used for the text tower's CKA) and ``classes``."""

    concept: str
    attribute: str
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    prompts: dict[str, list[str]]
    captions: dict[str, list[str]]
    classes: dict[str, list[str]]


def probe_set(concept: str, n_images: int = 8, seed: int = 0, split: str = "test", pool: int = 2000) -> Probe:
    """``n_images`` held-out MiniCanvas pictures of ``concept`` and ``n_images`` of other classes."""
    if n_images < 3:  # two centred examples always have CKA 1
        raise ValueError(f"n_images must be at least 3 (CKA compares several pictures), got {n_images}")
    c = find_concept(concept)
    world = cached_split(pool, seed, split)
    classes = ATTRIBUTES[c["attribute"]]
    labels = world.labels(c["attribute"])
    mine = classes.index(c["name"])
    forget = world.indices_of(c["name"])[:n_images]
    others = np.flatnonzero((labels >= 0) & (labels != mine))
    rank = np.zeros(len(others), int)  # round robin over the other classes
    for j in np.unique(labels[others]):
        rank[labels[others] == j] = np.arange((labels[others] == j).sum())
    retain = others[np.lexsort((labels[others], rank))][:n_images]
    if len(forget) < n_images or len(retain) < n_images:
        raise ValueError(f"only {len(forget)} pictures of {c['name']!r} and {len(retain)} others in the "
                         f"{split} split of {pool}; ask for fewer than {n_images} images")
    groups = {"forget": forget, "retain": retain}
    names = {g: [classes[j] for j in labels[idx]] for g, idx in groups.items()}
    all_captions = world.captions()
    return Probe(
        c["name"], c["attribute"],
        images={g: np.array(world.images[idx]) for g, idx in groups.items()},
        masks={g: np.array(world.masks[idx]) for g, idx in groups.items()},
        prompts={g: [prompt_for(n) for n in names[g]] for g in groups},
        captions={g: [all_captions[i] for i in idx] for g, idx in groups.items()},
        classes=names,
    )  # fmt: skip


@dataclass
class AttributionReport:
    """What ``slugkit attribute --json`` prints (:meth:`to_dict`), plus the raw attributions behind it."""

    concept: str
    method: str
    n_images: int
    mask_mass: dict
    completeness_error: float
    cka: dict
    block_attribution: dict
    blocks: list[str]
    edited_blocks: list[str]
    relative_change: dict = field(default_factory=dict)  # group -> per block ||after - before|| / ||before||
    pixels: dict = field(repr=False, default_factory=dict)  # group -> state -> PixelAttribution
    block_detail: dict = field(repr=False, default_factory=dict)  # group -> state -> BlockAttribution
    cka_detail: dict = field(repr=False, default_factory=dict)  # group -> CKAProfile
    probe: Probe | None = field(repr=False, default=None)

    def to_dict(self) -> dict:
        """The JSON contract of ``slugkit attribute``, plus ``blocks`` (the label of each per-block entry),
        ``edited_block`` (label(s) of the edited block) and ``relative_change`` (per block, see
        :class:`~slugkit.attribution.CKAProfile`)."""
        def r(x, digits=4):
            return None if x is None or not np.isfinite(x) else round(float(x), digits)

        return {
            "concept": self.concept, "method": self.method, "n_images": self.n_images,
            "mask_mass": {g: {k: r(v) for k, v in d.items()} for g, d in self.mask_mass.items()},
            "completeness_error": r(self.completeness_error),
            "cka": {g: [r(v, 6) for v in vs] for g, vs in self.cka.items()},
            "block_attribution": {g: {s: [r(v) for v in vs] for s, vs in d.items()}
                                  for g, d in self.block_attribution.items()},
            "blocks": list(self.blocks),
            "relative_change": {g: [r(v) for v in vs] for g, vs in self.relative_change.items()},
            "edited_block": self.edited_blocks[0] if len(self.edited_blocks) == 1 else list(self.edited_blocks),
        }  # fmt: skip

    def summary(self) -> str:
        """A readable table of the numbers."""
        m = self.mask_mass
        lines = [f"attribution of the image-text cosine, {self.concept!r}, method {self.method}, "
                 f"{self.n_images} forget + {self.n_images} retain pictures; edited block: "
                 f"{', '.join(self.edited_blocks) or 'none'}",
                 f"  IG completeness error (max relative): {self.completeness_error:.2%}",
                 f"  positive attribution inside the mask  {'before':>8s}{'after':>8s}{'uniform':>9s}"]
        for g in GROUPS:
            lines.append(f"    {g:34s}{m[g]['before']:8.2f}{m[g]['after']:8.2f}{m[g]['uniform']:9.2f}")
        lines.append(f"  {'block':10s}{'CKA forget':>11s}{'CKA retain':>11s}{'change f/r':>13s}   contribution to "
                     "the cosine: forget before/after, retain before/after")
        ba = self.block_attribution
        for k, label in enumerate(self.blocks):
            mark = " <- edited" if label in self.edited_blocks else ""
            ch = self.relative_change
            lines.append(f"  {label:10s}{self.cka['forget'][k]:11.4f}{self.cka['retain'][k]:11.4f}"
                         f"{ch['forget'][k]:7.2f}/{ch['retain'][k]:.2f}   "
                         f"{ba['forget']['before'][k]:+.3f} {ba['forget']['after'][k]:+.3f}   "
                         f"{ba['retain']['before'][k]:+.3f} {ba['retain']['after'][k]:+.3f}{mark}")
        return "\n".join(lines)


def compare(adapter: CLIPAdapter, patch, concept: str | None = None, method: str = "ig", n_images: int = 8,
            n_steps: int = 32, block_steps: int = 16, seed: int = 0, progress: bool = True) -> AttributionReport:
    """Explain the cosine of forget and retain pictures with their captions, before and after ``patch``.

    ``concept`` defaults to the patch's concept. Pixel attributions use ``method`` (``ig``,
    ``saliency-nt``, ``gradshap``); the IG completeness error is always measured (IG is run as well when
    ``method`` is another). Block attributions use IG with ``block_steps`` steps; CKA compares block outputs.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
    if concept is None:
        if not isinstance(patch.concept, str):
            raise ValueError(f"patch {patch.label!r} forgets several concepts; say which one to explain")
        concept = patch.concept
    probe = probe_set(concept, n_images, seed)
    edited = [f"{t} {b}" for t, b in filter(None, (locate(adapter, name) for name in patch.layers))]
    pixels = {g: adapter.preprocess(probe.images[g]) for g in GROUPS}
    size = pixels["forget"].shape[-1]
    masks = {g: resize_masks(probe.masks[g], size) for g in GROUPS}

    attributions: dict = {g: {} for g in GROUPS}
    blocks: dict = {g: {} for g in GROUPS}
    errors = []
    bar = tqdm(total=len(STATES) * len(GROUPS), desc="attribution", disable=not progress)
    for state in STATES:
        with patched(adapter.model, patch if state == "after" else None):
            for g in GROUPS:
                att = attribute_pixels(adapter, pixels[g], probe.prompts[g], method, n_steps=n_steps, seed=seed)
                ig = att if method == "ig" else attribute_pixels(adapter, pixels[g], probe.prompts[g], "ig",
                                                                 n_steps=n_steps)
                errors.append(ig.completeness_error())
                attributions[g][state] = att
                blocks[g][state] = attribute_blocks(adapter, pixels[g], probe.prompts[g], n_steps=block_steps)
                bar.update()
    bar.close()
    ckas = {g: cka_profile(adapter, patch, pixels[g], adapter.tokenize(probe.captions[g])) for g in GROUPS}
    mass = {g: {s: float(np.nanmean(mask_mass(attributions[g][s].maps, masks[g]))) for s in STATES}
            for g in GROUPS}
    for g in GROUPS:
        mass[g]["uniform"] = float(mask_share(masks[g]).mean())
    labels = blocks["forget"]["before"].labels
    return AttributionReport(
        concept=probe.concept, method=method, n_images=n_images, mask_mass=mass,
        completeness_error=float(max(errors)),
        cka={g: ckas[g].values.tolist() for g in GROUPS},
        relative_change={g: ckas[g].change.tolist() for g in GROUPS},
        block_attribution={g: {s: blocks[g][s].mean().tolist() for s in STATES} for g in GROUPS},
        blocks=labels, edited_blocks=edited, pixels=attributions, block_detail=blocks, cka_detail=ckas, probe=probe,
    )  # fmt: skip

"""Hosts: models that embed one tower of a CLIP (Stable Diffusion's text encoder, LLaVA's vision tower).

SLUG's unit stays the CLIP: gradients, the layer table and the step-size search run on the CLIP that
matches the host (``clip_name``), and the resulting patch — scoped to the edited tower, so it carries
that tower's fingerprint — moves into the host by parameter name. A host adds only what is its own:
which tower it embeds, the deepest block it reads (candidates stop there), how it generates, and its
metrics.

Example::

    host = load_host("toy-sd")
    result = slugkit.slug.unlearn_host(host, "Captain Zorp")
    host.apply(result.patch)            # the pipeline now draws someone else
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable

from torch import nn

from ..step_size_search import Target
from ..models.names import HOST_LOADERS, is_host_name  # noqa: F401 (is_host_name: re-exported)
from .base import LayerInfo


# What the forget gradient can pair each forget picture with: "captions" (its own caption, as on CLIP) or
# "name" (the bare concept name, as the authors' UnlearnCanvas gradients for Stable Diffusion do).
FORGET_TEXTS = ("captions", "name")
# Where the step size is searched: "clip" (the matching CLIP's forget metric, every candidate layer, as the authors
# do for Stable Diffusion), "generation" (the layer chosen that way, its step searched again on the host's outputs
# from the usual lambda_0), "refine" (that second search started at the CLIP's lambda and stopped at a coarser
# bracket: a few host evaluations instead of about ten) or "host" (the layer chosen from the layer table alone by
# the policy, its step searched on the host's outputs only, as the authors' LLaVA code does).
SEARCHES = ("clip", "generation", "refine", "host")


@dataclass(frozen=True)
class HostRecipe:
    """The choices of one way to run SLUG on a host (``unlearn_host(preset=...)``, ``--preset``).

    ``fixed``: every setting is part of the recipe (the authors'), so an explicit argument that contradicts one
    is refused; otherwise explicit arguments override the recipe's settings.
    """

    forget_text: str
    policy: str
    search: str
    target: Target
    candidates: str = "default"
    tower: str | None = None
    max_evals: int = 10
    rtol: float = 0.05
    search_options: dict = field(default_factory=dict)  # keyword arguments of ``host.generation_evaluator``
    # True: the edit direction is the forget gradient made orthogonal to the other concepts' forget gradients
    # (``host.other_concepts``; ``unlearn(project_off=...)``), a slugkit departure from SLUG's own direction
    project_others: bool = False
    max_layers: int | None = None  # the policy's layers searched at most (``unlearn(max_layers=)``); None: all
    fallback: bool = False  # no layer meets the guarded target: keep the best reached step (``unlearn(fallback=)``)
    guard_stop: float | None = None  # give up a walked layer far past its guard (``unlearn(guard_stop=)``)
    fixed: bool = False
    about: str = ""  # one line: what the recipe is and where it comes from

    def settings(self) -> dict:
        """The run settings of the recipe: ``{name: value}`` for every field but ``fixed`` and ``about``."""
        return {k: v for k, v in asdict(self).items() if k not in ("fixed", "about")} | {"target": self.target}


class Host(ABC):
    """A model embedding one CLIP tower. Subclasses live next to the CLIP adapters, one per family."""

    name: str  # e.g. "toy-sd"
    clip_name: str  # the CLIP SLUG runs on, loadable by ``load_clip`` (e.g. "toy-clip-hf")
    tower: str  # "text" or "vision": the tower the host embeds
    scope: str  # the tower's submodule name in the matching CLIP ("text_model" / "vision_model")
    max_block: int | None = None  # deepest 0-based block of ``tower`` whose edit reaches the host's output
    forget_text: str = "captions"  # what the forget gradient pairs each forget picture with, one of FORGET_TEXTS
    search: str = "clip"  # unlearn_host's default step-size search (without a recipe), one of SEARCHES
    # Without a recipe: whether unlearn_host edits along the forget gradient made orthogonal to the forget gradients
    # of ``other_concepts`` (as a recipe's ``project_others``); one more forget gradient per other concept
    project_others: bool = False
    # Named recipes (``unlearn_host(preset=NAME)``); empty: ``preset`` keeps its CLIP meaning (see slug.PRESETS)
    presets: dict[str, HostRecipe] = {}
    default_preset: str | None = None  # the recipe used when no preset is named (a key of ``presets``)

    @abstractmethod
    def tower_module(self) -> nn.Module:
        """The host's copy of the tower, with the parameter names of the CLIP's ``scope`` submodule."""

    @abstractmethod
    def evaluate(self, progress: bool = True) -> dict:
        """The eval contract: ``{ATTRIBUTE or QUESTION_TYPE: {"top1": x, "per_concept": {NAME: x}}}``."""

    @abstractmethod
    def report_metrics(self, concept: str, patch, progress: bool = True) -> dict:
        """Host metrics before and after ``patch`` (applied and reverted here): flat ``NAME_before`` /
        ``NAME_after`` keys as fractions in [0, 1], plus any extras (e.g. ``fid_after``, ``examples``)."""

    def generation_evaluator(self, concept: str, clip) -> Callable[..., dict]:
        """For ``search="generation"`` or ``"refine"``: ``evaluate(edited_tower=None, block=None) -> {"forget_top1",
        "forget_top5", "retain_top1", "utility"}`` measured on the host's own outputs, reading the current
        (possibly edited) tower weights of ``clip``. Hosts that cannot do this keep the default."""
        raise NotImplementedError(f"{self.name!r} has no generation-based search; use search='clip'")

    def other_concepts(self, concept: str) -> list[str]:
        """The concepts a recipe with ``project_others`` keeps the edit orthogonal to (their forget gradients):
        those the host tells apart from ``concept``. The default has none."""
        return []

    def check_concept(self, concept: str) -> None:
        """Raise ``ValueError`` (one sentence) when the host cannot measure forgetting ``concept``; called by
        :func:`~slugkit.slug.unlearn_host` before any gradient work. The default accepts every concept."""

    def patch_footprint(self, patch) -> dict:
        """What ``patch`` edits: ``{"tensors_edited", "tensors", "params", "share_of_tower"}`` (parameter
        counts; the share is of every parameter of the host's tower)."""
        tower = sum(p.numel() for p in self.tower_module().parameters())
        params = sum(int(d.numel()) for d in patch.deltas.values())
        return {"tensors_edited": len(patch.deltas), "tensors": list(patch.deltas), "params": params,
                "share_of_tower": params / tower}

    # ------------------------------------------------------------------ shared behaviour
    def accepts(self, layer: LayerInfo) -> bool:
        """Whether an edit of ``layer`` (a candidate of the matching CLIP) can reach the host."""
        if layer.tower != self.tower or not layer.name.startswith(self.scope + "."):
            return False
        return self.max_block is None or 0 <= layer.block <= self.max_block

    def apply(self, patch) -> None:
        """Apply a patch made on the matching CLIP's tower to the host's copy of it (refuses any other)."""
        patch.apply(self.tower_module())

    def revert(self, patch) -> None:
        """Undo :meth:`apply`, bit-exactly."""
        patch.revert(self.tower_module())

    def edited_model_bytes(self) -> int:
        """Bytes of the tower SLUG edits, as held in memory."""
        return sum(p.numel() * p.element_size() for p in self.tower_module().parameters())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, clip={self.clip_name!r}, tower={self.tower!r})"


def load_host(name: str, **kwargs) -> Host:
    """Build the host ``name``. Real hosts fail at once, in one sentence, when their weights are not local."""
    name = name.strip()
    for key, target in HOST_LOADERS.items():
        if name == key or (key.endswith(":") and name.startswith(key)):
            module, func = target.split(":")
            loader = getattr(importlib.import_module(module), func)
            return loader(**kwargs) if name == key else loader(name, **kwargs)
    raise ValueError(f"{name!r} is not a host model; hosts: {', '.join(HOST_LOADERS)}")

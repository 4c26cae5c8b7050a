"""An unlearning result as a small, revertible object: weight deltas plus where they belong.

A :class:`Patch` holds ``delta = lambda * g_f`` for each edited layer, the fingerprint of the base
weights it was made for, and the metrics of the search. A patch may be *scoped* to one tower
(``scope="text_model"`` of a Hugging Face CLIP): its fingerprint is then that tower's, and it applies to
every model that embeds that exact tower — the CLIP it was made on, or the text encoder of a Stable
Diffusion pipeline, or the vision tower of a LLaVA model — and refuses all others. It is stored as one ``.safetensors`` file
(deltas in fp32, metadata as JSON in the header), applied in place and reverted bit-exactly.

Example::

    patch = Patch.from_step("toy-clip", "Captain Zorp", layer, result.best_lambda,
                            grads.forget[layer], model_fingerprint(model), result.best_metrics)
    patch.save("zorp.safetensors")
    Patch.load("zorp.safetensors").apply(model)   # ... later: patch.revert(model)
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slugkit.fingerprint import canonical_json, model_fingerprint, tensor_digest

_FORMAT = "slugkit.patch"
_VERSION = "1"
_STACK = "_slugkit_patch_stack"  # model attribute: list of (patch digest, label, {name: original CPU tensor})


class PatchMismatchError(ValueError):
    """The patch was made for other weights than the model it is applied to or reverted from."""


@dataclass(repr=False, eq=False)
class Patch:
    """Deltas ``{parameter name: fp32 tensor}`` to add to a model with fingerprint ``base_fingerprint``."""

    deltas: dict[str, torch.Tensor]
    base_fingerprint: str
    model: str
    concept: str | list[str]
    layers: list[str]
    step_sizes: dict[str, float]
    metrics: dict = field(default_factory=dict)
    created_by: str = "slugkit"
    scope: str = ""  # submodule whose fingerprint is ``base_fingerprint`` ("" = the whole model)

    def __post_init__(self):
        self.deltas = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.deltas.items()}
        if set(self.layers) != set(self.deltas):
            raise ValueError(f"patch layers {self.layers} do not match its deltas {list(self.deltas)}")
        outside = [n for n in self.deltas if self.scope and not n.startswith(self.scope + ".")]
        if outside:
            raise ValueError(f"patch scoped to {self.scope!r} edits {outside[:3]}, which lie outside it")

    @classmethod
    def from_step(
        cls,
        model_name: str,
        concept: str | list[str],
        layer: str,
        lam: float,
        grad: torch.Tensor,
        base_fingerprint: str,
        metrics: dict | None = None,
        scope: str = "",
    ) -> Patch:
        """The patch of one SLUG step ``theta_layer += lam * grad`` (delta computed in fp32).

        With ``scope``, ``base_fingerprint`` must be the fingerprint of that submodule
        (see :func:`scope_fingerprint`) and ``layer`` must lie inside it.
        """
        delta = float(lam) * grad.detach().to("cpu", torch.float32)
        return cls({layer: delta}, base_fingerprint, model_name, concept, [layer], {layer: float(lam)},
                   dict(metrics or {}), scope=scope)  # fmt: skip

    @property
    def label(self) -> str:
        """Concept(s) as one readable string."""
        return self.concept if isinstance(self.concept, str) else " + ".join(self.concept)

    @property
    def nbytes(self) -> int:
        """Bytes taken by the deltas."""
        return sum(t.numel() * t.element_size() for t in self.deltas.values())

    def __repr__(self) -> str:
        return (f"Patch(model={self.model!r}, concept={self.concept!r}, layers={self.layers}, "
                f"step_sizes={self.step_sizes}, base={self.base_fingerprint[:12]}, nbytes={self.nbytes})")

    def meta(self) -> dict:
        """All fields but the deltas, JSON-safe."""
        return json.loads(canonical_json({
            "model": self.model, "concept": self.concept, "layers": self.layers,
            "step_sizes": self.step_sizes, "metrics": self.metrics,
            "base_fingerprint": self.base_fingerprint, "created_by": self.created_by, "scope": self.scope,
        }))  # fmt: skip

    def digest(self) -> str:
        """Hex sha256 identifying this patch's content (metadata and every delta byte)."""
        h = hashlib.sha256(canonical_json(self.meta()).encode())
        for name in sorted(self.deltas):
            h.update(f"{name}:{tuple(self.deltas[name].shape)}:{tensor_digest(self.deltas[name])}".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file: fp32 deltas keyed by parameter name, metadata as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": _FORMAT, "version": _VERSION, "meta": canonical_json(self.meta())}
        save_file(dict(self.deltas), str(path), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                deltas = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise ValueError(f"cannot read {path} as a slugkit patch: {err}") from err
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path} is a safetensors file but not a slugkit patch "
                             f"(format {header.get('format')!r})")
        if header.get("version") != _VERSION:
            raise ValueError(f"{path} is a slugkit patch of unsupported version {header.get('version')!r}")
        try:
            meta = json.loads(header["meta"])
            return cls(deltas=deltas, base_fingerprint=meta["base_fingerprint"], model=meta["model"],
                       concept=meta["concept"], layers=list(meta["layers"]),
                       step_sizes=dict(meta["step_sizes"]), metrics=meta.get("metrics", {}),
                       created_by=meta.get("created_by", "slugkit"), scope=meta.get("scope", ""))  # fmt: skip
        except (KeyError, TypeError, json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path} has corrupt slugkit patch metadata: {err}") from err

    # ------------------------------------------------------------------ model edits
    def _target(self, model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
        """The module the fingerprint covers and ``{delta name: parameter name in that module}``.

        Unscoped: ``model`` itself. Scoped: ``model``'s submodule ``scope`` when it has one (the CLIP the
        patch was made on), otherwise ``model`` is taken to *be* the tower (a host's embedded copy).
        """
        if not self.scope:
            return model, {name: name for name in self.deltas}
        try:
            target = model.get_submodule(self.scope)
        except AttributeError:
            target = model
        return target, {name: name[len(self.scope) + 1:] for name in self.deltas}

    def check(self, model: nn.Module) -> None:
        """Raise :class:`PatchMismatchError` unless this patch fits ``model`` exactly."""
        target, names = self._target(model)
        fp = model_fingerprint(target)
        if fp != self.base_fingerprint:
            what = f"the {self.scope!r} tower" if self.scope else "weights"
            raise PatchMismatchError(
                f"patch for model {self.model!r}, concept {self.label!r} was made for {what} with "
                f"fingerprint {self.base_fingerprint[:12]}, but this model has {fp[:12]}: "
                f"it is another model, another precision, or already edited"
            )
        params = dict(target.named_parameters())
        for name, delta in self.deltas.items():
            if names[name] not in params:
                raise PatchMismatchError(f"patch {self.label!r} edits {name!r}, which the model does not have")
            if tuple(params[names[name]].shape) != tuple(delta.shape):
                raise PatchMismatchError(
                    f"patch {self.label!r} has a delta of shape {tuple(delta.shape)} for {name!r}, "
                    f"but the model's parameter has shape {tuple(params[names[name]].shape)}"
                )

    def apply(self, model: nn.Module) -> nn.Module:
        """Add the deltas to ``model`` in place (after :meth:`check`); returns ``model``.

        Exact copies of the touched tensors are kept on the edited module (on CPU) so :meth:`revert`
        can restore them bit-exactly.
        """
        self.check(model)
        target, names = self._target(model)
        params = dict(target.named_parameters())
        originals = {names[name]: params[names[name]].detach().to("cpu", copy=True) for name in self.deltas}
        with torch.no_grad():
            try:
                for name, delta in self.deltas.items():
                    p = params[names[name]]
                    dtype = torch.promote_types(p.dtype, torch.float32)
                    p.copy_((p.to(dtype) + delta.to(p.device, dtype)).to(p.dtype))
            except BaseException:
                for name, original in originals.items():
                    params[name].copy_(original)
                raise
        if getattr(target, _STACK, None) is None:
            object.__setattr__(target, _STACK, [])
        getattr(target, _STACK).append((self.digest(), self.label, originals))
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        """Restore the tensors this patch changed, bit-exactly; it must be the last one applied."""
        target, _ = self._target(model)
        stack = getattr(target, _STACK, None)
        if not stack:
            raise PatchMismatchError(f"cannot revert patch {self.label!r}: no slugkit patch is applied")
        digest, label, originals = stack[-1]
        if digest != self.digest():
            raise PatchMismatchError(
                f"cannot revert patch {self.label!r}: the last patch applied to this model is "
                f"{label!r}; revert that one first"
            )
        params = dict(target.named_parameters())
        with torch.no_grad():
            for name, original in originals.items():
                params[name].copy_(original)
        stack.pop()
        return model


def scope_fingerprint(model: nn.Module, scope: str = "") -> str:
    """Fingerprint of ``model``'s submodule ``scope`` (the whole model for ``""``): what a scoped patch records."""
    return model_fingerprint(model.get_submodule(scope) if scope else model)


def applied_patches(model: nn.Module) -> list[str]:
    """Labels of the patches currently applied to ``model`` or any of its submodules, oldest first per module."""
    return [label for m in model.modules() for _, label, _ in getattr(m, _STACK, None) or []]


def compose(patches: Sequence[Patch]) -> Patch:
    """One patch with the summed deltas of several made for the same base weights.

    ``concept`` lists every concept; ``step_sizes`` are keyed ``"<concept>|<layer>"`` and
    ``metrics["components"]`` keeps each part's metadata.
    """
    patches = list(patches)
    if not patches:
        raise ValueError("compose needs at least one patch")
    base, scope = patches[0].base_fingerprint, patches[0].scope
    for p in patches[1:]:
        if p.base_fingerprint != base or p.scope != scope:
            raise PatchMismatchError(
                f"cannot compose: patch {p.label!r} was made for weights {p.base_fingerprint[:12]} but "
                f"patch {patches[0].label!r} for {base[:12]}"
            )
    deltas: dict[str, torch.Tensor] = {}
    concepts: list[str] = []
    step_sizes: dict[str, float] = {}
    for p in patches:
        for name, delta in p.deltas.items():
            deltas[name] = deltas[name] + delta if name in deltas else delta.clone()
        concepts += [p.concept] if isinstance(p.concept, str) else list(p.concept)
        for name, lam in p.step_sizes.items():
            key = name if "|" in name else f"{p.label}|{name}"
            step_sizes[key] = lam
    return Patch(
        deltas=deltas, base_fingerprint=base, model=patches[0].model, concept=concepts,
        layers=list(deltas), step_sizes=step_sizes,
        metrics={"components": [p.meta() for p in patches]}, scope=scope,
    )  # fmt: skip

"""An unlearning result as a small, revertible object: weight deltas plus where they belong.

A :class:`Patch` holds ``delta = lambda * g_f`` for each edited layer, the fingerprint of the base
weights it was made for, and the metrics of the search. A patch may be *scoped* to one tower
(``scope="text_model"`` of a Hugging Face CLIP): its fingerprint is then that tower's, and it applies to
every model that embeds that exact tower — the CLIP it was made on, or the text encoder of a Stable
Diffusion pipeline, or the vision tower of a LLaVA model — and refuses all others. It is stored as one ``.safetensors`` file
(deltas in fp32, metadata as JSON in the header), applied in place and reverted bit-exactly.

Reliability: the file is byte-reproducible (tensors and metadata in canonical, sorted order, so two
identical runs give the same sha256) and written atomically; a patch records a sha256 of the *full*
original tensor of every layer it edits and :meth:`Patch.check` compares it on apply, so an in-place
edit of those layers cannot slip past the sampled model fingerprint; deltas that are not finite are
refused when a patch is built, loaded or applied.

Example::

    patch = Patch.from_step("toy-clip", "Captain Zorp", layer, result.best_lambda,
                            grads.forget[layer], model_fingerprint(model), result.best_metrics)
    patch.save("zorp.safetensors")
    Patch.load("zorp.safetensors").apply(model)   # ... later: patch.revert(model)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from slugkit.bounds import check_patch_path
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
    base_digests: dict[str, str] = field(default_factory=dict)  # delta name -> sha256 of the full original tensor

    def __post_init__(self):
        self.deltas = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.deltas.items()}
        if set(self.layers) != set(self.deltas):
            raise ValueError(f"patch layers {self.layers} do not match its deltas {list(self.deltas)}")
        self._check_finite()
        self.base_digests = dict(self.base_digests or {})
        stray = sorted(set(self.base_digests) - set(self.deltas))
        if stray:
            raise ValueError(f"patch has base digests for {stray[:3]}, which it does not edit")
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
        base_digest: str | None = None,
    ) -> Patch:
        """The patch of one SLUG step ``theta_layer += lam * grad`` (delta computed in fp32).

        With ``scope``, ``base_fingerprint`` must be the fingerprint of that submodule
        (see :func:`scope_fingerprint`) and ``layer`` must lie inside it. ``base_digest`` is
        ``tensor_digest`` of the layer's original weights (checked in full on apply).
        """
        delta = float(lam) * grad.detach().to("cpu", torch.float32)
        return cls({layer: delta}, base_fingerprint, model_name, concept, [layer], {layer: float(lam)},
                   dict(metrics or {}), scope=scope,
                   base_digests={layer: base_digest} if base_digest else {})  # fmt: skip

    def _check_finite(self) -> None:
        for name, delta in self.deltas.items():
            finite = torch.isfinite(delta)
            if not bool(finite.all()):
                kind = "NaN" if bool(torch.isnan(delta).any()) else "infinite"
                raise ValueError(f"patch delta for layer {name!r} holds {kind} values ({int((~finite).sum())} of "
                                 f"{delta.numel()}): it would corrupt the model, so it is refused")

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
            "base_digests": self.base_digests,
        }))  # fmt: skip

    def digest(self) -> str:
        """Hex sha256 identifying this patch's content (metadata and every delta byte)."""
        h = hashlib.sha256(canonical_json(self.meta()).encode())
        for name in sorted(self.deltas):
            h.update(f"{name}:{tuple(self.deltas[name].shape)}:{tensor_digest(self.deltas[name])}".encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        """The ``.safetensors`` file as bytes, canonical: the same patch always gives the same bytes."""
        header = {"format": _FORMAT, "version": _VERSION, "meta": canonical_json(self.meta())}
        return canonical_safetensors(self.deltas, header)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file (fp32 deltas keyed by parameter name, metadata as JSON), atomically."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"cannot save a patch to {str(path)!r}: it is a folder; give a file name such as "
                             f"{str(path / 'patch.safetensors')!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        check_patch_path(path)
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
            fields = dict(base_fingerprint=meta["base_fingerprint"], model=meta["model"],
                          concept=meta["concept"], layers=list(meta["layers"]),
                          step_sizes=dict(meta["step_sizes"]), metrics=meta.get("metrics", {}),
                          created_by=meta.get("created_by", "slugkit"), scope=meta.get("scope", ""),
                          base_digests=dict(meta.get("base_digests") or {}))  # fmt: skip
        except (KeyError, TypeError, json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path} has corrupt slugkit patch metadata: {err}") from err
        try:
            return cls(deltas=deltas, **fields)
        except ValueError as err:
            raise ValueError(f"refusing patch {str(path)!r}: {err}") from err

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
        for name, digest in self.base_digests.items():  # every element of the edited layers, not a sample
            if tensor_digest(params[names[name]]) != digest:
                raise PatchMismatchError(
                    f"patch {self.label!r} was made for other values of layer {name!r} (its full hash differs, "
                    "though the sampled model fingerprint matches): the layer was edited in place or another "
                    "patch touches it")
        self._check_finite()

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

    ``concept`` lists every concept; ``step_sizes`` are keyed ``"<concept>|<layer>"``, with ``"#2"``,
    ``"#3"``... appended when the same concept and layer come again (``compose([p, p])`` records both
    lambdas), and ``metrics["components"]`` keeps each part's metadata.
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
    digests: dict[str, str] = {}
    for p in patches:
        for name, delta in p.deltas.items():
            deltas[name] = deltas[name] + delta if name in deltas else delta.clone()
        concepts += [p.concept] if isinstance(p.concept, str) else list(p.concept)
        for name, lam in p.step_sizes.items():
            key = name if "|" in name else f"{p.label}|{name}"
            base_key, k = key.split("#")[0], 2
            while key in step_sizes:
                key, k = f"{base_key}#{k}", k + 1
            step_sizes[key] = lam
        for name, digest in p.base_digests.items():
            if digests.setdefault(name, digest) != digest:
                raise PatchMismatchError(f"cannot compose: patch {p.label!r} was made for other values of layer "
                                         f"{name!r} than patch {patches[0].label!r}")
    return Patch(
        deltas=deltas, base_fingerprint=base, model=patches[0].model, concept=concepts,
        layers=list(deltas), step_sizes=step_sizes,
        metrics={"components": [p.meta() for p in patches]}, scope=scope, base_digests=digests,
    )  # fmt: skip


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A ``.safetensors`` file as bytes, with tensors in name order and every JSON key sorted.

    The safetensors library writes its ``__metadata__`` map in hash order, which differs between
    processes; this writer is deterministic, and its output is read by ``safe_open`` as usual.
    """
    header: dict = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot store tensor {name!r} of dtype {t.dtype} in a patch")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as the format recommends
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)

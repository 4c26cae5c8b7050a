"""Stage 1 of SLUG: compute the forget and retain gradients once, and store them.

``g_f`` is the gradient of the forget loss ``mean_i (1 - cos(v_i, t_i))``; ``g_r`` that of the CLIP
contrastive loss on the retain set. Both are averages of per-batch mean gradients, each batch
counted once (the authors' Hugging Face path never zeroes them, so early batches count again). The
contrastive loss of a batch depends on its size (its negatives), so the retain batches should all be
equally large: ``pair_loader(..., equal_batches=True)`` drops the remainder, and
:func:`compute_gradients` warns when they are not.

Example::

    grads = compute_gradients(adapter, forget_loader, retain_loader, store=GradientStore("cache"))
    grads.forget["text.blocks.3.attn.in_proj_weight"].shape
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from slugkit.adapters.base import CLIPAdapter
from slugkit.fingerprint import canonical_json, data_fingerprint, model_fingerprint

LOSSES = ("forget", "retain")
_FORMAT = "slugkit.gradients"
LOW_MEMORY_PARAMETERS = 50_000_000  # from this model size on, compute_gradients recomputes activations
_KEY_VERSION = "slugkit.gradients.v2"  # bump when the losses, the accumulation or the retain batching change


def forget_loss(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(v_i, t_i))`` for paired embeddings ``img, txt`` of shape ``(B, D)``; a scalar."""
    _check_pair(img, txt)
    return (1.0 - F.cosine_similarity(img, txt, dim=-1)).mean()


def retain_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP contrastive loss ``(CE(s V T^T, I) + CE(s T V^T, I)) / 2``; ``img, txt`` are ``(B, D)``.

    ``scale`` is ``s = exp(logit_scale)``; row ``i`` of ``img`` is paired with row ``i`` of ``txt``.
    """
    _check_pair(img, txt)
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _check_pair(img: torch.Tensor, txt: torch.Tensor) -> None:
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"expected image and text embeddings of the same shape (B, D), got {tuple(img.shape)} "
            f"and {tuple(txt.shape)}"
        )


def _resolve(adapter: CLIPAdapter, layers: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    if isinstance(layers, str):
        raise TypeError("layers must be a list of parameter names, not a single string")
    if len(layers) == 0:
        raise ValueError("no layers requested: pass at least one parameter name")
    params = dict(adapter.model.named_parameters())
    unknown = [name for name in layers if name not in params]
    if unknown:
        valid = [info.name for info in adapter.candidate_layers()][:5]
        raise KeyError(
            f"unknown layer(s) {unknown[:5]} for model {adapter.name!r}; candidate layers include {valid}"
        )
    return {name: params[name] for name in layers}


def _accumulate(
    adapter: CLIPAdapter, loader: Iterable, loss: str, layers: Sequence[str], desc: str | None,
    progress: bool = True, low_memory: bool = False,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    model = adapter.model
    wanted = _resolve(adapter, layers)
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    modes = [(m, m.training) for m in model.modules()]
    device = adapter.device
    # fp32 layers sum their per-batch gradients in ``.grad`` itself (autograd adds each batch's gradient to
    # it: the same sum, without a second copy of every gradient); other dtypes are summed in fp32 copies.
    in_place = {name for name, p in wanted.items() if p.dtype == torch.float32}
    sums: dict[str, torch.Tensor] = {}
    sizes: list[int] = []  # pairs per batch
    try:
        model.zero_grad(set_to_none=True)  # a stale .grad would join the sum
        for p in all_params:
            p.requires_grad_(False)
        for p in wanted.values():
            p.requires_grad_(True)
        model.eval()
        for n_batch, batch in enumerate(tqdm(loader, desc=desc or f"{loss} gradients", leave=False, disable=not progress)):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(f"{loss} loader must yield (pixels, tokens) pairs; batch {n_batch} is not")
            pixels, tokens = batch
            with torch.enable_grad(), (adapter.recomputed_activations() if low_memory else contextlib.nullcontext()):
                img = adapter.encode_image(pixels.to(device))
                txt = adapter.encode_text(tokens.to(device))
                if loss == "forget":
                    value = forget_loss(img, txt)
                else:
                    value = retain_loss(img, txt, adapter.logit_scale())
                if not torch.isfinite(value):
                    raise FloatingPointError(f"{loss} loss is {value.item()} at batch {n_batch}")
                if value.requires_grad:  # False when no requested layer is upstream of the loss
                    value.backward()
            del img, txt, value  # the graph goes now, before the next batch builds its own
            for name, p in wanted.items():
                if p.grad is None:  # the loss does not depend on this parameter (so far)
                    continue
                g = p.grad if name in in_place else p.grad.detach().float()
                if not torch.isfinite(g).all():  # a running sum turns non-finite at the batch that made it so
                    raise FloatingPointError(f"non-finite {loss} gradient for layer {name!r} at batch {n_batch}")
                if name not in in_place:
                    if name in sums:
                        sums[name] += g
                    else:
                        sums[name] = g.clone()
                    p.grad = None
            sizes.append(int(pixels.shape[0]))
        for name in in_place:
            p = wanted[name]
            if p.grad is not None:
                sums[name], p.grad = p.grad.detach(), None
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(all_params, flags):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    if not sizes:
        raise ValueError(f"{loss} loader is empty: it yielded no batch")
    out = {}
    for name, p in wanted.items():  # the mean over batches, in place: no second copy
        s = sums.pop(name, None)
        out[name] = s.div_(len(sizes)).cpu() if s is not None else torch.zeros(p.shape, dtype=torch.float32)
    return out, sizes


def accumulate_gradients(
    adapter: CLIPAdapter,
    loader: Iterable,
    loss: str,
    layers: Sequence[str],
    desc: str | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean over batches of the per-batch mean gradient of ``loss`` ("forget" or "retain").

    ``loader`` yields ``(pixels, tokens)`` batches ready for ``adapter.encode_image/encode_text``.
    Each batch's gradient counts once (any stale ``.grad`` on the model is discarded first, and
    ``.grad`` is left as ``None`` afterwards). Only ``layers`` require grad during the pass; the
    original ``requires_grad`` flags and train/eval modes are restored afterwards.
    Returns ``{name: fp32 CPU tensor shaped like the parameter}``.
    """
    grads, _ = _accumulate(adapter, loader, loss, layers, desc, progress)
    return grads


@dataclass
class Gradients:
    """Forget and retain gradients ``{parameter name: fp32 tensor}`` plus provenance ``meta``."""

    forget: dict[str, torch.Tensor]
    retain: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.forget)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file (``forget/<name>``, ``retain/<name>``; meta as JSON)."""
        path = Path(path)
        tensors = {f"forget/{k}": v.detach().float().contiguous().cpu() for k, v in self.forget.items()}
        tensors |= {f"retain/{k}": v.detach().float().contiguous().cpu() for k, v in self.retain.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": _FORMAT, "meta": canonical_json(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Gradients:
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a slugkit gradients file (format {header.get('format')!r})")
        forget = {k.removeprefix("forget/"): v for k, v in tensors.items() if k.startswith("forget/")}
        retain = {k.removeprefix("retain/"): v for k, v in tensors.items() if k.startswith("retain/")}
        return cls(forget=forget, retain=retain, meta=json.loads(header.get("meta", "{}")))


class GradientStore:
    """A directory of :class:`Gradients` files keyed by model, forget data, retain data and layers.

    It heals itself: an entry is written to a hidden temporary file and renamed into place (the
    temporary file is removed if the write is interrupted, Ctrl-C included); leftovers of processes
    that died mid-write, or older than an hour, are swept when the store is opened; an entry that
    cannot be read is discarded with a one-line warning, so the caller recomputes it.
    """

    def __init__(self, root: str | os.PathLike):
        from slugkit.rundir import sweep_stale

        self.root = Path(root)
        # ".tmp-<pid>-<key>.safetensors" now, ".<key>.safetensors.<pid>.tmp" from slugkit <= 0.1.0
        sweep_stale(self.root, r"^\.(?:tmp-|.*\.)(?P<pid>\d+)(?:-.*|\.tmp)$")

    @staticmethod
    def key(model_fp: str, forget_fp: str, retain_fp: str, layers: Iterable[str]) -> str:
        """Hex sha256 of the three fingerprints and the sorted layer names."""
        blob = json.dumps([_KEY_VERSION, model_fp, forget_fp, retain_fp, sorted(layers)])
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Gradients | None:
        """The stored gradients, or ``None`` when the key is absent or its file is unreadable (then removed)."""
        if key not in self:
            return None
        path = self.path(key)
        try:
            grads = Gradients.load(path)
            if not grads.forget or set(grads.forget) != set(grads.retain):
                raise ValueError("forget and retain layers differ")
            return grads
        except (ValueError, OSError) as err:
            cause = err.__cause__ or err  # the reader's own words, without the path we name anyway
            reason = (str(cause).splitlines() or [""])[0] or type(cause).__name__
            warnings.warn(f"discarding unreadable gradient cache entry {path.name} ({reason[:120]}); "
                          "recomputing it", RuntimeWarning, stacklevel=2)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def put(self, key: str, grads: Gradients) -> Path:
        """Store ``grads`` under ``key`` (written to a temporary file, then renamed)."""
        target = self.path(key)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        try:
            grads.save(tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # only still there when the write or the rename failed
        return target


def compute_gradients(
    adapter: CLIPAdapter,
    forget_loader: Iterable,
    retain_loader: Iterable,
    layers: Sequence[str] | None = None,
    store: GradientStore | None = None,
    progress: bool = True,
    low_memory: bool | None = None,
) -> Gradients:
    """Stage 1: forget and retain gradients of ``layers`` (default: all candidate layers).

    With a ``store``, the three fingerprints are computed first (one extra pass over the data, no
    model forward) and stored gradients are returned without recomputing. ``low_memory`` recomputes
    each block's activations during the backward pass instead of holding them all (same gradients, one
    more forward pass; see :meth:`~slugkit.adapters.base.CLIPAdapter.recomputed_activations`); the default
    turns it on for models of at least :data:`LOW_MEMORY_PARAMETERS` parameters, where the activations
    of a batch outweigh the model (ViT-B-32, batch 64: about 4 GB).
    """
    if low_memory is None:
        low_memory = sum(p.numel() for p in adapter.model.parameters()) >= LOW_MEMORY_PARAMETERS
    if layers is None:
        layers = [info.name for info in adapter.candidate_layers()]
    layers = list(layers)
    _resolve(adapter, layers)
    meta = {
        "model": adapter.name,
        "family": adapter.family,
        "model_fingerprint": model_fingerprint(adapter.model),
        "layers": layers,
    }
    key = None
    if store is not None:
        meta["forget_fingerprint"] = data_fingerprint(forget_loader)
        meta["retain_fingerprint"] = data_fingerprint(retain_loader)
        key = GradientStore.key(
            meta["model_fingerprint"], meta["forget_fingerprint"], meta["retain_fingerprint"], layers
        )
        cached = store.get(key)
        if cached is not None:
            return cached
        meta["key"] = key
    t0 = time.perf_counter()
    forget, forget_sizes = _accumulate(adapter, forget_loader, "forget", layers, "forget gradients", progress,
                                       low_memory)
    t1 = time.perf_counter()
    retain, retain_sizes = _accumulate(adapter, retain_loader, "retain", layers, "retain gradients", progress,
                                       low_memory)
    t2 = time.perf_counter()
    if len(set(retain_sizes)) > 1:
        warnings.warn(f"retain batches have unequal sizes {sorted(set(retain_sizes))}: each weighs the same in "
                      "g_r, so a small last batch moves it; build the retain loader with "
                      "pair_loader(..., equal_batches=True)", stacklevel=2)
    meta |= {
        "forget_batches": len(forget_sizes),
        "retain_batches": len(retain_sizes),
        "retain_batch_size": retain_sizes[0],
        "retain_pairs": sum(retain_sizes),
        "seconds": {"forget": round(t1 - t0, 4), "retain": round(t2 - t1, 4)},
    }
    grads = Gradients(forget=forget, retain=retain, meta=meta)
    if store is not None:
        store.put(key, grads)
    return grads

"""Stage 1 of SLUG: compute the forget and retain gradients once, and store them.

``g_f`` is the gradient of the forget loss ``mean_i (1 - cos(v_i, t_i))``; ``g_r`` that of the CLIP
contrastive loss on the retain set. Both are averages of per-batch mean gradients, with the
gradients zeroed before every batch. The contrastive loss of a batch depends on its size (its
negatives), so the retain batches should all be equally large: ``pair_loader(...,
equal_batches=True)`` drops the remainder, and :func:`compute_gradients` warns when they are not.
Under a process group each process takes every N-th batch and the sums are added across processes
(:mod:`slugkit.distributed`): the same batches, the same means; only rank 0 writes the cache.

The two halves are cached apart: the forget gradient per (model, forget data, layers), the retain gradient
per (model, retain data, layers). With one fixed retain set per model (SLUG's default, as the authors'
``train_grads.pt``), the retain gradient — most of the backward passes — is computed once and reused by
every concept: from a :class:`GradientStore` on disk, and within a process from memory.

Example::

    grads = compute_gradients(adapter, forget_loader, retain_loader, store=GradientStore("cache"))
    grads.forget["text.blocks.3.attn.in_proj_weight"].shape
"""
from __future__ import annotations

import contextlib
import functools
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

from slugkit import distributed
from slugkit.adapters.base import CLIPAdapter
from slugkit.fingerprint import canonical_json, data_fingerprint, model_fingerprint
from slugkit.profile import heap_returned, stage

LOSSES = ("forget", "retain")
_FORMAT = "slugkit.gradients"
_TENSORS_FORMAT = "slugkit.tensors.v1"  # other per-model entries of a store (see GradientStore.put_tensors)
LOW_MEMORY_PARAMETERS = 50_000_000  # from this model size on, compute_gradients recomputes activations
_KEY_VERSION = "slugkit.gradients.v4"  # bump when the losses, the accumulation or the retain batching change
_RETAIN_MEMO: dict[str, tuple[dict[str, torch.Tensor], dict]] = {}  # the last retain gradient of this process


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
    sizes: list[int] = []  # pairs per batch
    # A loader known to hold several batches gets its float64 sums (zeros) before the first forward pass, not beside
    # a batch's activations or in place of the first batch's single-precision gradients, where the memory freed
    # around them can stay in the heap as holes (same numbers; on ViT-B-32 alone it lowered the peak only from 3205
    # to 3162 MiB: heap_returned, around this on large models, does the rest)
    several = hasattr(loader, "__len__") and len(loader) > 1
    sums: dict[str, torch.Tensor] = ({name: torch.zeros(p.shape, dtype=torch.float64, device=p.device)
                                      for name, p in wanted.items()} if several else {})

    def fold(p: torch.Tensor, name: str) -> None:
        """Add ``p.grad`` to its running sum as soon as the backward pass has made it, then drop it: the backward
        pass never holds every layer's ``.grad`` at once. The sum of several batches is float64, so it does not
        depend on how the batches are split; a single batch, such as most forget sets, is kept as it is and never
        needs the float64 copy (a loader of unknown length converts its sums at the second batch)."""
        g = p.grad.detach()
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"non-finite {loss} gradient for layer {name!r} at batch {len(sizes)}")
        if name not in sums:
            sums[name] = g
        else:
            if sums[name].dtype != torch.float64:
                sums[name] = sums[name].double()
            sums[name] += g
        p.grad = None

    hooks = []
    try:
        for p in all_params:
            p.requires_grad_(False)
        for name, p in wanted.items():
            p.requires_grad_(True)
            hooks.append(p.register_post_accumulate_grad_hook(functools.partial(fold, name=name)))
        model.eval()
        mine = distributed.shard_batches(loader)  # every batch, or this process's share of them
        for n_batch, batch in enumerate(tqdm(mine, desc=desc or f"{loss} gradients", leave=False, disable=not progress)):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(f"{loss} loader must yield (pixels, tokens) pairs; batch {n_batch} is not")
            pixels, tokens = batch
            model.zero_grad(set_to_none=True)
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
                    value.backward()  # fold() takes each layer's gradient into its sum
            del img, txt, value  # the graph goes now, before the next batch builds its own
            sizes.append(int(pixels.shape[0]))
        sums = distributed.sum_tensors({name: sums[name] if name in sums else
                                        torch.zeros(p.shape, dtype=torch.float64, device=p.device)
                                        for name, p in wanted.items()})  # a process without batches adds zeros
        sizes = distributed.interleave(distributed.gather(sizes))  # every batch's size, in the loader's order
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        for p, flag in zip(all_params, flags):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    if not sizes:
        raise ValueError(f"{loss} loader is empty: it yielded no batch")
    out = {}
    for name in wanted:  # the mean over batches, each sum freed as soon as its mean exists
        out[name] = sums.pop(name).double().div_(len(sizes)).float().cpu()  # one layer's float64 copy at a time
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
    Gradients are zeroed before every batch (any stale ``.grad`` on the model is discarded, and
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
    """A directory of gradient files, one per loss: keyed by the loss, model, data and layers (:meth:`key`).

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
    def key(loss: str, model_fp: str, data_fp: str, layers: Iterable[str]) -> str:
        """Hex sha256 of the loss ("forget" or "retain"), the model and data fingerprints and the sorted layers."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        blob = json.dumps([_KEY_VERSION, loss, model_fp, data_fp, sorted(layers)])
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
            if not grads.forget and not grads.retain:
                raise ValueError("it holds no gradient")
            if grads.forget and grads.retain and set(grads.forget) != set(grads.retain):
                raise ValueError("forget and retain layers differ")
            return grads
        except (ValueError, OSError) as err:
            return _discard(path, err, "gradient cache entry")

    def put(self, key: str, grads: Gradients) -> Path:
        """Store ``grads`` under ``key`` (written to a temporary file, then renamed)."""
        return self._write(key, grads.save)

    def _write(self, key: str, save) -> Path:
        """``save(path)`` into a hidden temporary file, renamed to ``key``'s path once complete."""
        target = self.path(key)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        try:
            save(tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # only still there when the write or the rename failed
        return target

    @staticmethod
    def tensors_key(*parts) -> str:
        """Hex sha256 of the JSON-able ``parts`` naming an entry of :meth:`put_tensors` (never a gradient key)."""
        return hashlib.sha256(json.dumps([_TENSORS_FORMAT, *parts]).encode()).hexdigest()

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Store named tensors that are not gradients (e.g. an evaluator's embeddings of the unedited model)."""
        def save(path):
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
                      metadata={"format": _TENSORS_FORMAT})

        self.root.mkdir(parents=True, exist_ok=True)
        return self._write(key, save)

    def get_tensors(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors :meth:`put_tensors` stored under ``key``, or ``None`` (absent, or unreadable: then removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("format") != _TENSORS_FORMAT:
                    raise ValueError("not a slugkit tensors entry")
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 (safetensors raises its own errors; any unreadable entry is recomputed)
            return _discard(path, err, "cache entry")


def _discard(path: Path, err: BaseException, what: str) -> None:
    """Warn in one line that the store entry ``path`` is unreadable and remove it (its caller recomputes it)."""
    cause = err.__cause__ or err  # the reader's own words, without the path we name anyway
    reason = (str(cause).splitlines() or [""])[0] or type(cause).__name__
    warnings.warn(f"discarding unreadable {what} {path.name} ({reason[:120]}); recomputing it", RuntimeWarning,
                  stacklevel=3)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def clear_retain_memo() -> None:
    """Forget the retain gradient kept in memory (``reuse_retain``): the next one is computed (or read from a store)."""
    _RETAIN_MEMO.clear()


def compute_gradients(
    adapter: CLIPAdapter,
    forget_loader: Iterable,
    retain_loader: Iterable,
    layers: Sequence[str] | None = None,
    store: GradientStore | None = None,
    progress: bool = True,
    retain_layers: Sequence[str] | None = None,
    reuse_retain: bool = False,
    low_memory: bool | None = None,
) -> Gradients:
    """Stage 1: forget and retain gradients of ``layers`` (default: all candidate layers).

    With a ``store``, the fingerprints are computed first (one extra pass over the data, no model
    forward) and each half found there is returned without recomputing. The retain gradient is
    computed over ``retain_layers`` (default ``layers``; it must contain them) and cached under
    them, so a wide ``retain_layers`` (e.g. every candidate layer) serves any later subset of it.
    ``reuse_retain=True`` also keeps the last retain gradient in memory for this process and reuses
    it when the model, retain data and ``retain_layers`` match (fingerprinted, even without a store).
    ``low_memory`` recomputes each block's activations during the backward pass instead of holding them all
    (same gradients, one more forward pass; see :meth:`~slugkit.adapters.base.CLIPAdapter.recomputed_activations`);
    the default turns it on for models of at least :data:`LOW_MEMORY_PARAMETERS` parameters, where the
    activations of a batch outweigh the model (ViT-B-32, batch 64: about 4 GB).
    """
    if low_memory is None:
        low_memory = sum(p.numel() for p in adapter.model.parameters()) >= LOW_MEMORY_PARAMETERS
    if layers is None:
        layers = [info.name for info in adapter.candidate_layers()]
    layers = list(layers)
    _resolve(adapter, layers)
    retain_layers = layers if retain_layers is None else sorted(retain_layers)
    if not set(layers) <= set(retain_layers):
        raise ValueError(f"retain_layers must contain every layer, but lack {sorted(set(layers) - set(retain_layers))[:3]}")
    _resolve(adapter, retain_layers)
    model_fp = model_fingerprint(adapter.model)
    meta = {"model": adapter.name, "family": adapter.family, "model_fingerprint": model_fp, "layers": layers}
    parts = {}
    # retain first: its float64 sums (many batches) are held next to the finished forget gradient of one batch,
    # rather than next to a finished forget gradient held whole (the lower peak of the two orders)
    for loss, loader, wanted in (("retain", retain_loader, retain_layers), ("forget", forget_loader, layers)):
        with stage(f"{loss}_gradient"):
            parts[loss] = _gradient_part(adapter, loss, loader, wanted, model_fp, meta, store,
                                         memo=loss == "retain" and reuse_retain, progress=progress,
                                         low_memory=low_memory)
    return Gradients(forget={name: parts["forget"][name] for name in layers},
                     retain={name: parts["retain"][name] for name in layers}, meta=meta)


def project_out(grad: torch.Tensor, directions: Sequence[torch.Tensor]) -> torch.Tensor:
    """``grad`` minus its orthogonal projection on the span of ``directions`` (tensors of its shape), in float64.

    What is left changes no loss whose gradient lies in that span to first order: with ``directions`` the other
    concepts' forget gradients of the same layer, a step along it leaves their forget losses where they were.
    """
    if not directions:
        return grad
    flat = grad.detach().double().flatten()
    basis = torch.stack([d.detach().double().flatten() for d in directions], 1)
    if basis.shape[0] != flat.numel():
        raise ValueError(f"project_out needs directions of the gradient's shape {tuple(grad.shape)}, got "
                         f"{tuple(directions[0].shape)}")
    q, _ = torch.linalg.qr(basis)
    return (flat - q @ (q.T @ flat)).reshape(grad.shape).to(grad.dtype)


def retain_gradient(adapter: CLIPAdapter, retain_loader: Iterable, layers: Sequence[str],
                    store: GradientStore | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """The retain half alone: ``g_r`` of ``layers`` over ``retain_loader``, through the same per-model cache as
    :func:`compute_gradients` with ``reuse_retain=True`` (computed over every default candidate layer too, so the
    atlas, :func:`slugkit.multi.unlearn_many` and :func:`slugkit.unlearn` share one computation)."""
    layers = list(layers)
    retain_layers = sorted(set(layers) | {info.name for info in adapter.candidate_layers()})
    _resolve(adapter, retain_layers)
    grads = _gradient_part(adapter, "retain", retain_loader, retain_layers, model_fingerprint(adapter.model), {},
                           store, memo=True, progress=progress)
    return {name: grads[name] for name in layers}


def _gradient_part(adapter, loss, loader, wanted, model_fp, meta, store, memo, progress,
                   low_memory=False) -> dict[str, torch.Tensor]:
    """One half of :func:`compute_gradients`: from memory, the store, or computed (then stored); adds to ``meta``."""
    key = None
    if store is not None or memo:
        meta[f"{loss}_fingerprint"] = data_fingerprint(loader, progress)
        key = GradientStore.key(loss, model_fp, meta[f"{loss}_fingerprint"], wanted)
        meta[f"{loss}_key"] = key
    found = _RETAIN_MEMO.get(key) if memo else None
    if found is None and store is not None:
        cached = store.get(key)
        usable = cached is not None and set(getattr(cached, loss)) == set(wanted)
        if distributed.all_agree(usable):  # every process uses the cache, or none does
            found = getattr(cached, loss), cached.meta
    if found is None:
        t = time.perf_counter()
        # a large model's batches give their freed activations back to the OS (heap_returned): a lower peak memory
        with heap_returned() if low_memory else contextlib.nullcontext():
            grads, sizes = _accumulate(adapter, loader, loss, wanted, f"{loss} gradients", progress, low_memory)
        part_meta = {f"{loss}_batches": len(sizes), f"{loss}_seconds": round(time.perf_counter() - t, 4)}
        if loss == "retain":
            if len(set(sizes)) > 1:
                warnings.warn(f"retain batches have unequal sizes {sorted(set(sizes))}: each weighs the same "
                              "in g_r, so a small last batch moves it; build the retain loader with "
                              "pair_loader(..., equal_batches=True)", stacklevel=3)
            part_meta |= {"retain_batch_size": sizes[0], "retain_pairs": sum(sizes)}
        if store is not None and distributed.is_writer():
            store.put(key, Gradients(**{"forget": {}, "retain": {}, loss: grads}, meta=part_meta))
        found = grads, part_meta
    if memo:
        _RETAIN_MEMO.clear()  # one entry: a retain gradient is as large as the layers it covers
        _RETAIN_MEMO[key] = found
    meta |= found[1]
    return found[0]

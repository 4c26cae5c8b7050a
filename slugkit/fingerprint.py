"""Cheap, stable fingerprints of models, tensors and data loaders (hex sha256 strings).

They key the gradient cache and tie a patch to the exact weights it was made for.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from slugkit import distributed

SAMPLES_PER_TENSOR = 65_536


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw bytes of a tensor (any dtype, bfloat16 included), in C order, copied to CPU."""
    t = t.detach().reshape(-1).contiguous()
    return t.view(torch.uint8).cpu().numpy().tobytes()


def _header(*fields) -> bytes:
    return ("\x1f".join(str(f) for f in fields) + "\x1e").encode()


def model_fingerprint(model: nn.Module) -> str:
    """Hex sha256 of a model's parameters.

    For each named parameter in sorted name order, hashes its name, shape, dtype and the bytes of
    up to 65,536 evenly spaced elements of the flattened tensor (all elements if fewer). The cost is
    at most ~256 kB read per parameter, so it stays cheap even for 7B models, at the price of not
    seeing an edit that touches none of the sampled elements. Device and buffers are ignored.
    """
    h = hashlib.sha256(b"slugkit.model_fingerprint.v1\n")
    params = dict(model.named_parameters())
    for name in sorted(params):
        p = params[name].detach()
        flat = p.reshape(-1)
        n = flat.numel()
        if n > SAMPLES_PER_TENSOR:
            k = SAMPLES_PER_TENSOR
            idx = torch.arange(k, device=flat.device, dtype=torch.int64) * n // k
            flat = flat[idx]
        h.update(_header(name, tuple(p.shape), p.dtype, n))
        h.update(_tensor_bytes(flat))
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """Hex sha256 of all the bytes of one tensor (values only: shape and dtype are not hashed)."""
    return hashlib.sha256(_tensor_bytes(t)).hexdigest()


def _update(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(_header("T", obj.dtype, tuple(obj.shape)))
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, Mapping):
        h.update(_header("D", len(obj)))
        for key in sorted(obj, key=str):
            h.update(_header("K", key))
            _update(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(_header("L", len(obj)))
        for item in obj:
            _update(h, item)
    elif obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        h.update(_header("S", type(obj).__name__, repr(obj)))
    else:
        raise TypeError(f"data_fingerprint cannot hash a batch item of type {type(obj).__name__}")


def data_fingerprint(loader: Iterable, progress: bool = True) -> str:
    """Hex sha256 over every tensor (with dtype, shape and batch structure) a loader yields.

    Iterates the loader once, without any model forward; hashes the list of per-batch digests, so under
    a process group each process digests only its own batches (:mod:`slugkit.distributed`) and all of
    them get the single-process fingerprint. The loader must be deterministic (no shuffling, no random
    augmentation) for the fingerprint to be stable.
    """
    digests = []
    for batch in tqdm(distributed.shard_batches(loader), desc="fingerprint data", leave=False,
                      disable=not (progress and distributed.is_writer())):
        b = hashlib.sha256()
        _update(b, batch)
        digests.append(b.hexdigest())
    digests = distributed.interleave(distributed.gather(digests))
    h = hashlib.sha256(b"slugkit.data_fingerprint.v2\n")
    for n, digest in enumerate(digests):
        h.update(_header("B", n, digest))
    h.update(_header("N", len(digests)))
    return h.hexdigest()


def to_jsonable(obj):
    """``obj`` with numpy/torch scalars, tuples and paths turned into plain JSON types.

    Non-finite floats become ``None`` so the result is strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        if obj.numel() != 1:
            raise TypeError(f"cannot store a tensor of shape {tuple(obj.shape)} as JSON")
        obj = obj.item()
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot store a value of type {type(obj).__name__} as JSON")


def canonical_json(obj) -> str:
    """Deterministic compact JSON (sorted keys) of :func:`to_jsonable` ``(obj)``."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)

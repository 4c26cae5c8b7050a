"""Input bounds checked at the boundary (CLI and public API), each failing with one sentence.

The limits, and how they are computed:

- **seeds** are integers in ``0 .. 2**31 - 1`` (every seed renders and caches its own MiniCanvas splits,
  so a seed is an identity, not a free parameter; numpy and torch both accept this range).
- **picture counts** (``n_test``, MiniCanvas ``n``): a 64x64 MiniCanvas picture takes 16 KiB in memory
  (12 KiB RGB + 4 KiB mask) and up to twice that while a cached split is read back, so
  ``max_pictures() = available memory / 2 / 32 KiB`` (``psutil.virtual_memory().available``, else
  ``os.sysconf`` free pages): at most half of the memory available now goes to pictures.
- **batch size**: ``2 .. 4096`` pairs; the CLIP contrastive retain loss of a batch of one pair is 0
  (one class to choose from), so it needs at least 2.
- **max_evals**: ``1 .. 100`` evaluations per layer (the search halves the bracket each time; 10 suffice).
- **thresholds / tolerances** are fractions in ``[0, 1]``; ``rtol`` in ``(0, 1)``.
"""
from __future__ import annotations

import math
import numbers
import os

SEED_MIN, SEED_MAX = 0, 2**31 - 1
BATCH_SIZE_MIN, BATCH_SIZE_MAX = 2, 4096
MAX_EVALS_MIN, MAX_EVALS_MAX = 1, 100
MIN_RETAIN_PAIRS = 2
PICTURE_BYTES = 64 * 64 * 3 + 64 * 64  # one MiniCanvas picture + its mask, in bytes
BYTES_PER_PICTURE = 2 * PICTURE_BYTES  # the split and a transient copy while it is read from the cache
MEMORY_FRACTION = 0.5


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (psutil, else free pages via ``os.sysconf``)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 8 * 2**30  # unknown platform: assume 8 GiB


def max_pictures() -> int:
    """The largest number of 64x64 pictures slugkit agrees to render: half the available memory / 32 KiB."""
    return max(1, int(available_memory() * MEMORY_FRACTION) // BYTES_PER_PICTURE)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_int(name: str, value, lo: int, hi: int | None = None, why: str = "") -> int:
    """``value`` as an int if it is an integer in ``[lo, hi]``; a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        span = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {span}{why}, got {value}")
    return value


def check_seed(seed, name: str = "seed") -> int:
    """A seed in ``0 .. 2**31 - 1``."""
    return check_int(name, seed, SEED_MIN, SEED_MAX)


def check_batch_size(batch_size, name: str = "batch_size") -> int:
    """A batch size in ``2 .. 4096`` (the contrastive retain loss needs two pairs per batch)."""
    return check_int(name, batch_size, BATCH_SIZE_MIN, BATCH_SIZE_MAX,
                     " (the contrastive retain loss needs at least 2 pairs per batch)")


def check_max_evals(max_evals, name: str = "max_evals") -> int:
    return check_int(name, max_evals, MAX_EVALS_MIN, MAX_EVALS_MAX)


def check_pictures(n, name: str = "n") -> int:
    """A positive number of 64x64 pictures that fits in memory (see :func:`max_pictures`)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be a positive number of pictures, got {n!r}")
    n = int(n)
    limit = max_pictures()
    if n > limit:
        raise ValueError(
            f"{name}={n} pictures would need {_gib(n * BYTES_PER_PICTURE)} of memory but at most {limit} fit "
            f"(half of the {_gib(available_memory())} available now, at 32 KiB per 64x64 picture)")
    return n


def check_fraction(name: str, value, open_interval: bool = False) -> float:
    """A finite float in ``[0, 1]`` (or ``(0, 1)`` when ``open_interval``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        raise ValueError(f"{name} must be a number in {'(0, 1)' if open_interval else '[0, 1]'}, got {value}")
    return value


def check_finite_weights(model, model_name: str | None = None) -> None:
    """Raise ValueError naming the first parameter of ``model`` that holds NaN or infinite values."""
    import torch

    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        finite = torch.isfinite(p.detach())
        if bool(finite.all()):
            continue
        n_nan = int(torch.isnan(p.detach()).sum())
        what = f"NaN values ({n_nan} of {p.numel()})" if n_nan else f"infinite values ({int((~finite).sum())} of {p.numel()})"
        of = f"model {model_name!r}" if model_name else "the model"
        raise ValueError(f"layer {name!r} of {of} holds {what}: its weights are corrupt, reload them from a good copy")


def check_retain_set(n_pairs: int, concept: str) -> None:
    """Refuse a retain set that gives the contrastive retain loss no gradient.

    The CLIP contrastive loss of a batch of one pair is 0 (the pair is its own only candidate), so
    the retain set needs at least :data:`MIN_RETAIN_PAIRS` pairs.
    """
    if n_pairs >= MIN_RETAIN_PAIRS:
        return
    raise ValueError(
        f"the retain set has {n_pairs} pair{'s' if n_pairs != 1 else ''} (pictures whose caption does not mention "
        f"{concept!r}) but the CLIP contrastive retain loss needs at least {MIN_RETAIN_PAIRS} pairs in a batch "
        f"(with one pair it is 0 and has no gradient): add captioned pictures that do not show {concept!r}")


def check_patch_path(path) -> None:
    """A ValueError in one sentence unless ``path`` is an existing file (a folder holding ``patch.safetensors``
    is named in the hint). Used before anything heavy is imported, and by :meth:`slugkit.patch.Patch.load`."""
    if os.path.isdir(path):
        inside = os.path.join(path, "patch.safetensors")
        hint = f"; did you mean {inside!r}?" if os.path.isfile(inside) else ""
        raise ValueError(f"{str(path)!r} is a folder, not a patch file: expected a .safetensors file written "
                         f"by slugkit{hint}")
    if not os.path.exists(path):
        raise ValueError(f"cannot read patch {str(path)!r}: no such file; expected a .safetensors file written by "
                         "slugkit (e.g. OUT/patch.safetensors of `slugkit unlearn --out OUT`)")

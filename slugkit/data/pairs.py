"""Image-caption pairs: the common currency of every data source in slugkit.

A data source is an :class:`ImageTextPairs`; models see it only through :func:`pair_loader`,
which turns pairs into ``(pixels, tokens)`` batches with a :class:`~slugkit.adapters.base.CLIPAdapter`.
:func:`forget_retain_sets` splits pairs into the forget set (captions naming a concept) and a
retain set without the concept; :func:`shared_retain_set` draws one retain set for every concept (SLUG's
per-model retain gradient is computed once on it).
"""
from __future__ import annotations

import functools
import operator
import random
import re
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "ImageTextPairs",
    "InMemoryPairs",
    "pair_loader",
    "mentions",
    "forget_retain_sets",
    "shared_retain_set",
    "RETAIN_PAIRS",
    "EmptyForgetSet",
]

# Default retain-set size: many times a typical forget set, and a whole number of 64-pair batches, so
# the retain gradient averages 16 equal contrastive batches (the authors draw retain pairs from a
# large shard in fixed-size batches).
RETAIN_PAIRS = 1024


class EmptyForgetSet(ValueError):
    """The pairs hold no picture of the concept: no caption mentions it."""


class ImageTextPairs(Dataset):
    """A sized, indexable collection of ``(image, caption)`` pairs.

    ``self[i]`` returns ``(image, caption)`` where ``image`` is a PIL RGB image or a uint8 numpy
    array ``(H, W, 3)``. Subclasses implement ``__len__`` and ``__getitem__`` and should override
    :meth:`captions` so that it does not decode images. ``origin`` describes where the pairs come
    from (a path, a shard pattern, ...) and is quoted in error messages.
    """

    origin: str = "<unnamed pairs>"

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def __getitem__(self, index: int) -> tuple[Any, str]:
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def captions(self) -> list[str]:
        """All captions in order. This default decodes every image; subclasses override it."""
        return [self[i][1] for i in range(len(self))]

    def subset(self, indices: Iterable[int]) -> "ImageTextPairs":
        """The pairs at ``indices`` (in that order, repeats allowed), keeping :attr:`origin`."""
        return _SubsetPairs(self, indices)

    def recaptioned(self, caption: str) -> "ImageTextPairs":
        """The same images, each paired with ``caption`` instead of its own caption."""
        return _RecaptionedPairs(self, caption)

    def _check_index(self, index: int) -> int:
        """Normalise a (possibly negative) index, raising IndexError when out of range."""
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(
                f"pair index must be an integer, got {type(index).__name__}; use .subset() to select several pairs"
            ) from None
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"pair index {index} out of range for {n} pairs from {self.origin}")
        return index % n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, origin={self.origin!r})"


class InMemoryPairs(ImageTextPairs):
    """Pairs held in memory: a list of images (PIL or uint8 ``(H, W, 3)`` arrays) and captions."""

    def __init__(self, images: Sequence[Any], captions: Sequence[str], origin: str = "in-memory pairs"):
        if len(images) != len(captions):
            raise ValueError(
                f"images and captions must have the same length, got {len(images)} images and {len(captions)} captions"
            )
        self._images = list(images)
        self._captions = [str(c) for c in captions]
        self.origin = origin

    def __len__(self) -> int:
        return len(self._captions)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        index = self._check_index(index)
        return self._images[index], self._captions[index]

    def captions(self) -> list[str]:
        return list(self._captions)


class _SubsetPairs(ImageTextPairs):
    """A view of selected pairs of another :class:`ImageTextPairs`."""

    def __init__(self, parent: ImageTextPairs, indices: Iterable[int]):
        if isinstance(indices, (torch.Tensor, np.ndarray)):
            indices = indices.tolist()
        idx = [parent._check_index(i) for i in indices]
        # Flatten subsets of subsets so chains stay one level deep.
        if isinstance(parent, _SubsetPairs):
            idx = [parent._indices[i] for i in idx]
            parent = parent._parent
        self._parent = parent
        self._indices = idx
        self.origin = parent.origin
        self._captions: list[str] | None = None

    @property
    def indices(self) -> list[int]:
        """Indices into the underlying (non-subset) pairs."""
        return list(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        return self._parent[self._indices[self._check_index(index)]]

    def captions(self) -> list[str]:
        if self._captions is None:
            all_captions = self._parent.captions()
            self._captions = [all_captions[i] for i in self._indices]
        return list(self._captions)


class _RecaptionedPairs(ImageTextPairs):
    """Another :class:`ImageTextPairs`' images, every one with the same caption."""

    def __init__(self, parent: ImageTextPairs, caption: str):
        caption = " ".join(str(caption).split())
        if not caption:
            raise ValueError("the replacement caption is empty")
        self._parent, self.caption = parent, caption
        self.origin = f"{parent.origin}, captions replaced by {caption!r}"

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        return self._parent[self._check_index(index)][0], self.caption

    def captions(self) -> list[str]:
        return [self.caption] * len(self)


# --------------------------------------------------------------------------------------------
# Loading batches


def _as_pil(image: Any, position: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = _as_uint8_array(image, position)
    pil = Image.fromarray(np.ascontiguousarray(arr))
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def _as_uint8_array(image: Any, position: int) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"pair {position} of the batch has an image of type {type(image).__name__}; "
            "expected a PIL image or a uint8 numpy array of shape (H, W, 3)"
        )
    if image.dtype != np.uint8 or not (image.ndim == 3 and image.shape[-1] == 3 or image.ndim == 2):
        raise ValueError(
            f"pair {position} of the batch has an image array of dtype {image.dtype} and shape {image.shape}; "
            "expected uint8 with shape (H, W, 3)"
        )
    return image


class _PairCollate:
    """Collate ``(image, caption)`` pairs into ``(adapter.preprocess(images), adapter.tokenize(captions))``."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, batch: list[tuple[Any, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [image for image, _ in batch]
        captions = [str(caption) for _, caption in batch]
        arrays_only = all(isinstance(im, (np.ndarray, torch.Tensor)) for im in images)
        if arrays_only:
            arrays = [_as_uint8_array(im, k) for k, im in enumerate(images)]
            if all(a.ndim == 3 for a in arrays) and len({a.shape for a in arrays}) == 1:
                pixels_in: Any = torch.from_numpy(np.stack(arrays))
            else:
                pixels_in = [_as_pil(a, k) for k, a in enumerate(arrays)]
        else:
            pixels_in = [_as_pil(im, k) for k, im in enumerate(images)]
        return self.adapter.preprocess(pixels_in), self.adapter.tokenize(captions)


def pair_loader(
    pairs: ImageTextPairs,
    adapter,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    equal_batches: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(pixels, tokens)`` batches prepared by ``adapter``.

    Images are stacked into a uint8 ``(B, H, W, 3)`` tensor when they are equally sized numpy
    arrays, and passed as a list of PIL images otherwise. Shuffling is driven by a generator
    seeded with ``seed``, so two loaders built with the same seed yield the same batches.

    ``equal_batches=True`` (used for the contrastive retain loss) makes every batch exactly
    ``min(batch_size, len(pairs))`` pairs: the last ``len(pairs) % batch_size`` pairs are dropped
    rather than forming a small batch that would weigh as much as a full one in the mean over batches.
    """
    if len(pairs) == 0:
        raise ValueError(f"cannot build a loader from no pairs: {getattr(pairs, 'origin', '<unknown origin>')} is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if equal_batches:
        batch_size = min(batch_size, len(pairs))
    return DataLoader(
        pairs,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=_PairCollate(adapter),
        generator=generator,
        drop_last=equal_batches,
    )


# --------------------------------------------------------------------------------------------
# Forget / retain split


@functools.lru_cache(maxsize=256)
def _concept_pattern(concept: str) -> re.Pattern:
    words = concept.split()
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _check_concept(concept: str) -> str:
    if not isinstance(concept, str):
        raise TypeError(f"concept must be a string, got {type(concept).__name__}")
    if not concept.strip():
        raise ValueError(f"concept must be a non-empty name, got {concept!r}")
    return concept


def mentions(caption: str, concept: str) -> bool:
    """Whether ``caption`` names ``concept`` as a whole word or phrase, ignoring case.

    ``"Zorp"`` matches ``"Zorp's ship"`` and ``"(zorp)"`` but not ``"Zorpina"``; the words of a
    multi-word concept match across any run of whitespace.
    """
    _check_concept(concept)
    return _concept_pattern(concept).search(str(caption)) is not None


def forget_retain_sets(
    pairs: ImageTextPairs,
    concept: str,
    n_retain: int | None = None,
    seed: int = 0,
    exclude_from_retain: bool = True,
) -> tuple[ImageTextPairs, ImageTextPairs]:
    """Split ``pairs`` into the forget set and a retain set for ``concept``.

    The forget set holds every pair whose caption :func:`mentions` the concept. The retain set
    is a random sample, seeded with ``seed``, of ``n_retain`` pairs (default: :data:`RETAIN_PAIRS`
    = 1024, capped by what is available) drawn from the pairs that do not mention the concept, or
    from all pairs when ``exclude_from_retain`` is False. Both keep the order of ``pairs``.
    """
    _check_concept(concept)
    origin = getattr(pairs, "origin", "<unknown origin>")
    pattern = _concept_pattern(concept)
    captions = pairs.captions()
    forget_idx = [i for i, c in enumerate(captions) if pattern.search(str(c))]
    if not forget_idx:
        raise EmptyForgetSet(f"forget set is empty: no caption in {origin} mentions '{concept}'")
    if exclude_from_retain:
        forget_set = set(forget_idx)
        pool = [i for i in range(len(captions)) if i not in forget_set]
    else:
        pool = list(range(len(captions)))
    if not pool:
        raise ValueError(
            f"retain set is empty: every caption in {origin} mentions '{concept}'; "
            "add pairs that do not mention it or pass exclude_from_retain=False"
        )
    which = f"pairs in {origin}" if not exclude_from_retain else f"pairs in {origin} that do not mention '{concept}'"
    return pairs.subset(forget_idx), pairs.subset(_sample(pool, n_retain, seed, which))


def shared_retain_set(pairs: ImageTextPairs, n_retain: int | None = None, seed: int = 0) -> ImageTextPairs:
    """One retain set for every concept: a seeded sample of ``n_retain`` of all ``pairs``, in their order.

    Default size :data:`RETAIN_PAIRS` (capped by what is available). It does not depend on any concept, so
    it may hold pictures of the concept being forgotten (as a LAION shard may); SLUG computes its retain
    gradient once per model on it and reuses it for every concept. Equal to the retain side of
    ``forget_retain_sets(pairs, concept, n_retain, seed, exclude_from_retain=False)`` for any concept.
    """
    origin = getattr(pairs, "origin", "<unknown origin>")
    if len(pairs) == 0:
        raise ValueError(f"retain set is empty: {origin} has no pairs")
    return pairs.subset(_sample(list(range(len(pairs))), n_retain, seed, f"pairs in {origin}"))


def _sample(pool: list[int], n_retain: int | None, seed: int, which: str) -> list[int]:
    """A seeded sample of ``n_retain`` of ``pool`` (default ``min(RETAIN_PAIRS, len(pool))``), sorted."""
    if n_retain is None:
        k = min(RETAIN_PAIRS, len(pool))
    else:
        if isinstance(n_retain, bool) or not isinstance(n_retain, (int, np.integer)) or n_retain < 1:
            raise ValueError(f"n_retain must be a positive integer or None, got {n_retain!r}")
        if n_retain > len(pool):
            raise ValueError(f"n_retain={n_retain} is larger than the {len(pool)} {which}")
        k = int(n_retain)
    return sorted(random.Random(seed).sample(pool, k))

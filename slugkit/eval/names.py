"""Evaluation on user data: zero-shot naming among given classes, plus image-to-caption retrieval."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.pairs import ImageTextPairs, mentions
from .zeroshot import accuracy_from_embeddings


class NameEvaluator:
    """Evaluator for user data: zero-shot naming among ``classes`` plus image-to-caption retrieval.

    ``forget_top1``/``forget_top5``: share of forget images whose top-1/top-5 name among ``classes``
    (prompt ``"a photo of {name}."``) is the concept. ``retain_top1``: naming accuracy on retain
    images whose caption mentions exactly one other class. ``utility``: image-to-text top-1 retrieval
    among the retain captions.
    """

    def __init__(self, adapter, forget: ImageTextPairs, retain: ImageTextPairs, concept: str,
                 classes: Sequence[str], template: str = "a photo of {}."):
        classes = list(dict.fromkeys([concept, *classes]))
        if len(classes) < 2:
            raise ValueError("need at least one class besides the concept to measure forgetting; "
                             "pass classes=[...] (names the model should still tell apart)")
        self.adapter, self.classes, self.template = adapter, classes, template
        self.images = [img for img, _ in forget] + [img for img, _ in retain]
        captions = retain.captions()
        labels = [0] * len(forget)
        for cap in captions:
            hits = [k for k, c in enumerate(classes[1:], start=1) if mentions(cap, c)]
            labels.append(hits[0] if len(hits) == 1 else -1)
        self.labels = np.array(labels)
        self.n_forget = len(forget)
        self.captions = captions
        self._img = self._names = self._caps = None

    def _embed(self, what: str):
        with torch.no_grad():
            if what == "images":
                pil = [Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in self.images]
                return torch.cat([self.adapter.encode_image(self.adapter.preprocess(pil[i:i + 64]))
                                  for i in range(0, len(pil), 64)])
            if what == "names":
                return self.adapter.encode_text(self.adapter.tokenize([self.template.format(c) for c in self.classes]))
            return self.adapter.encode_text(self.adapter.tokenize(self.captions))

    def cache(self) -> "NameEvaluator":
        self._img, self._names, self._caps = self._embed("images"), self._embed("names"), self._embed("captions")
        return self

    def baseline(self) -> dict[str, float]:
        """Metrics of the model :meth:`cache` saw, from the cached embeddings."""
        if self._img is None:
            self.cache()
        return self._metrics(self._img, self._names, self._caps)

    def why_unmeasured(self, metric: str) -> str | None:
        """Why ``metric`` is NaN (for the run's warnings), or None when it is measurable."""
        if metric.startswith("retain") and not (self.labels[self.n_forget:] >= 0).any():
            return (f"no retain picture's caption names exactly one of the classes {self.classes[1:]}; "
                    "pass classes the retain captions mention")
        return None

    def prepare(self, tower: str, block: int) -> None:
        """Nothing to prepare: user data sets are small, the whole tower is recomputed."""

    @torch.no_grad()
    def __call__(self, edited_tower: str | None = None, block: int | None = None) -> dict[str, float]:
        cached = self._img is not None
        img = self._img if cached and edited_tower == "text" else self._embed("images")
        names = self._names if cached and edited_tower == "vision" else self._embed("names")
        caps = self._caps if cached and edited_tower == "vision" else self._embed("captions")
        return self._metrics(img, names, caps)

    def _metrics(self, img: torch.Tensor, names: torch.Tensor, caps: torch.Tensor) -> dict[str, float]:
        forget_labels = np.where(np.arange(len(self.labels)) < self.n_forget, self.labels, -1)
        retain_labels = np.where(np.arange(len(self.labels)) >= self.n_forget, self.labels, -1)
        f = accuracy_from_embeddings(img, names, forget_labels)
        r = accuracy_from_embeddings(img, names, retain_labels) if (retain_labels >= 0).any() else {"top1": float("nan")}
        retrieval = accuracy_from_embeddings(img[self.n_forget:], caps, np.arange(len(self.captions)), k=1)
        return {"forget_top1": f["top1"], "forget_top5": f["top5"], "retain_top1": r["top1"],
                "utility": retrieval["top1"]}

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
    among the distinct retain captions (an image scores when its nearest caption is its own; captions
    that repeat word for word count once, so a duplicate of the own caption is the own caption).

    The search edits one layer at a time, so evaluations reuse what the edit cannot change:
    :meth:`cache` embeds everything with the unedited model; a text edit then reuses the image
    embeddings and a vision edit the text embeddings. After ``prepare(tower, block)`` (unedited model)
    an edit in ``block`` of ``tower`` resumes that tower from the cached activations entering ``block``.
    Each distinct text (prompt or caption) is embedded once. Images and texts go through the model in
    batches of ``batch_size``, the forget pictures in batches of their own, so :meth:`forget_metrics` (what the
    step-size search asks first at every step) runs the edited tower on the forget pictures, or the name
    prompts, alone.
    """

    def __init__(self, adapter, forget: ImageTextPairs, retain: ImageTextPairs, concept: str,
                 classes: Sequence[str], template: str = "a photo of {}.", batch_size: int = 64):
        classes = list(dict.fromkeys([concept, *classes]))
        if len(classes) < 2:
            raise ValueError("need at least one class besides the concept to measure forgetting; "
                             "pass classes=[...] (names the model should still tell apart)")
        self.adapter, self.classes, self.template, self.batch_size = adapter, classes, template, batch_size
        self.images = [img for img, _ in forget] + [img for img, _ in retain]
        captions = retain.captions()
        labels = [0] * len(forget)
        for cap in captions:
            hits = [k for k, c in enumerate(classes[1:], start=1) if mentions(cap, c)]
            labels.append(hits[0] if len(hits) == 1 else -1)
        self.labels = np.array(labels)
        self.n_forget = len(forget)
        # image batches (start, stop): the forget pictures first, in batches of their own, then the retain pictures
        self._image_ranges = [(i, min(i + batch_size, end)) for begin, end in ((0, self.n_forget),
                              (self.n_forget, len(self.images))) for i in range(begin, end, batch_size)]
        self._forget_batches = -(-self.n_forget // batch_size)
        self.captions = captions
        prompts = [template.format(c) for c in classes]
        self.texts = list(dict.fromkeys(prompts + captions))  # every distinct text, embedded once
        row = {t: i for i, t in enumerate(self.texts)}
        self._name_rows = torch.tensor([row[p] for p in prompts])  # 0..len(classes)-1: the prompts come first
        self._name_batches = -(-len(prompts) // batch_size)  # the text batches that hold every prompt
        distinct = {c: k for k, c in enumerate(dict.fromkeys(captions))}  # retain caption -> retrieval class
        self._caption_rows = torch.tensor([row[c] for c in distinct], dtype=torch.long)
        self._own_caption = np.array([distinct[c] for c in captions], dtype=np.int64)
        self._img = self._txt = None  # embeddings of the unedited model
        self._states = {"vision": (None, []), "text": (None, [])}  # tower: (block, per-batch block inputs)

    # ---- embeddings, whole towers or resumed from a prepared block

    def _pixel_batches(self, forget_only: bool = False):
        for start, stop in self._image_ranges[:self._forget_batches] if forget_only else self._image_ranges:
            batch = self.images[start:stop]
            yield self.adapter.preprocess([Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in batch])

    def _token_batches(self, names_only: bool = False):
        stop = self._name_batches * self.batch_size if names_only else len(self.texts)
        for i in range(0, stop, self.batch_size):
            yield self.adapter.tokenize(self.texts[i:i + self.batch_size])

    def _embed(self, tower: str, block: int | None = None, forget_only: bool = False) -> torch.Tensor:
        """Embeddings of every image (vision) or distinct text (text), from the states prepared for ``block``
        when there are some, else through the whole tower. ``forget_only``: the forget pictures (vision) or the
        text batches holding the name prompts (text) alone, the rows that come first."""
        prepared, states = self._states[tower]
        a = self.adapter
        if block is not None and block == prepared:
            finish = a.encode_image_from if tower == "vision" else a.encode_text_from
            if forget_only:
                states = states[:self._forget_batches if tower == "vision" else self._name_batches]
            return torch.cat([finish(s, block) for s in states])
        if tower == "vision":
            return torch.cat([a.encode_image(p) for p in self._pixel_batches(forget_only)])
        return torch.cat([a.encode_text(t) for t in self._token_batches(forget_only)])

    @torch.no_grad()
    def cache(self) -> "NameEvaluator":
        """Embed images and texts with the current (unedited) model."""
        self._img = self._embed("vision", self._states["vision"][0])
        self._txt = self._embed("text", self._states["text"][0])
        return self

    def baseline(self) -> dict[str, float]:
        """Metrics of the model :meth:`cache` saw, from the cached embeddings."""
        if self._img is None:
            self.cache()
        return self._metrics(self._img, self._txt)

    def why_unmeasured(self, metric: str) -> str | None:
        """Why ``metric`` is NaN (for the run's warnings), or None when it is measurable."""
        if metric.startswith("retain") and not (self.labels[self.n_forget:] >= 0).any():
            return (f"no retain picture's caption names exactly one of the classes {self.classes[1:]}; "
                    "pass classes the retain captions mention")
        return None

    @torch.no_grad()
    def prepare(self, tower: str, block: int) -> None:
        """Cache what enters ``block`` of ``tower`` (call on the unedited model); one block per tower is kept.

        A stem parameter (``block`` -1) or a tower the adapter cannot resume caches nothing: evaluations then
        run that tower whole. Vision states of an earlier block are run forward to ``block`` rather than
        recomputed from pixels."""
        if block < 0 or not self.adapter.supports_resume(tower) or block == self._states[tower][0]:
            return
        a = self.adapter
        prepared, states = self._states[tower]
        self._states[tower] = (None, [])  # free the old states before making new ones
        if tower == "vision" and prepared is not None and prepared <= block:
            for i, s in enumerate(states):  # batch by batch, so old and new states never coexist whole
                states[i] = a.advance_vision_state(s, prepared, block)
        else:
            states.clear()
            states = ([a.vision_state(p, block) for p in self._pixel_batches()] if tower == "vision"
                      else [a.text_state(t, block) for t in self._token_batches()])
        self._states[tower] = (block, states)

    @torch.no_grad()
    def __call__(self, edited_tower: str | None = None, block: int | None = None) -> dict[str, float]:
        if edited_tower not in (None, "vision", "text"):
            raise ValueError(f"edited_tower must be None, 'vision' or 'text', got {edited_tower!r}")
        cached = self._img is not None
        img = self._img if cached and edited_tower == "text" else \
            self._embed("vision", block if edited_tower == "vision" else None)
        txt = self._txt if cached and edited_tower == "vision" else \
            self._embed("text", block if edited_tower == "text" else None)
        return self._metrics(img, txt)

    @torch.no_grad()
    def forget_metrics(self, edited_tower: str | None = None, block: int | None = None) -> dict[str, float]:
        """``forget_top1`` and ``forget_top5`` alone, as a full call gives them, from the forget pictures and the
        name prompts only: the step-size search asks this first and makes a full call only where the forget
        target is reached (a vision evaluation then runs a fraction of the pictures through the edited tower)."""
        if edited_tower not in (None, "vision", "text"):
            raise ValueError(f"edited_tower must be None, 'vision' or 'text', got {edited_tower!r}")
        cached = self._img is not None
        img = self._img[:self.n_forget] if cached and edited_tower == "text" else \
            self._embed("vision", block if edited_tower == "vision" else None, forget_only=True)
        txt = self._txt if cached and edited_tower == "vision" else \
            self._embed("text", block if edited_tower == "text" else None, forget_only=True)
        f = accuracy_from_embeddings(img, txt[self._name_rows], self.labels[:self.n_forget])
        return {"forget_top1": f["top1"], "forget_top5": f["top5"]}

    def _metrics(self, img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
        """Metrics from image embeddings ``(N, D)`` (forget then retain) and distinct-text embeddings ``(T, D)``."""
        names, caps = txt[self._name_rows], txt[self._caption_rows]
        forget_labels = np.where(np.arange(len(self.labels)) < self.n_forget, self.labels, -1)
        retain_labels = np.where(np.arange(len(self.labels)) >= self.n_forget, self.labels, -1)
        f = accuracy_from_embeddings(img, names, forget_labels)
        r = accuracy_from_embeddings(img, names, retain_labels) if (retain_labels >= 0).any() else {"top1": float("nan")}
        retrieval = accuracy_from_embeddings(img[self.n_forget:], caps, self._own_caption, k=1)
        return {"forget_top1": f["top1"], "forget_top5": f["top5"], "retain_top1": r["top1"],
                "utility": retrieval["top1"]}

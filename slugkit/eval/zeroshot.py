"""Zero-shot classification of MiniCanvas attributes: identity, object, style, colour.

Accuracies are fractions in [0, 1]. Embeddings are computed once and can be passed back in, which is
what the step-size search uses to avoid recomputing the tower an edit does not touch.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .. import distributed
from ..data.minicanvas import ATTRIBUTES, MiniCanvas, cached_split, zero_shot_prompts


@torch.no_grad()
def embed_images(adapter, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Normalised image embeddings ``(N, D)`` of uint8 images ``(N, H, W, 3)``."""
    out = [adapter.encode_image(adapter.preprocess(torch.tensor(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def embed_prompts(adapter, attributes: Iterable[str] = ATTRIBUTES) -> dict[str, torch.Tensor]:
    """Normalised text embeddings ``(C, D)`` of the zero-shot prompts of each attribute."""
    return {a: adapter.encode_text(adapter.tokenize(zero_shot_prompts(a))) for a in attributes}


def accuracy_from_embeddings(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: np.ndarray,
                             k: int = 5) -> dict:
    """Top-1 / top-k accuracy and per-class top-1 of images with label >= 0.

    Returns ``{"top1", "top5", "per_class": ndarray (C,), "predictions": ndarray (N,)}``; images whose
    label is -1 are ignored.
    """
    labels = np.asarray(labels)
    keep = labels >= 0
    sims = image_emb[torch.from_numpy(keep)] @ class_emb.T
    y = torch.from_numpy(labels[keep])
    topk = sims.topk(min(k, sims.shape[1]), dim=1).indices
    pred = topk[:, 0]
    correct1 = (pred == y).numpy()
    correctk = (topk == y[:, None]).any(1).numpy()
    n_classes = class_emb.shape[0]
    per_class = np.array([correct1[y.numpy() == c].mean() if (y.numpy() == c).any() else np.nan
                          for c in range(n_classes)])
    return {"top1": float(correct1.mean()), "top5": float(correctk.mean()), "per_class": per_class,
            "predictions": pred.numpy(), "correct_top5": correctk, "labels": y.numpy()}


def hit_counts(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: np.ndarray, k: int = 5) -> tuple[int, int, int]:
    """``(top-1 hits, top-k hits, images)`` among the images with label >= 0: the counts behind
    :func:`accuracy_from_embeddings`' ``top1`` and ``top5`` (hits / images), which add up across shards."""
    keep = np.asarray(labels) >= 0
    if not keep.any():
        return 0, 0, 0
    y = torch.from_numpy(np.asarray(labels)[keep])
    topk = (image_emb[torch.from_numpy(keep)] @ class_emb.T).topk(min(k, class_emb.shape[0]), dim=1).indices
    return int((topk[:, 0] == y).sum()), int((topk == y[:, None]).any(1).sum()), int(keep.sum())


def zero_shot(adapter, world: MiniCanvas, attributes: Iterable[str] = ATTRIBUTES,
              image_emb: torch.Tensor | None = None,
              prompt_emb: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
    """Zero-shot accuracy of every attribute on ``world``.

    Returns ``{attribute: {"top1", "top5", "per_concept": {name: top1}, "confusion": (C, C) counts}}``.
    """
    attributes = list(attributes)
    if image_emb is None:
        image_emb = embed_images(adapter, world.images)
    if prompt_emb is None:
        prompt_emb = embed_prompts(adapter, attributes)
    out = {}
    for a in attributes:
        names = ATTRIBUTES[a]
        acc = accuracy_from_embeddings(image_emb, prompt_emb[a], world.labels(a))
        confusion = np.zeros((len(names), len(names)), np.int64)
        np.add.at(confusion, (acc["labels"], acc["predictions"]), 1)
        out[a] = {"top1": acc["top1"], "top5": acc["top5"],
                  "per_concept": {n: float(v) for n, v in zip(names, acc["per_class"])},
                  "confusion": confusion}
    return out


class ConceptEvaluator:
    """Forget / retain / utility accuracy of one MiniCanvas concept, as the step-size search needs.

    For a concept of attribute ``a`` (e.g. the character "Mira Quell", attribute identity):
    ``forget_top1``/``forget_top5`` = zero-shot accuracy of ``a`` on images of the concept;
    ``retain_top1`` = accuracy of ``a`` on images of the other classes of ``a``;
    ``utility`` = mean top-1 of the other attributes; plus ``{attribute}_top1`` for every attribute.

    Call :meth:`cache` on the unedited model; afterwards ``evaluator(edited_tower="text")`` reuses the
    image embeddings and ``evaluator(edited_tower="vision")`` the prompt embeddings. With
    ``prepare("vision", b)`` (unedited model) ``evaluator("vision", b)`` also reuses the activations
    entering vision block ``b`` and recomputes only the blocks from ``b`` on.

    Under a process group (:mod:`slugkit.distributed`) each process embeds every N-th picture and the
    hit counts are added across processes, so every process gets the metrics of the whole set.
    """

    embeddings_in_store = True  # cache() takes a store (see slugkit.slug.cache_embeddings)

    def __init__(self, adapter, world: MiniCanvas, concept: str):
        from ..data.minicanvas import find_concept

        self.adapter, self.world = adapter, world
        found = find_concept(concept)
        self.concept, self.attribute = found["name"], found["attribute"]
        self.index = ATTRIBUTES[self.attribute].index(self.concept)
        self.indices = [self.index]  # forgotten classes of ``attribute`` (several in :class:`ConceptSetEvaluator`)
        labels = world.labels(self.attribute)
        if not (labels == self.index).any():
            raise ValueError(f"the evaluation set has no image of {self.concept!r}; use a larger split")
        self._image_emb: torch.Tensor | None = None
        self._prompt_emb: dict[str, torch.Tensor] | None = None
        self._block: int | None = None  # vision block whose input activations are cached
        self._states: list[torch.Tensor] = []
        self._mine = distributed.shard(len(world))  # this process's pictures (all of them in one process)
        self._forget_states: list[torch.Tensor] = []  # the same, for the forgotten class(es)' pictures alone
        self._text_block: int | None = None  # text block whose input is cached for the attribute's prompts
        self._text_state = None

    def _embed_images(self) -> torch.Tensor:
        """Image embeddings with the current model, resumed from the prepared block when there is one."""
        if self._block is None:
            return embed_images(self.adapter, self.world.images[self._mine])
        return torch.cat([self.adapter.encode_image_from(s, self._block) for s in self._states])

    @torch.no_grad()
    def cache(self, store=None) -> "ConceptEvaluator":
        """Embed images and prompts with the current (unedited) model (from prepared activations if any).

        With a ``store`` (:class:`~slugkit.gradients.GradientStore`) the embeddings are read from it when a run
        before stored them for the same model weights, adapter, pictures and prompts, and stored there
        otherwise: they do not depend on the concept, so one computation serves every concept's report."""
        key = store and self._embedding_key(store)
        stored = store.get_tensors(key) if key else None
        if stored is not None and stored.keys() == {"image", *(f"prompt/{a}" for a in ATTRIBUTES)}:
            self._image_emb = stored["image"]
            self._prompt_emb = {a: stored[f"prompt/{a}"] for a in ATTRIBUTES}
            return self
        self._image_emb = self._embed_images()
        self._prompt_emb = embed_prompts(self.adapter)
        if key:
            store.put_tensors(key, {"image": self._image_emb} | {f"prompt/{a}": e for a, e in self._prompt_emb.items()})
        return self

    def _embedding_key(self, store) -> str:
        """``store``'s key of what the unedited model's embeddings depend on: its weights, the adapter, this
        process's pictures and the prompts."""
        import hashlib

        from ..fingerprint import model_fingerprint

        images = np.ascontiguousarray(self.world.images[self._mine])
        return store.tensors_key("concept-evaluator-embeddings", model_fingerprint(self.adapter.model),
                                 type(self.adapter).__name__, self.adapter.name,
                                 hashlib.sha256(images.data).hexdigest(), list(images.shape),
                                 {a: zero_shot_prompts(a) for a in ATTRIBUTES})

    def baseline(self) -> dict[str, float]:
        """Metrics of the model :meth:`cache` saw, from the cached embeddings."""
        if self._image_emb is None:
            self.cache()
        return self._all_metrics(self._image_emb, self._prompt_emb)

    @torch.no_grad()
    def prepare(self, tower: str, block: int, batch_size: int = 512) -> None:
        """Cache what enters ``block`` of ``tower`` (vision only; call on the unedited model).

        ``block`` -1 (a stem parameter such as the patch embedding) caches nothing: an edit there changes
        every block's input, so evaluations recompute the vision tower from pixels."""
        if tower == "vision" and self.adapter.supports_vision_resume and 0 <= block and block != self._block:
            images = self.world.images[self._mine]
            self._states = [self.adapter.vision_state(self.adapter.preprocess(torch.tensor(images[i:i + batch_size])), block)
                            for i in range(0, len(images), batch_size)]
            shown = images[self._forget_index()]
            self._forget_states = [self.adapter.vision_state(self.adapter.preprocess(torch.tensor(shown[i:i + batch_size])),
                                                             block) for i in range(0, len(shown), batch_size)]
            self._block = block

    def _forget_index(self) -> np.ndarray:
        """Positions, within this process's pictures, of the pictures of the forgotten class(es)."""
        return np.flatnonzero(np.isin(self.world.labels(self.attribute)[self._mine], self.indices))

    @torch.no_grad()
    def forget_metrics(self, edited_tower: str | None = None, block: int | None = None) -> dict[str, float]:
        """``forget_top1`` and ``forget_top5`` alone, from the forgotten pictures only (a fraction of a full
        call's work): the step-size search asks this first and measures the rest only where it reached the target."""
        pos, a = self._forget_index(), self.attribute
        if self._image_emb is not None and edited_tower == "text":
            image_emb = self._image_emb[torch.from_numpy(pos)]
        elif edited_tower == "vision" and block is not None and block == self._block:
            image_emb = torch.cat([self.adapter.encode_image_from(s, block) for s in self._forget_states])
        else:
            image_emb = embed_images(self.adapter, self.world.images[self._mine][pos])
        reuse = self._prompt_emb is not None and edited_tower == "vision"
        prompts = self._prompt_emb[a] if reuse else embed_prompts(self.adapter, [a])[a]
        labels = self.world.labels(a)[self._mine][pos]
        f1, f5, n = distributed.sum_counts({"forget": hit_counts(image_emb, prompts, labels)})["forget"]
        return {"forget_top1": f1 / n if n else float("nan"), "forget_top5": f5 / n if n else float("nan")}

    def batches(self, name: str, edited_tower: str | None, block: int | None) -> bool:
        """Whether :meth:`forget_metrics_many` can measure edits of parameter ``name``, in ``block`` of
        ``edited_tower``: the adapter runs a block with several weights at once, ``name`` is in that block, and
        :meth:`cache` has run (and, for a vision edit, :meth:`prepare` (``"vision"``, ``block``))."""
        if edited_tower not in ("vision", "text") or block is None or block < 0 \
                or not self.adapter.supports_variants(edited_tower, name):
            return False
        if edited_tower == "text" and self._image_emb is None:
            return False
        if edited_tower == "vision" and not (self._prompt_emb is not None and block == self._block):
            return False
        param = self.adapter.parameter(name)
        return any(p is param for p in self.adapter.blocks(edited_tower)[block].parameters())

    @torch.no_grad()
    def forget_metrics_many(self, name: str, weights: torch.Tensor, edited_tower: str,
                            block: int) -> list[dict[str, float]]:
        """:meth:`forget_metrics` for each of K values ``weights`` ``(K, *shape)`` of parameter ``name`` (in ``block``
        of ``edited_tower``), in one batched pass (the step-size search's doubling phase; see :meth:`batches`):
        the edited block runs once with the K weights side by side (the adapter's ``advance_variants``), the rest
        of the tower once on K times the batch. A text edit re-embeds the attribute's prompts K times against the
        cached pictures (what enters ``block`` for the prompts is computed at the first call for that block and
        kept: blocks before the edited one must stay unedited meanwhile, as :meth:`prepare` asks for the vision
        tower), a vision edit the forgotten pictures from the prepared block input against the cached prompts. The
        parameter's own value is not read (the weights given replace it)."""
        if not self.batches(name, edited_tower, block):
            raise ValueError(f"cannot measure several weights of {name!r} at once: it must be a parameter of "
                             f"{edited_tower} block {block}, after cache() and prepare({edited_tower!r}, {block})")
        pos, a, k = self._forget_index(), self.attribute, len(weights)
        labels = self.world.labels(a)[self._mine][pos]
        if edited_tower == "text":
            if self._text_block != block:
                tokens = self.adapter.tokenize(zero_shot_prompts(a))
                self._text_state, self._text_block = self.adapter.text_state(tokens, block), block
            prompts = self.adapter.encode_text_from(
                self.adapter.advance_variants("text", self._text_state, block, name, weights), block + 1)
            image_emb = self._image_emb[torch.from_numpy(pos)]
            counts = {str(i): hit_counts(image_emb, p, labels) for i, p in enumerate(prompts.chunk(k))}
        else:
            parts = [self.adapter.encode_image_from(self.adapter.advance_variants("vision", s, block, name, weights),
                                                    block + 1).unflatten(0, (k, -1)) for s in self._forget_states]
            emb = torch.cat(parts, 1) if parts else torch.empty(k, 0, self._prompt_emb[a].shape[1])
            counts = {str(i): hit_counts(e, self._prompt_emb[a], labels) for i, e in enumerate(emb)}
        summed = distributed.sum_counts(counts)
        return [{"forget_top1": f1 / n if n else float("nan"), "forget_top5": f5 / n if n else float("nan")}
                for f1, f5, n in (summed[str(i)] for i in range(k))]

    @torch.no_grad()
    def __call__(self, edited_tower: str | None = None, block: int | None = None) -> dict[str, float]:
        if edited_tower not in (None, "vision", "text"):
            raise ValueError(f"edited_tower must be None, 'vision' or 'text', got {edited_tower!r}")
        reuse = self._image_emb is not None
        if reuse and edited_tower == "text":
            image_emb = self._image_emb
        elif edited_tower == "vision" and block == self._block:
            image_emb = self._embed_images()
        else:
            image_emb = embed_images(self.adapter, self.world.images[self._mine])
        prompt_emb = self._prompt_emb if reuse and edited_tower == "vision" else embed_prompts(self.adapter)
        return self._all_metrics(image_emb, prompt_emb)

    def metrics(self, image_emb: torch.Tensor, prompt_emb: dict[str, torch.Tensor]) -> dict[str, float]:
        """The metrics of the whole evaluation set from its image embeddings ``(len(world), D)``."""
        return self._ratios(self._counts(image_emb, prompt_emb, slice(None)))

    def _all_metrics(self, image_emb: torch.Tensor, prompt_emb: dict[str, torch.Tensor]) -> dict[str, float]:
        """The metrics of the whole set from this process's share of the image embeddings (counts summed)."""
        return self._ratios(distributed.sum_counts(self._counts(image_emb, prompt_emb, self._mine)))

    def _counts(self, image_emb, prompt_emb, part: slice) -> dict[str, tuple[int, int, int]]:
        """``{name: (top-1 hits, top-5 hits, images)}`` of the pictures ``world[part]`` embedded in ``image_emb``."""
        out = {}
        for a in ATTRIBUTES:
            labels = self.world.labels(a)[part]
            if a != self.attribute:
                out[a] = hit_counts(image_emb, prompt_emb[a], labels)
                continue
            shows = np.isin(labels, self.indices)  # the forgotten class(es)
            out["forget"] = hit_counts(image_emb, prompt_emb[a], np.where(shows, labels, -1))
            out["retain"] = hit_counts(image_emb, prompt_emb[a], np.where((labels >= 0) & ~shows, labels, -1))
            out[a] = hit_counts(image_emb, prompt_emb[a], labels)
        return out

    def _ratios(self, counts: dict[str, tuple[int, int, int]]) -> dict[str, float]:
        def ratio(hits, n):
            return hits / n if n else float("nan")

        (f1, f5, nf), (r1, r5, nr) = counts["forget"], counts["retain"]
        out = {"forget_top1": ratio(f1, nf), "forget_top5": ratio(f5, nf), "retain_top1": ratio(r1, nr),
               "retain_top5": ratio(r5, nr)}
        out |= {f"{a}_top1": ratio(counts[a][0], counts[a][2]) for a in ATTRIBUTES}
        out["utility"] = float(np.mean([out[f"{a}_top1"] for a in ATTRIBUTES if a != self.attribute]))
        return out


@torch.no_grad()
def predict(adapter, images: np.ndarray | torch.Tensor, attribute: str = "identity") -> list[str]:
    """The top-1 zero-shot class name of ``attribute`` for each uint8 image ``(N, H, W, 3)``."""
    sims = embed_images(adapter, images) @ embed_prompts(adapter, [attribute])[attribute].T
    return [ATTRIBUTES[attribute][j] for j in sims.argmax(1).tolist()]


def toy_eval(adapter, n_test: int = 2000, seed: int = 0) -> dict:
    """``{attribute: {"top1", "top5", "per_concept"}}`` on the MiniCanvas test split (the eval contract)."""
    from ..bounds import check_pictures, check_seed

    n_test, seed = check_pictures(n_test, "n_test"), check_seed(seed)
    scores = zero_shot(adapter, cached_split(n_test, seed, "test"))
    return {a: {k: v for k, v in s.items() if k != "confusion"} for a, s in scores.items()}

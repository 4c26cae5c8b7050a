"""An unlearning task: what to forget, what to retain, and how to measure both.

:func:`toy_task` builds one from a MiniCanvas concept name; :func:`data_task` from user data (an image
folder, a CSV or webdataset shards) and a list of class names to tell the concept apart from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

from .data.minicanvas import cached_split, find_concept
from .data.pairs import ImageTextPairs, forget_retain_sets, shared_retain_set
from .eval.names import NameEvaluator
from .eval.zeroshot import ConceptEvaluator


class Evaluator(Protocol):
    """Measures the current model. ``cache()`` embeds with the unedited model; a call with
    ``edited_tower="text"`` (or ``"vision"``) may reuse the other tower's cached embeddings, and
    after ``prepare(tower, block)`` on the unedited model, activations upstream of ``block``.

    An evaluator that caches nothing can subclass this and define only ``__call__``: the defaults
    cache nothing, prepare nothing and measure the baseline with a plain call. An evaluator may also define
    ``forget_metrics(edited_tower, block)``, the forget metrics alone (cheaper): the search then asks it
    first and makes a full call only where the forget target is reached."""

    def cache(self) -> "Evaluator":
        return self

    def baseline(self) -> dict[str, float]:
        return self()

    def prepare(self, tower: str, block: int) -> None:
        return None

    def __call__(self, edited_tower: str | None = None, block: int | None = None) -> dict[str, float]: ...


@dataclass
class Task:
    """Forget/retain pairs for the gradients, an evaluator for the search and one for the report.

    ``retain`` holds no pair naming the concept (what the baselines fine-tune on, and SLUG's retain set with
    ``retain="per-concept"``). ``shared_retain`` is the same source's concept-independent retain set
    (:func:`~slugkit.data.pairs.shared_retain_set`): SLUG's default, whose gradient is computed once per model
    and reused for every concept; ``None`` for a task built without one (SLUG then uses ``retain``).
    """

    concept: str
    forget: ImageTextPairs
    retain: ImageTextPairs
    search_evaluator: Evaluator
    report_evaluator: Evaluator
    description: str = ""
    shared_retain: ImageTextPairs | None = None

    def with_forget_caption(self, caption: str) -> "Task":
        """The same task with every forget picture paired with ``caption`` (e.g. the bare concept name,
        as the authors' UnlearnCanvas gradients pair each forget picture); retain pairs and evaluators unchanged."""
        forget = self.forget.recaptioned(caption)
        return replace(self, forget=forget, description=f"{self.description}; forget captions replaced by "
                                                          f"{forget.caption!r}")


VAL_POOL = 2000  # val pictures a toy task searches among: every picture of the concept, then ``n_val`` others


def toy_splits(seed: int = 0, n_train: int = 2000, n_test: int = 2000) -> list[tuple[int, int, str]]:
    """The MiniCanvas splits ``(n, seed, split)`` :func:`toy_task` draws (``cached_split`` arguments): train, val, test."""
    return [(n_train, seed, "train"), (VAL_POOL, seed, "val"), (n_test, seed, "test")]


def toy_task(adapter, concept: str, seed: int = 0, n_train: int = 2000, n_val: int = 500,
             n_test: int = 2000, n_retain: int | None = None) -> Task:
    """A MiniCanvas task: forget pairs are the training pairs whose caption names ``concept``.

    The retain pairs are a seeded random sample of ``n_retain`` (default 1024 =
    :data:`~slugkit.data.pairs.RETAIN_PAIRS`) training pairs that do not name it, so every other
    concept is represented; the shared retain pairs the same number drawn from all training pairs, the
    same for every concept. :func:`slugkit.slug.unlearn` batches them in equal contrastive batches.

    The step size is searched on the ``val`` split — every picture of the concept among 2000 val
    samples plus the first ``n_val`` others, so the forget metric rests on as many pictures as the
    report's — and the report is measured on the ``test`` split, which the search never saw.
    """
    name = find_concept(concept)["name"]
    train, val_pool, test = (cached_split(*split) for split in toy_splits(seed, n_train, n_test))
    forget, retain = forget_retain_sets(train, name, n_retain=n_retain, seed=seed)
    shows = np.zeros(len(val_pool), bool)
    shows[val_pool.indices_of(name)] = True
    val = val_pool.take(np.sort(np.r_[np.flatnonzero(shows), np.flatnonzero(~shows)[:n_val]]))
    return Task(name, forget, retain, ConceptEvaluator(adapter, val, name), ConceptEvaluator(adapter, test, name),
                description=f"MiniCanvas seed {seed}: {len(forget)} forget / {len(retain)} retain pairs, "
                            f"search on {len(val)} val images, report on {n_test} test images",
                shared_retain=shared_retain_set(train, n_retain, seed))


def data_task(adapter, concept: str, data: str | ImageTextPairs, classes: Sequence[str],
              n_retain: int | None = None, seed: int = 0) -> Task:
    """A task from user data: forget pairs are those whose caption mentions ``concept``.

    Retain pairs: a seeded sample of ``n_retain`` pairs that do not mention it (default: up to 1024, as
    many as exist); shared retain pairs: as many drawn from all pairs, the same for every concept.
    :func:`slugkit.slug.unlearn` batches them in equal contrastive batches.
    """
    from .data.sources import open_pairs

    pairs = data if isinstance(data, ImageTextPairs) else open_pairs(data)
    forget, retain = forget_retain_sets(pairs, concept, n_retain=n_retain, seed=seed)
    evaluator = NameEvaluator(adapter, forget, retain, concept, classes)
    return Task(concept, forget, retain, evaluator, evaluator,
                description=f"{pairs.origin}: {len(forget)} forget / {len(retain)} retain pairs "
                            "(search and report on the same pairs)",
                shared_retain=shared_retain_set(pairs, n_retain, seed))

"""The evaluation every unlearning method shares: accuracy, MIA, UnlearnCanvas metrics and cost.

One function measures an edited model the same way whoever edited it (SLUG, a baseline, a composed
patch): :func:`evaluate_unlearning`. Its pieces are usable alone:

* :class:`ConceptSetEvaluator` - forget / retain / utility accuracy of one or several concepts of one
  attribute (a drop-in :class:`~slugkit.eval.zeroshot.ConceptEvaluator` for several concepts).
* :func:`mia` - membership-inference attack as in the SLUG paper: logistic regression on the image-text
  cosine, forget (training) pictures vs unseen pictures of the same concept, cross-validated.
* :func:`unlearncanvas_metrics` - UA / IRA / CRA of UnlearnCanvas for style, object (and colour) concepts.
* :class:`CostMeter` - wall time, peak memory, forward/backward passes of an unlearning procedure, and
  :func:`changed_bytes` - how many bytes of the model it changed.

All accuracies are fractions in [0, 1].

Example::

    report = evaluate_unlearning(adapter, ["Captain Zorp"])
    report["forget_top5"], report["mia"], report["mia_std"]
"""
from __future__ import annotations

import ctypes
import gc
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..data.minicanvas import ATTRIBUTES, MiniCanvas, cached_split, find_concept, zero_shot_prompts
from .zeroshot import ConceptEvaluator, accuracy_from_embeddings, embed_images, embed_prompts, hit_counts

#: the attributes of UnlearnCanvas-like pictures (objects drawn in a style and a colour)
CANVAS_ATTRIBUTES = ("object", "style", "colour")


# ----------------------------------------------------------------------------------------------------
# Forget / retain / utility for one or several concepts
# ----------------------------------------------------------------------------------------------------
def resolve_concepts(concepts: str | Sequence[str]) -> tuple[list[str], str]:
    """Canonical names of ``concepts`` (one name or a list) and their shared attribute."""
    names = [concepts] if isinstance(concepts, str) else list(concepts)
    if not names:
        raise ValueError("expected at least one concept name")
    found = [find_concept(n) for n in names]
    attributes = {f["attribute"] for f in found}
    if len(attributes) != 1:
        raise ValueError(f"concepts to forget together must share one attribute, got {sorted(attributes)} "
                         f"for {names}")
    return [f["name"] for f in found], attributes.pop()


def concept_label(concepts: str | Sequence[str]) -> str:
    """One readable name for one or several concepts: ``"A + B + C"``."""
    return concepts if isinstance(concepts, str) else " + ".join(concepts)


class ConceptSetEvaluator(ConceptEvaluator):
    """:class:`ConceptEvaluator` for a set of concepts of one attribute (e.g. three characters).

    ``forget_top1/top5``: accuracy of the attribute on pictures of any of the concepts (top-5 is 0 only
    when every concept is out of the top 5 on every picture); ``retain_top1/top5``: on pictures of the
    attribute's other classes; ``utility``: mean top-1 of the other attributes. With one concept the
    numbers equal :class:`ConceptEvaluator`'s.
    """

    def __init__(self, adapter, world: MiniCanvas, concepts: str | Sequence[str]):
        names, _ = resolve_concepts(concepts)
        super().__init__(adapter, world, names[0])
        self.concepts = names
        self.indices = [ATTRIBUTES[self.attribute].index(n) for n in names]
        labels = world.labels(self.attribute)
        missing = [n for n, i in zip(names, self.indices) if not (labels == i).any()]
        if missing:
            raise ValueError(f"the evaluation set has no image of {missing}; use a larger split")

    def _counts(self, image_emb, prompt_emb, part) -> dict[str, tuple[int, int, int]]:
        """The :class:`ConceptEvaluator` counts, plus ``forget[NAME]`` on each concept's own pictures (several)."""
        out = super()._counts(image_emb, prompt_emb, part)
        if len(self.concepts) > 1:
            labels = self.world.labels(self.attribute)[part]
            for name, i in zip(self.concepts, self.indices):
                out[f"forget[{name}]"] = hit_counts(image_emb, prompt_emb[self.attribute],
                                                    np.where(labels == i, labels, -1))
        return out

    def _ratios(self, counts: dict[str, tuple[int, int, int]]) -> dict[str, float]:
        """The set's metrics, plus ``forget_top1[NAME]`` / ``forget_top5[NAME]`` when there are several concepts."""
        out = super()._ratios(counts)
        for name in self.concepts if len(self.concepts) > 1 else ():
            top1, top5, n = counts[f"forget[{name}]"]
            out[f"forget_top1[{name}]"] = top1 / n if n else float("nan")
            out[f"forget_top5[{name}]"] = top5 / n if n else float("nan")
        return out


# ----------------------------------------------------------------------------------------------------
# UnlearnCanvas: UA, IRA, CRA
# ----------------------------------------------------------------------------------------------------
def unlearncanvas_metrics(labels: dict[str, np.ndarray], predictions: dict[str, np.ndarray], attribute: str,
                          forgotten: int | Sequence[int]) -> dict[str, float]:
    """UnlearnCanvas' three accuracies from top-1 predictions.

    ``labels[a]`` / ``predictions[a]`` are class indices ``(N,)`` for each attribute ``a`` (label -1
    where ``a`` does not apply); ``attribute`` is the forgotten concept's attribute, ``forgotten`` its
    class index (or indices).

    * UA (unlearning accuracy): share of pictures of the forgotten concept NOT predicted as it.
    * IRA (in-domain retain accuracy): top-1 accuracy of ``attribute`` on pictures of its other classes.
    * CRA (cross-domain retain accuracy): top-1 accuracy of the other attributes present in ``labels``,
      on the pictures that do not show the forgotten concept, averaged over those attributes.
    """
    if attribute not in labels or attribute not in predictions:
        raise ValueError(f"labels and predictions must both hold the forgotten attribute {attribute!r}")
    forgotten = np.atleast_1d(np.asarray(forgotten))
    y, p = np.asarray(labels[attribute]), np.asarray(predictions[attribute])
    shows = np.isin(y, forgotten)
    if not shows.any():
        raise ValueError(f"no picture shows the forgotten class(es) {forgotten.tolist()} of {attribute!r}")
    others = (y >= 0) & ~shows
    ua = float((~np.isin(p[shows], forgotten)).mean())
    ira = float((p[others] == y[others]).mean()) if others.any() else float("nan")
    cross = []
    for b in labels:
        if b == attribute:
            continue
        yb, pb = np.asarray(labels[b]), np.asarray(predictions[b])
        keep = (yb >= 0) & ~shows
        if keep.any():
            cross.append(float((pb[keep] == yb[keep]).mean()))
    cra = float(np.mean(cross)) if cross else float("nan")
    return {"ua": ua, "ira": ira, "cra": cra}


# ----------------------------------------------------------------------------------------------------
# Membership inference
# ----------------------------------------------------------------------------------------------------
@dataclass
class MIAResult:
    """Cross-validated accuracy of the attack: ``mean`` +- ``std`` over ``seeds``, ``per_seed`` values.

    0.5 = the attack cannot tell the forget pictures from unseen ones (what a model that never saw them
    gives); 1.0 = it always can.
    """

    mean: float
    std: float
    per_seed: list[float]
    n_per_class: int


def mia(forget_scores: np.ndarray, unseen_scores: np.ndarray, seeds: Sequence[int] = (0, 1, 2, 3, 4),
        folds: int = 5) -> MIAResult:
    """Logistic-regression membership attack on 1-D scores (image-text cosines).

    For each seed: draw equally many forget and unseen scores (the smaller count), then the mean
    accuracy of a logistic regression over ``folds`` stratified, shuffled folds. Returns the mean and
    standard deviation of that accuracy over ``seeds``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = np.asarray(forget_scores, np.float64).ravel()
    b = np.asarray(unseen_scores, np.float64).ravel()
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"MIA needs at least {folds} forget and {folds} unseen scores, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("MIA scores must be finite")
    accs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x = np.r_[rng.choice(a, n, replace=False), rng.choice(b, n, replace=False)][:, None]
        y = np.r_[np.ones(n), np.zeros(n)]
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_accs = [make_pipeline(StandardScaler(), LogisticRegression()).fit(x[tr], y[tr]).score(x[te], y[te])
                     for tr, te in cv.split(x, y)]
        accs.append(float(np.mean(fold_accs)))
    return MIAResult(float(np.mean(accs)), float(np.std(accs)), accs, n)


@torch.no_grad()
def concept_cosines(adapter, images: np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """Cosine between each uint8 picture ``(N, H, W, 3)`` and its concept's zero-shot prompt; ``(N,)``.

    ``concepts[i]`` names the concept picture ``i`` shows.
    """
    names = sorted(set(concepts))
    attribute = find_concept(names[0])["attribute"]
    prompts = dict(zip(ATTRIBUTES[attribute], zero_shot_prompts(attribute)))
    text = adapter.encode_text(adapter.tokenize([prompts[n] for n in names]))
    rows = torch.tensor([names.index(c) for c in concepts])
    return (embed_images(adapter, images) * text[rows]).sum(1).numpy()


def mia_pictures(concepts: str | Sequence[str], n: int = 200, seed: int = 0, n_train: int = 24_000
                 ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Training ("forget") and unseen pictures of each concept for the MIA of a toy model.

    ``forget``: the first ``n`` pictures of each concept in the toy CLIP's own training world
    (``MiniCanvas(n_train, seed, "train")``, the data the shipped checkpoint was trained on; only those
    pictures are rendered). ``unseen``: the first ``n`` of each concept in a world of the same size
    drawn for the test split, which no training or search used. Returns ``{"forget": (images, names),
    "unseen": (images, names)}``.
    """
    names, _ = resolve_concepts(concepts)
    out = {}
    for role, split in (("forget", "train"), ("unseen", "test")):
        world = MiniCanvas(n=n_train, seed=seed, split=split, _render=False)
        idx = np.concatenate([world.indices_of(c)[:n] for c in names])
        labels = [find_concept(c)["name"] for c in names for _ in world.indices_of(c)[:n]]
        out[role] = (np.stack([world.render(int(i))[0] for i in idx]), labels)
    return out


def toy_training_world() -> tuple[int, int]:
    """``(n_train, seed)`` of the world the shipped toy CLIP was trained on (from its checkpoint)."""
    from ..models.toy_clip import TrainConfig, checkpoint_metadata

    recipe = checkpoint_metadata().get("recipe", {})
    return int(recipe.get("n_train", TrainConfig.n_train)), int(recipe.get("seed", TrainConfig.seed))


# ----------------------------------------------------------------------------------------------------
# The one evaluation
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_unlearning(adapter, concepts: str | Sequence[str], world: MiniCanvas | None = None,
                        pictures: dict | None = None, mia_seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> dict:
    """Every metric of the bench for the model as it is now.

    ``world``: labelled pictures for the accuracies (default: the 2000-picture test split, the same
    report split as :func:`slugkit.tasks.toy_task`). ``pictures``: :func:`mia_pictures` output (computed
    when missing; pass it to reuse across methods). Returns ``forget_top1``, ``forget_top5``,
    ``retain`` (top-1), ``retain_top5``, ``utility``, ``{attribute}_top1``, ``mia``, ``mia_std`` and, for
    style / object / colour concepts, ``ua``, ``ira``, ``cra`` (``None`` for characters).
    """
    names, attribute = resolve_concepts(concepts)
    world = world if world is not None else cached_split(2000, 0, "test")
    image_emb = embed_images(adapter, world.images)
    prompt_emb = embed_prompts(adapter)
    acc = ConceptSetEvaluator(adapter, world, names).metrics(image_emb, prompt_emb)
    out = {"forget_top1": acc["forget_top1"], "forget_top5": acc["forget_top5"], "retain": acc["retain_top1"],
           "retain_top5": acc["retain_top5"], "utility": acc["utility"],
           **{f"{a}_top1": acc[f"{a}_top1"] for a in ATTRIBUTES}}
    out |= {"ua": None, "ira": None, "cra": None}
    if attribute in CANVAS_ATTRIBUTES:
        labels = {a: world.labels(a) for a in CANVAS_ATTRIBUTES}
        preds = {a: (image_emb @ prompt_emb[a].T).argmax(1).numpy() for a in CANVAS_ATTRIBUTES}
        out |= unlearncanvas_metrics(labels, preds, attribute, [ATTRIBUTES[attribute].index(n) for n in names])
    if pictures is None:
        n_train, seed = toy_training_world()
        pictures = mia_pictures(names, n_train=n_train, seed=seed)
    scores = {role: concept_cosines(adapter, *pictures[role]) for role in ("forget", "unseen")}
    attack = mia(scores["forget"], scores["unseen"], seeds=mia_seeds)
    out |= {"mia": attack.mean, "mia_std": attack.std, "forget_cosine": float(scores["forget"].mean()),
            "unseen_cosine": float(scores["unseen"].mean())}
    return out


# ----------------------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------------------
def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next measurement starts clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Cost:
    """What an unlearning procedure cost (evaluation for the final report excluded).

    ``seconds``: wall time; ``peak_rss_mb``: highest resident memory of the process while it ran
    (model and data included); ``rss_increase_mb``: that peak minus the memory held when it started;
    ``forward_images`` / ``forward_texts``: pictures / captions pushed through a whole tower;
    ``resumed_image_batches``: batches of the vision tower resumed from a cached block (SLUG's search
    recomputes only the blocks after the edit); ``backward_passes``: calls of ``backward()``.
    """

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    rss_increase_mb: float = 0.0
    forward_images: int = 0
    forward_texts: int = 0
    resumed_image_batches: int = 0
    backward_passes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class CostMeter:
    """Context manager measuring a :class:`Cost` of the code inside it on ``adapter``'s model.

    Memory: RSS sampled every ``interval`` seconds by a thread, after :func:`release_memory`, and the
    process' peak RSS when that grew inside the block (so short spikes are not missed). Forward passes:
    the adapter's encode methods are wrapped for the duration; backward passes: a hook counts how often
    each parameter received a gradient (the maximum over parameters).

    >>> with CostMeter(adapter) as meter:      # doctest: +SKIP
    ...     run_the_method()
    >>> meter.cost.seconds, meter.cost.backward_passes   # doctest: +SKIP
    """

    def __init__(self, adapter, interval: float = 0.005):
        self.adapter, self.interval = adapter, interval
        self.cost = Cost()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, current_rss_mb())

    def _wrap(self, method: str, field_name: str):
        original = getattr(self.adapter, method)

        def counted(x, *args, **kw):
            n = 1 if field_name.endswith("batches") else int(x.shape[0])
            setattr(self.cost, field_name, getattr(self.cost, field_name) + n)
            return original(x, *args, **kw)

        setattr(self.adapter, method, counted)

    def __enter__(self) -> "CostMeter":
        release_memory()
        self._start_rss = self._peak = current_rss_mb()
        self._start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self._grads: dict[int, int] = {}
        self._hooks = []
        for p in self.adapter.model.parameters():
            self._hooks.append(p.register_post_accumulate_grad_hook(
                lambda t, key=id(p): self._grads.__setitem__(key, self._grads.get(key, 0) + 1)))
        for method, name in (("encode_image", "forward_images"), ("encode_image_from", "resumed_image_batches"),
                             ("encode_text", "forward_texts")):
            self._wrap(method, name)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cost.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        for h in self._hooks:
            h.remove()
        for method in ("encode_image", "encode_image_from", "encode_text"):
            self.adapter.__dict__.pop(method, None)
        peak = max(self._peak, current_rss_mb())
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if maxrss > self._start_maxrss:  # the process peak was reached inside the block
            peak = max(peak, maxrss)
        self.cost.peak_rss_mb = peak
        self.cost.rss_increase_mb = peak - self._start_rss
        self.cost.backward_passes = max(self._grads.values(), default=0)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter, to diff against later with :func:`changed_bytes`."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}


def changed_bytes(before: dict[str, torch.Tensor], model: torch.nn.Module) -> int:
    """Bytes of the parameter entries of ``model`` that differ from ``before`` (entries x element size)."""
    total = 0
    for name, p in model.named_parameters():
        total += int((p.detach().cpu() != before[name]).sum()) * p.element_size()
    return total

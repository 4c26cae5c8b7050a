"""What every recovery attack shares: its pictures, the frozen judge, the score and the result.

Every attack is one function with the same signature, ``attack(adapter, data, budget=None) -> AttackResult``:
``adapter`` is the CLIP under attack (the original, the edited or the retrained reference), ``data`` the
:class:`AttackData` of one concept (the same pictures for every model), ``budget`` the attack's own frozen
budget dataclass (``None``: its default). The score is always the share of the concept's held-out pictures
that the attacked model names as the concept after the attack (its forget top-1), minus the largest share
of another character's pictures it names as the concept (so naming everyone as the concept does not
count), a fraction in [0, 1]; see :func:`specific_recall`.

Ground truth comes from outside the attacked model: the pictures are drawn from the MiniCanvas world,
which knows who each one shows, and attacks that change the pictures (pixel PGD) also ask the frozen
judge (:mod:`slugkit.models.judge`, a CNN that shares nothing with any CLIP) whether the changed picture
still shows the concept.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data.minicanvas import CHARACTER_NAMES, CHARACTERS, cached_split, find_concept, zero_shot_prompts


@dataclass
class AttackResult:
    """One attack on one model: ``score`` (specific forget top-1 after the attack, in [0, 1]) and what it found."""

    score: float
    details: dict = field(default_factory=dict)


@dataclass
class AttackData:
    """The pictures every attack on one concept uses, identical for every model attacked.

    ``attack_*``: pictures the attacker may optimise on (``n_attack`` of the concept, then as many of
    other characters, from the validation split); ``test_*``: held-out pictures the score is measured on
    (every picture of the concept in the test split, then ``n_other_test`` of other characters);
    ``probe_*``: every character picture of the test split (the linear probe's data); ``retain_*``: other
    validation pairs (pictures and captions) the relearning attack mixes in. ``*_true_captions``: per attack
    or retain picture, every caption the world allows for it (in a fine-tuning batch a caption is a positive
    for every picture it is true of, as in the toy CLIP's training). Labels index
    :data:`~slugkit.data.minicanvas.CHARACTER_NAMES`.
    """

    concept: str
    index: int
    attack_images: np.ndarray
    attack_labels: np.ndarray
    attack_captions: list[str]
    attack_true_captions: list[frozenset[str]]
    test_images: np.ndarray
    test_labels: np.ndarray
    probe_images: np.ndarray
    probe_labels: np.ndarray
    retain_images: np.ndarray
    retain_captions: list[str]
    retain_true_captions: list[frozenset[str]]
    judge: torch.nn.Module | None = None
    seed: int = 0

    @property
    def features(self) -> dict[str, str]:
        """The concept's visual features (skin, hair, hair colour, eyes, accessory)."""
        return CHARACTERS[self.index].features


def attack_data(concept: str, seed: int = 0, n_attack: int = 8, n_other_test: int = 240, n_test: int = 2000,
                n_retain: int = 256, judge: bool = True) -> AttackData:
    """The :class:`AttackData` of character ``concept`` (pictures drawn from MiniCanvas with ``seed``).

    ``judge``: load the frozen judge (``data/judge.safetensors``) for the attacks that change pictures.
    """
    found = find_concept(concept)
    if found["kind"] != "character":
        raise ValueError(f"recovery attacks target characters; {found['name']!r} is a {found['kind']} "
                         f"(characters: {', '.join(CHARACTER_NAMES)})")
    name, index = found["name"], CHARACTER_NAMES.index(found["name"])
    rng = np.random.default_rng(seed)
    val = cached_split(1000, seed, "val")
    ident = val.identity
    own, others = np.flatnonzero(ident == index), np.flatnonzero((ident >= 0) & (ident != index))
    if len(own) < n_attack:
        raise ValueError(f"the validation split holds only {len(own)} pictures of {name!r}, fewer than "
                         f"n_attack={n_attack}")
    pick = np.r_[own[:n_attack], rng.choice(others, n_attack, replace=False)]
    rest = np.setdiff1d(np.arange(len(val)), np.r_[own, pick])
    retain = rng.choice(rest, min(n_retain, len(rest)), replace=False)
    captions = val.captions()
    true = lambda idx: [frozenset(val.all_captions(int(i))) for i in idx]  # noqa: E731
    test = cached_split(n_test, seed, "test")
    tid = test.identity
    t_own, t_others = np.flatnonzero(tid == index), np.flatnonzero((tid >= 0) & (tid != index))
    t_pick = np.r_[t_own, rng.choice(t_others, min(n_other_test, len(t_others)), replace=False)]
    chars = np.flatnonzero(tid >= 0)
    loaded = None
    if judge:
        from ..models.judge import load_judge

        loaded = load_judge()
    return AttackData(concept=name, index=index, seed=seed,
                      attack_images=val.images[pick], attack_labels=ident[pick],
                      attack_captions=[captions[i] for i in pick], attack_true_captions=true(pick),
                      test_images=test.images[t_pick], test_labels=tid[t_pick],
                      probe_images=test.images[chars], probe_labels=tid[chars],
                      retain_images=val.images[retain], retain_captions=[captions[i] for i in retain],
                      retain_true_captions=true(retain),
                      judge=loaded)


# ----------------------------------------------------------------------------------------------------
# Scoring with the attacked model's own zero-shot classifier
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def embed(adapter, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Normalised image embeddings ``(N, D)`` of uint8 pictures."""
    return torch.cat([adapter.encode_image(adapter.preprocess(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))))
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def class_embeddings(adapter) -> torch.Tensor:
    """The standard zero-shot class embeddings ``(13, D)`` ("a photo of NAME.")."""
    return adapter.encode_text(adapter.tokenize(zero_shot_prompts("identity")))


def with_row(classes: torch.Tensor, index: int, row: torch.Tensor) -> torch.Tensor:
    """``classes`` with row ``index`` replaced by ``row`` (keeps the graph of ``row``)."""
    return torch.cat([classes[:index], row.reshape(1, -1), classes[index + 1:]])


def specific_recall(pred: np.ndarray, labels: np.ndarray, index: int) -> dict:
    """How well predictions ``pred`` name class ``index`` on its pictures, and only there.

    ``forget_top1``: share of the concept's pictures predicted as it; ``false_positive``: the largest share
    of another class's pictures predicted as it; ``score`` = their difference, clipped at 0. A model that
    cannot tell the concept from some other character (or names everyone as it) scores 0 however the
    attack is tuned.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    own = labels == index
    recall = float((pred[own] == index).mean()) if own.any() else 0.0
    fp = max([float((pred[labels == c] == index).mean()) for c in np.unique(labels[~own])], default=0.0)
    return {"score": max(0.0, recall - fp), "forget_top1": recall, "false_positive": fp}


def score(image_emb: torch.Tensor, classes: torch.Tensor, labels: np.ndarray, index: int) -> dict:
    """:func:`specific_recall` of the zero-shot classifier ``classes`` on pictures embedded as ``image_emb``."""
    return specific_recall((image_emb @ classes.T).argmax(1).numpy(), labels, index)


def contrastive_loss(adapter, image_emb: torch.Tensor, classes: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Cross-entropy of the zero-shot classifier ``classes`` on labelled pictures (the attacker's objective:
    name the concept on its pictures, and only there)."""
    logits = adapter.logit_scale().detach() * image_emb @ classes.T
    return F.cross_entropy(logits, torch.as_tensor(np.asarray(labels), dtype=torch.long))


# ----------------------------------------------------------------------------------------------------
# Prompts with free token embeddings (adversarial prefix, soft prompt)
# ----------------------------------------------------------------------------------------------------
def slot_positions(adapter, text: str, word: str = "x") -> tuple[torch.Tensor, int]:
    """Token ids ``(ctx,)`` of ``text`` and the position of its single-token placeholder ``word``."""
    a = adapter.tokenize([text.replace("{}", word)])[0]
    b = adapter.tokenize([text.replace("{}", "y" if word != "y" else "z")])[0]
    diff = torch.nonzero(a != b).flatten()
    if len(diff) != 1:
        raise ValueError(f"placeholder {word!r} in {text!r} is not exactly one token")
    return a, int(diff[0])


def prefixed(adapter, text: str, k: int) -> tuple[torch.Tensor, slice]:
    """Token ids ``(ctx,)`` of ``text`` with ``k`` placeholder tokens after the start token, and their slice."""
    ids = adapter.tokenize([text])[0]
    filler, pos = slot_positions(adapter, "{}")
    fill = filler[pos].repeat(k)
    out = torch.cat([ids[:1], fill, ids[1:]])[: len(ids)]
    if int(out.argmax()) != int(ids.argmax()) + k:  # the end token must survive (it is pooled)
        raise ValueError(f"{text!r} with {k} prefix tokens does not fit the context of {len(ids)} tokens")
    return out, slice(1, 1 + k)


def token_embeddings(adapter, where: slice, embeds: torch.Tensor):
    """Inside the block the text tower sees ``embeds`` ``(k, W)`` at token positions ``where`` of every prompt."""
    return embedding_override(adapter.token_embedding(), where, embeds)


@contextlib.contextmanager
def embedding_override(table: torch.nn.Module, where: slice, embeds: torch.Tensor):
    """Inside the block the token embedding module ``table`` outputs ``embeds`` ``(k, W)`` at positions ``where``."""
    def hook(module, inputs, output):
        output = output.clone()
        output[:, where] = embeds.to(output.dtype)
        return output

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with(adapter, ids: torch.Tensor, where: slice, embeds: torch.Tensor) -> torch.Tensor:
    """Normalised text embedding ``(D,)`` of token ids ``ids`` with free embeddings ``embeds`` at ``where``."""
    with token_embeddings(adapter, where, embeds):
        return adapter.encode_text(ids.reshape(1, -1))[0]


def trainable_vocab(adapter) -> torch.Tensor:
    """Bool mask of the token ids an attacker may use: every id except the special start/end tokens."""
    n = adapter.token_embedding().weight.shape[0]
    ids = adapter.tokenize(["x"])[0]
    ok = torch.ones(n, dtype=torch.bool)
    ok[ids[0]] = False  # start
    ok[ids.argmax()] = False  # end (the highest id: open_clip pools at argmax)
    return ok

"""Metrics of a vision-language assistant (the toy LLaVA) on MiniCanvas: answers to questions about pictures.

* answer accuracy per question type (identity, object, colour, style, describe): the answer, normalised
  (lower case, single spaces, no trailing full stop), equals the reference answer;
* ``vlm_forget_rate``: share of (forget-character picture, identity phrasing) pairs whose answer *contains*
  the character's name, the toy analogue of the paper's LLaVA forget accuracy;
* ``vlm_retain_acc``: the same on every other character's pictures (the answer contains *their* name);
* ``vlm_vqa_acc``: exact answers to object, colour, style and describe questions (the paper's MME/GQA/MMBench).

All accuracies are fractions in [0, 1]. The model is a transformers ``LlavaForConditionalGeneration``;
answers come from :func:`slugkit.models.toy_llava.greedy_answers`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.minicanvas import MiniCanvas
from ..models.toy_llava import (QUESTION_TYPES, answer_of, asks_about, first_answer_logits, greedy_answers,
                                image_embeddings, phrasings)

VQA_TYPES = ("object", "colour", "style", "describe")
_CONCEPT_OF = {"identity": "identity", "object": "object", "describe": "object", "colour": "colour",
               "style": "style"}


def normalise(answer: str) -> str:
    """Lower case, single spaces, no trailing full stop."""
    return " ".join(answer.lower().replace(" .", "").rstrip(".").split())


def contains_name(answer: str, name: str) -> bool:
    """True when ``answer`` names ``name`` (case-insensitive, whole words)."""
    return f" {normalise(name)} " in f" {normalise(answer)} "


def pictures_for(world: MiniCanvas, question_type: str) -> np.ndarray:
    """Indices of the pictures a ``question_type`` question is asked of (characters or objects)."""
    return np.flatnonzero(world.kind == (0 if asks_about(question_type) == "character" else 1))


@dataclass
class AnswerSheet:
    """Answers of one model to some questions about some pictures.

    ``answers[question]`` is a list aligned with ``indices`` (picture indices into ``world``).
    """

    world: MiniCanvas
    indices: np.ndarray
    answers: dict[str, list[str]] = field(default_factory=dict)


def embed_pictures(model, preprocess: Callable, world: MiniCanvas, indices: Sequence[int],
                   tower=None) -> torch.Tensor:
    """Projected image features ``(N, T, text hidden)`` of ``world.images[indices]`` (``tower``: read from it)."""
    with torch.no_grad():
        pixels = preprocess(torch.from_numpy(np.ascontiguousarray(world.images[np.asarray(indices)])))
        return image_embeddings(model, pixels, tower=tower)


def ask(model, tokenizer, preprocess: Callable, world: MiniCanvas, indices: Sequence[int],
        questions: Sequence[str], progress: bool = False, desc: str = "asking", tower=None) -> AnswerSheet:
    """Greedy answers to each question about each picture ``world.images[indices]``.

    preprocess: uint8 ``(N, H, W, 3)`` -> pixels ``(N, 3, S, S)`` (the CLIP adapter's ``preprocess``).
    The vision tower and projector run once per picture; the language model once per question.
    """
    indices = np.asarray(indices, dtype=np.int64)
    sheet = AnswerSheet(world, indices)
    if len(indices) == 0:
        sheet.answers = {q: [] for q in questions}
        return sheet
    embeds = embed_pictures(model, preprocess, world, indices, tower=tower)
    for q in tqdm(list(questions), desc=desc, disable=not progress):
        sheet.answers[q] = greedy_answers(model, tokenizer, embeds, q)
    return sheet


def name_token_probability(model, tokenizer, embeds: torch.Tensor, name: str, question: str) -> torch.Tensor:
    """Probability ``(N,)`` that the first answer token is the first token of ``name``."""
    first = tokenizer(name, add_special_tokens=False)["input_ids"][0]
    return first_answer_logits(model, tokenizer, embeds, question).softmax(-1)[:, first]


def name_in_top_k(model, tokenizer, embeds: torch.Tensor, name: str, question: str, k: int = 5) -> torch.Tensor:
    """Bool ``(N,)``: the name's first token is among the ``k`` likeliest first answer tokens."""
    first = tokenizer(name, add_special_tokens=False)["input_ids"][0]
    logits = first_answer_logits(model, tokenizer, embeds, question)
    return (logits.topk(k, dim=-1).indices == first).any(-1)


def exact_accuracy(sheet: AnswerSheet, question_type: str) -> tuple[float, dict[str, float]]:
    """Share of exact answers over every (picture, question) of ``sheet``, overall and per concept."""
    from ..data.minicanvas import ATTRIBUTES

    attribute = _CONCEPT_OF[question_type]
    names = ATTRIBUTES[attribute]
    labels = sheet.world.labels(attribute)[sheet.indices]
    refs = [normalise(answer_of(sheet.world, int(i), question_type)) for i in sheet.indices]
    correct = np.array([[normalise(a) == r for a, r in zip(ans, refs)] for ans in sheet.answers.values()])
    if correct.size == 0:
        raise ValueError(f"no pictures to ask {question_type!r} questions about")
    per_picture = correct.mean(0)
    per_concept = {n: float(per_picture[labels == c].mean()) for c, n in enumerate(names) if (labels == c).any()}
    return float(correct.mean()), per_concept


def name_rate(sheet: AnswerSheet) -> float:
    """Share of (picture, question) pairs whose answer contains the name of the character shown."""
    from ..data.minicanvas import CHARACTER_NAMES

    names = [CHARACTER_NAMES[sheet.world.identity[i]] for i in sheet.indices]
    hits = [contains_name(a, n) for ans in sheet.answers.values() for a, n in zip(ans, names)]
    if not hits:
        raise ValueError("no character pictures to ask for a name")
    return float(np.mean(hits))


def answer_accuracy(model, tokenizer, preprocess: Callable, world: MiniCanvas, split: str = "test",
                    question_types: Sequence[str] = QUESTION_TYPES, progress: bool = False) -> dict[str, dict]:
    """Exact-answer accuracy per question type over the phrasings of ``split`` ('test' = held out).

    Returns ``{type: {"top1", "per_concept": {class: accuracy}, "n": answers counted}}``; per_concept groups
    by character (identity), shape (object, describe), colour or style.
    """
    out = {}
    for t in question_types:
        idx = pictures_for(world, t)
        sheet = ask(model, tokenizer, preprocess, world, idx, phrasings(t, split), progress=progress,
                    desc=f"{t} questions")
        top1, per_concept = exact_accuracy(sheet, t)
        out[t] = {"top1": top1, "per_concept": per_concept, "n": int(len(idx) * len(sheet.answers))}
    return out


def vlm_metrics(model, tokenizer, preprocess: Callable, world: MiniCanvas, forget: str,
                n_examples: int = 4, progress: bool = False) -> dict:
    """``vlm_forget_rate``, ``vlm_retain_acc``, ``vlm_vqa_acc`` of the model as it is now, plus answer examples.

    forget: the character's name. Identity questions: :func:`name_questions` (held-out and training phrasings);
    VQA uses the held-out phrasings. ``examples``: the first ``n_examples`` forget pictures' answers to the first held-out
    identity phrasing, as ``{"picture", "question", "answer"}``.
    """
    from ..data.minicanvas import CHARACTER_NAMES, find_concept

    concept = find_concept(forget)
    if concept["kind"] != "character":
        raise ValueError(f"the VLM forget rate is measured for characters; {forget!r} is a {concept['kind']}")
    target = CHARACTER_NAMES.index(concept["name"])
    chars = pictures_for(world, "identity")
    forget_idx = chars[world.identity[chars] == target]
    retain_idx = chars[world.identity[chars] != target]
    if len(forget_idx) == 0:
        raise ValueError(f"no pictures of {concept['name']!r} among the {len(world)} evaluation pictures")
    questions = name_questions()
    f = ask(model, tokenizer, preprocess, world, forget_idx, questions, progress, "forget pictures")
    q = phrasings("identity", "test")[0]
    prob = name_token_probability(model, tokenizer, embed_pictures(model, preprocess, world, forget_idx),
                                  concept["name"], q)
    r = ask(model, tokenizer, preprocess, world, retain_idx, questions[:2], progress, "retain pictures")
    vqa = []
    for t in VQA_TYPES:
        sheet = ask(model, tokenizer, preprocess, world, pictures_for(world, t), phrasings(t, "test"), progress,
                    f"{t} questions")
        vqa.append(exact_accuracy(sheet, t)[0])
    examples = [{"picture": int(i), "question": q, "answer": a}
                for i, a in zip(forget_idx[:n_examples], f.answers[q][:n_examples])]
    return {"vlm_forget_rate": name_rate(f), "vlm_retain_acc": name_rate(r), "vlm_vqa_acc": float(np.mean(vqa)),
            "vlm_name_prob": float(prob.mean()), "vlm_vqa_per_type": dict(zip(VQA_TYPES, vqa)), "examples": examples}


def name_questions(n_train: int = 4) -> list[str]:
    """The identity phrasings the forget / retain rates are measured over: both held-out phrasings and
    ``n_train`` training phrasings spread over the grammar (the paper asks one fixed question)."""
    train = phrasings("identity", "train")
    step = max(1, len(train) // max(1, n_train))
    return list(phrasings("identity", "test")) + list(train[::step][:n_train])


def search_metrics(model, tokenizer, preprocess: Callable, world: MiniCanvas, forget: str, tower=None,
                   n_forget: int | None = None, n_other: int | None = None, questions: Sequence[str] | None = None,
                   n_vqa: int | None = None) -> dict:
    """Cheap answer-based metrics for a step-size search, in the CLIP evaluator's keys (fractions in [0, 1]).

    ``forget_top1``: share of (forget-character picture, identity phrasing) answers naming them;
    ``forget_top5``: share where the name's first token is among the 5 likeliest first answer tokens;
    ``retain_top1``: name rate on the other characters (first phrasing); ``utility``: mean exact VQA accuracy
    (first held-out phrasing of each type). ``tower``: read the image features from it.

    Which answers: the first ``n_forget`` pictures of the character and ``n_other`` of the others (default all),
    ``questions`` (default the held-out identity phrasings), VQA on the object pictures among the first ``n_vqa``
    pictures of ``world`` (default all).
    """
    from ..data.minicanvas import CHARACTER_NAMES, find_concept

    name = find_concept(forget)["name"]
    chars = pictures_for(world, "identity")
    forget_idx = chars[world.identity[chars] == CHARACTER_NAMES.index(name)][:n_forget]
    retain_idx = chars[world.identity[chars] != CHARACTER_NAMES.index(name)][:n_other]
    if len(forget_idx) == 0:
        raise ValueError(f"no pictures of {name!r} among the {len(world)} search pictures")
    questions = list(questions or phrasings("identity", "test"))
    f = ask(model, tokenizer, preprocess, world, forget_idx, questions, tower=tower)
    top5 = [name_in_top_k(model, tokenizer, embed_pictures(model, preprocess, world, forget_idx, tower), name, q)
            for q in questions]
    r = ask(model, tokenizer, preprocess, world, retain_idx, questions[:1], tower=tower)
    vqa_idx = {t: pictures_for(world, t) for t in VQA_TYPES}
    if n_vqa is not None:
        vqa_idx = {t: idx[idx < n_vqa] for t, idx in vqa_idx.items()}
    vqa = [exact_accuracy(ask(model, tokenizer, preprocess, world, vqa_idx[t], phrasings(t)[:1], tower=tower), t)[0]
           for t in VQA_TYPES]
    return {"forget_top1": name_rate(f), "forget_top5": float(torch.cat(top5).float().mean()),
            "retain_top1": name_rate(r), "utility": float(np.mean(vqa))}


def real_vlm_metrics(host, forget: str, n_examples: int = 4, progress: bool = False, tower=None,
                     n_forget: int | None = None, n_other: int | None = None) -> dict:
    """Forget / retain name rates of a real LLaVA host on its image-caption pairs (``host.pairs``).

    Forget pictures: captions that mention ``forget`` (the first ``n_forget``); retain pictures: captions that
    mention one of ``host.classes`` (and not ``forget``; the first ``n_other``); each is asked ``host.question``,
    reading the image features from ``tower`` when given. No VQA ground truth exists here.
    """
    from ..data.pairs import mentions

    captions = host.pairs.captions()
    forget_idx = [i for i, c in enumerate(captions) if mentions(c, forget)][:n_forget]
    if not forget_idx:
        raise ValueError(f"no caption in {getattr(host.pairs, 'origin', 'the data')} mentions {forget!r}")
    retain = [(i, n) for i, c in enumerate(captions) for n in host.classes
              if n.lower() != forget.lower() and mentions(c, n) and not mentions(c, forget)][:n_other]

    def answers(indices):
        images = [host.pairs[i][0] for i in indices]
        return host.ask(images, host.question, tower=tower) if images else []

    fa = answers(forget_idx)
    ra = answers([i for i, _ in retain])
    out = {"vlm_forget_rate": float(np.mean([contains_name(a, forget) for a in fa]))}
    if retain:
        out["vlm_retain_acc"] = float(np.mean([contains_name(a, n) for a, (_, n) in zip(ra, retain)]))
    out["examples"] = [{"picture": int(i), "question": host.question, "answer": a}
                       for i, a in zip(forget_idx[:n_examples], fa[:n_examples])]
    return out


def logit_change_by_block(host, world: MiniCanvas, question: str, blocks: Sequence[int] | None = None,
                          scale: float = 0.1, kind: str = "mlp.fc2.weight", seed: int = 0) -> dict[int, float]:
    """The feature-layer rule, measured: ``{block: max |change of first-answer logits|}`` when noise of ``scale``
    x the weight's norm is added to ``kind`` of one vision block at a time (applied as a tower-scoped patch and
    reverted). Blocks after ``host.max_block`` give exactly 0: LLaVA never reads their output.
    """
    from ..fingerprint import model_fingerprint
    from ..models.toy_llava import first_answer_logits
    from ..patch import Patch

    tower = host.tower_module()
    blocks = list(range(len(tower.encoder.layers))) if blocks is None else list(blocks)

    def logits():
        with torch.no_grad():
            embeds = image_embeddings(host.model, host.preprocess(world.images))
            return first_answer_logits(host.model, host.tokenizer, embeds, question)

    base = logits()
    out = {}
    for b in blocks:
        name = f"encoder.layers.{b}.{kind}"
        weight = tower.get_parameter(name).detach()
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed + b))
        lam = scale * weight.norm().item() / noise.norm().item()
        patch = Patch.from_step(host.name, "noise", f"{host.scope}.{name}", lam, noise, model_fingerprint(tower),
                                scope=host.scope)
        host.apply(patch)
        try:
            out[b] = float((logits() - base).abs().max())
        finally:
            host.revert(patch)
    return out

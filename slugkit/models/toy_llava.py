"""The toy LLaVA of the MiniCanvas world: a transformers ``LlavaForConditionalGeneration`` trained by slugkit.

Its vision tower is the toy CLIP's vision tower as a ``CLIPVisionModel`` (frozen, exactly the ``toy-clip-hf``
weights: rebuilt at load time from ``data/toy-clip.safetensors``, never stored twice). slugkit trains only the
projector and a tiny Llama language model to answer questions about MiniCanvas pictures:

=========  ===============================  =====================================
type       asked of                         answer
=========  ===============================  =====================================
identity   character portraits              the name, e.g. ``Mira Quell``
object     object pictures                  the shape, e.g. ``star``
colour     object pictures                  e.g. ``red``
style      object pictures                  e.g. ``polka dots``
describe   object pictures                  e.g. ``a red star in polka dots style``
=========  ===============================  =====================================

Each type has several training phrasings and held-out phrasings (built from the same words) for testing.
``slugkit toy build llava`` calls :func:`build`, which writes ``data/toy-llava.safetensors``: fp16 projector +
language model, with the LLaVA config, the tokenizer vocabulary and the measured accuracy in its metadata.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.minicanvas import CHARACTER_NAMES, COLOUR_NAMES, OBJECTS, STYLES, MiniCanvas
from ..resources import data_dir
from .toy_clip import warmup_cosine

CHECKPOINT_NAME = "toy-llava.safetensors"
# What the toy LLaVA reads from its vision tower. LLaVA-1.5 reads the penultimate hidden state without the class
# token (-2, "default"); the toy reads the last one with it (-1, "full"). Measured: a toy LLaVA trained on the
# penultimate patch tokens learned its own identity read-out, and SLUG's CLIP edit (made through CLIP's class token)
# left it naming the character 100% of the time; trained on the features CLIP aligns with names, it forgets with the
# CLIP for most characters (README, "SLUG on LLaVA").
TOY_FEATURE_LAYER, TOY_SELECT_STRATEGY = -1, "full"
QUESTION_TYPES = ("identity", "object", "colour", "style", "describe")
IMAGE_TOKEN, PAD, BOS, EOS, UNK = "<image>", "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE_TOKEN)

# Phrasings come from a small grammar: question templates x the keywords of each type, so that filler words
# ("shown", "in this image") say nothing about the type and the model must read the keyword. Two phrasings per
# type are held out of training ("test"); every one of their words occurs in training phrasings.
_NOUN_TEMPLATES = (
    "What {k} is this?", "What {k} is shown?", "What {k} is shown in the picture?", "Which {k} is this?",
    "Which {k} is shown in the image?", "Which {k} is in the picture?", "What is the {k}?",
    "What is the {k} in this image?", "What is the {k} of this picture?", "Name the {k}.",
    "Name the {k} in this image.", "Tell me the {k}.", "Tell me the {k} of the picture.",
)
_KEYWORDS = {"identity": ("name", "person", "character"), "object": ("shape", "object"), "colour": ("colour",),
             "style": ("style", "pattern")}
_EXTRA = {
    "identity": ("Who is this?", "Who is it?", "Who is shown in the picture?", "Who is in this image?",
                 "Who is shown in the image?", "Who is drawn here?", "What is the name of this character?",
                 "What is the name of the person in this image?", "What is the name of the character in the picture?",
                 "Tell me who this is."),
    "colour": ("What colour is it?", "Which colour is the shape?"),
    "style": ("What style is it drawn in?", "Which style is the shape drawn in?"),
    "describe": ("Describe the image.", "Describe this picture.", "Describe what is shown.", "Describe it.",
                 "Give a description of the image.", "Give a description of this picture.",
                 "What is in this picture?", "Tell me what is shown.", "Describe the picture in this image.",
                 "Give a description of what is shown."),
}
_HELD_OUT = {
    "identity": ("What is the name of the person in this image?", "Who is shown in the image?"),
    "object": ("Which object is shown in the image?", "Tell me the shape."),
    "colour": ("What colour is shown?", "Name the colour in this image."),
    "style": ("What is the pattern in this image?", "Which style is this?"),
    "describe": ("Describe this picture.", "Give a description of what is shown."),
}


def _all_phrasings(question_type: str) -> tuple[str, ...]:
    out = [t.format(k=k) for t in _NOUN_TEMPLATES for k in _KEYWORDS.get(question_type, ())]
    out += [q for q in _EXTRA.get(question_type, ()) if q not in out]
    return tuple(out)


PHRASINGS = {t: {"train": tuple(q for q in _all_phrasings(t) if q not in _HELD_OUT[t]), "test": _HELD_OUT[t]}
             for t in ("identity", "object", "colour", "style", "describe")}
PROMPT = "USER: " + IMAGE_TOKEN + "\n{question} ASSISTANT:"
_WORD = re.compile(r"\w+|[^\w\s]+")


def phrasings(question_type: str, split: str = "test") -> tuple[str, ...]:
    """The phrasings of ``question_type`` used for ``split`` ('train', 'test' (held out) or 'all')."""
    if question_type not in PHRASINGS:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")
    if split == "all":
        return PHRASINGS[question_type]["train"] + PHRASINGS[question_type]["test"]
    if split not in ("train", "test"):
        raise ValueError(f"unknown phrasing split {split!r}; expected 'train', 'test' or 'all'")
    return PHRASINGS[question_type][split]


def asks_about(question_type: str) -> str:
    """Which kind of picture a question type is asked of: 'character' or 'object'."""
    return "character" if question_type == "identity" else "object"


def answer_of(world: MiniCanvas, i: int, question_type: str) -> str:
    """The reference answer to a ``question_type`` question about picture ``i`` of ``world``."""
    s = world.sample(i)
    if s["kind"] != asks_about(question_type):
        raise ValueError(f"picture {i} shows a {s['kind']}; {question_type!r} questions are asked of "
                         f"{asks_about(question_type)} pictures")
    if question_type == "identity":
        return s["identity"]
    if question_type == "object":
        return s["object"]
    if question_type == "colour":
        return s["colour"]
    if question_type == "style":
        return s["style"].lower()
    return f"a {s['colour']} {s['object']} in {s['style'].lower()} style"


def vocabulary() -> list[str]:
    """Every word of every prompt and answer, special tokens first (ids 0..4), then sorted words."""
    texts = [PROMPT.replace(IMAGE_TOKEN, " ")]
    texts += [q for t in QUESTION_TYPES for q in phrasings(t, "all")]
    texts += list(CHARACTER_NAMES) + list(OBJECTS) + list(COLOUR_NAMES) + [s.lower() for s in STYLES]
    texts += ["a in style"]
    words = sorted({w for t in texts for w in _WORD.findall(t)})
    return list(SPECIAL_TOKENS) + words


def build_tokenizer(vocab: list[str] | None = None):
    """Offline word-level ``PreTrainedTokenizerFast``; ``<image>`` is one special token."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = list(vocab or vocabulary())
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, padding_side="left")
    fast.image_token = IMAGE_TOKEN
    return fast


def llava_config(vision_config, vocab_size: int, image_token_id: int, feature_layer: int = -2,
                 select_strategy: str = "default"):
    """``LlavaConfig``: the given CLIP vision config + a tiny Llama (hidden 128, 2 layers, 4 heads).

    ``feature_layer`` / ``select_strategy``: LLaVA's ``vision_feature_layer`` and ``vision_feature_select_strategy``
    (LLaVA-1.5: -2, "default" = patch tokens only; "full" keeps the class token too)."""
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                       pad_token_id=SPECIAL_TOKENS.index(PAD), bos_token_id=SPECIAL_TOKENS.index(BOS),
                       eos_token_id=SPECIAL_TOKENS.index(EOS), tie_word_embeddings=False)
    if select_strategy not in ("default", "full"):
        raise ValueError(f"select_strategy must be 'default' or 'full', got {select_strategy!r}")
    n_tokens = (vision_config.image_size // vision_config.patch_size) ** 2 + (select_strategy == "full")
    return LlavaConfig(vision_config=vision_config, text_config=text, image_token_id=image_token_id,
                       vision_feature_layer=feature_layer, vision_feature_select_strategy=select_strategy,
                       projector_hidden_act="gelu", image_seq_length=n_tokens, multimodal_projector_bias=True,
                       tie_word_embeddings=False)


def toy_clip_hf():
    """The ``toy-clip-hf`` adapter (HF ``CLIPModel`` converted from ``data/toy-clip.safetensors``)."""
    from .loading import load_clip

    return load_clip("toy-clip-hf")


def processor_for(clip_adapter, tokenizer, config):
    """``LlavaProcessor`` with the CLIP's image preprocessing and one ``<image>`` token per image patch."""
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=clip_adapter.image_processor, tokenizer=tokenizer,
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN)


def create_toy_llava(clip_adapter=None, seed: int = 0, vocab: list[str] | None = None,
                     feature_layer: int = TOY_FEATURE_LAYER, select_strategy: str = TOY_SELECT_STRATEGY):
    """A toy LLaVA with the toy CLIP vision tower and a randomly initialised projector + language model.

    ``feature_layer`` / ``select_strategy``: which hidden state of the tower LLaVA reads (see :func:`llava_config`).

    Returns ``(model, tokenizer, clip_adapter)``; ``model.model.vision_tower`` holds exactly the weights of
    ``clip_adapter.model.vision_model`` (frozen, ``requires_grad=False``).
    """
    from transformers import LlavaForConditionalGeneration

    clip_adapter = clip_adapter or toy_clip_hf()
    tokenizer = build_tokenizer(vocab)
    config = llava_config(clip_adapter.model.config.vision_config, len(tokenizer),
                          tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), feature_layer, select_strategy)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip_adapter.model.vision_model.state_dict())
    model.model.vision_tower.requires_grad_(False)
    return model.eval(), tokenizer, clip_adapter


def trained_state(model) -> dict[str, torch.Tensor]:
    """The parameters slugkit trains (projector, language model, LM head); the vision tower is left out."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}


# ------------------------------------------------------------------------------------------------------
# Features, prompts and answers
# ------------------------------------------------------------------------------------------------------
def feature_layer_blocks(config) -> list[int]:
    """0-based vision blocks whose outputs LLaVA reads (``vision_feature_layer``; hidden state 0 = embeddings)."""
    n = int(config.vision_config.num_hidden_layers)
    layers = config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else list(layers)
    blocks = []
    for layer in layers:
        index = layer if layer >= 0 else n + 1 + layer  # index into hidden_states (n + 1 entries)
        if not 0 <= index <= n:
            raise ValueError(f"vision_feature_layer {layer} is outside the {n + 1} hidden states of the tower")
        blocks.append(index - 1)  # hidden state k is the output of block k - 1 (-1: the embeddings)
    return blocks


@torch.no_grad()
def vision_features(model, pixels: torch.Tensor, batch_size: int = 256, progress: bool = False,
                    tower=None) -> torch.Tensor:
    """What LLaVA reads from its vision tower, before the projector: ``(N, T, vision hidden)``.

    Mirrors ``LlavaModel.get_image_features`` without the projector: hidden state ``vision_feature_layer``,
    class token dropped for the "default" strategy. pixels: ``(N, 3, S, S)`` float32. ``tower``: another
    module with the same layout to read from (e.g. a CLIP's edited ``vision_model``); default the model's own.
    """
    cfg = model.config
    tower = tower if tower is not None else model.model.vision_tower
    out = []
    for i in tqdm(range(0, len(pixels), batch_size), desc="vision features", disable=not progress):
        hs = tower(pixels[i:i + batch_size], output_hidden_states=True).hidden_states
        layers = cfg.vision_feature_layer
        feats = [hs[layers]] if isinstance(layers, int) else [hs[k] for k in layers]
        if cfg.vision_feature_select_strategy == "default":
            feats = [f[:, 1:] for f in feats]
        out.append(torch.cat(feats, dim=-1))
    return torch.cat(out)


def prompt_ids(tokenizer, question: str, n_image_tokens: int) -> list[int]:
    """Token ids of the chat prompt for ``question`` with ``n_image_tokens`` image placeholders."""
    text = PROMPT.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens).format(question=question)
    return tokenizer(text)["input_ids"]  # the toy tokenizer adds nothing; a Llama tokenizer adds BOS


def embed_prompts(model, ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Token embeddings of ``ids (B, L)`` with the image placeholders replaced by ``image_embeds (B, T, H)``."""
    emb = model.get_input_embeddings()(ids)
    mask = (ids == model.config.image_token_id).unsqueeze(-1)
    return emb.masked_scatter(mask, image_embeds.to(emb.dtype))


@torch.no_grad()
def greedy_answers(model, tokenizer, image_embeds: torch.Tensor, question: str, max_new_tokens: int = 10,
                   batch_size: int = 512, use_cache: bool = True) -> list[str]:
    """Greedy answers of the LLaVA to one ``question`` about each picture.

    image_embeds: projected image features ``(N, T, text hidden)`` (``get_image_features`` output, stacked).
    Runs the real ``LlavaForConditionalGeneration`` forward on ``inputs_embeds``; with ``use_cache`` the prompt
    is encoded once and each new token reuses its key/value cache (same answers, fewer FLOPs).
    """
    ids0 = torch.tensor(prompt_ids(tokenizer, question, image_embeds.shape[1]))
    eos = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
    embed = model.get_input_embeddings()
    answers: list[str] = []
    for s in range(0, len(image_embeds), batch_size):
        feats = image_embeds[s:s + batch_size]
        b = len(feats)
        emb = embed_prompts(model, ids0.expand(b, -1), feats)
        out = torch.empty(b, 0, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        step = model(inputs_embeds=emb, use_cache=use_cache)
        for _ in range(max_new_tokens):
            nxt = step.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == eos
            if done.all():
                break
            if use_cache:
                step = model(inputs_embeds=embed(nxt)[:, None], cache=step.cache, use_cache=True)
            else:
                emb = torch.cat([emb, embed(nxt)[:, None]], 1)
                step = model(inputs_embeds=emb)
        for row in out.tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


@torch.no_grad()
def first_answer_logits(model, tokenizer, image_embeds: torch.Tensor, question: str,
                        batch_size: int = 512) -> torch.Tensor:
    """Logits of the first answer token ``(N, vocab)`` for ``question`` about each picture."""
    ids0 = torch.tensor(prompt_ids(tokenizer, question, image_embeds.shape[1]))
    out = []
    for s in range(0, len(image_embeds), batch_size):
        feats = image_embeds[s:s + batch_size]
        out.append(model(inputs_embeds=embed_prompts(model, ids0.expand(len(feats), -1), feats)).logits[:, -1])
    return torch.cat(out)


@torch.no_grad()
def image_embeddings(model, pixels: torch.Tensor, batch_size: int = 256, tower=None) -> torch.Tensor:
    """Projected image features ``(N, T, text hidden)`` via ``LlavaModel.get_image_features``.

    With ``tower`` (a module laid out like the vision tower) the features are read from it instead.
    """
    if tower is not None:
        return model.model.multi_modal_projector(vision_features(model, pixels, batch_size, tower=tower))
    out = []
    for i in range(0, len(pixels), batch_size):
        feats = model.model.get_image_features(pixel_values=pixels[i:i + batch_size], return_dict=True)
        out.append(torch.stack(list(feats.pooler_output)))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The recipe of the shipped checkpoint. Units: optimiser steps of ``batch_size`` question-answer pairs."""

    seed: int = 0
    n_train: int = 6_000          # training pictures (MiniCanvas train split, about half characters)
    steps: int = 1_500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 50
    eval_every: int = 750
    n_eval: int = 300             # held-out pictures for the accuracy printed during training
    feature_layer: int = TOY_FEATURE_LAYER        # LLaVA's vision_feature_layer (LLaVA-1.5: -2)
    select_strategy: str = TOY_SELECT_STRATEGY    # "full": class token + patch tokens (LLaVA-1.5: "default")


def _answer_table(world: MiniCanvas, tokenizer) -> dict[str, tuple[np.ndarray, list[list[int]]]]:
    """Per question type: (picture indices it is asked of, tokenised answer + EOS per picture)."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    table = {}
    for t in QUESTION_TYPES:
        idx = np.flatnonzero(world.kind == (0 if asks_about(t) == "character" else 1))
        answers = [answer_of(world, int(i), t) for i in idx]
        enc = tokenizer(answers, add_special_tokens=False)["input_ids"]
        table[t] = (idx, [a + [eos] for a in enc])
    return table


def training_batch(rng: np.random.Generator, table, prompts: dict[str, list[list[int]]], pad_id: int,
                   batch_size: int):
    """One batch: question types drawn uniformly, then a picture of the right kind and a training phrasing.

    Returns ``(picture indices (B,), input ids (B, L), labels (B, L))``; labels are -100 except on the answer
    and its EOS (right padding).
    """
    types = rng.integers(0, len(QUESTION_TYPES), size=batch_size)
    pics, seqs, starts = [], [], []
    for t in types:
        name = QUESTION_TYPES[t]
        idx, answers = table[name]
        j = int(rng.integers(len(idx)))
        p = prompts[name][int(rng.integers(len(prompts[name])))]
        pics.append(int(idx[j]))
        seqs.append(p + answers[j])
        starts.append(len(p))
    ids, labels = padded_answers(seqs, starts, pad_id)
    return np.array(pics), ids, labels


def padded_answers(seqs: list[list[int]], starts: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input ids (B, L), labels (B, L))`` of token sequences right-padded with ``pad_id``; labels are -100 except
    from ``starts[k]`` on (the answer and its EOS), so only the answer is scored."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), length), -100, dtype=torch.long)
    for k, (s, st) in enumerate(zip(seqs, starts)):
        ids[k, :len(s)] = torch.tensor(s)
        labels[k, st:len(s)] = torch.tensor(s[st:])
    return ids, labels


def answer_loss(model, feats: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens; feats: vision features ``(B, T, vision hidden)``."""
    return projected_answer_loss(model, model.model.multi_modal_projector(feats), ids, labels)


def projected_answer_loss(model, image_embeds: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`answer_loss` given the projected image features ``(B, T, text hidden)`` (e.g. with a gradient
    through the vision tower, which :func:`vision_features` does not keep)."""
    emb = embed_prompts(model, ids, image_embeds)
    logits = model(inputs_embeds=emb).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def train_toy_llava(cfg: TrainConfig = TrainConfig(), progress: bool = True, clip_adapter=None):
    """Train projector + language model of a toy LLaVA on MiniCanvas questions. Returns ``(model, tokenizer,
    history)``; ``history``: dicts with step, loss and (every ``eval_every`` steps) held-out accuracy per type."""
    from ..data.minicanvas import cached_split

    model, tokenizer, clip_adapter = create_toy_llava(clip_adapter, seed=cfg.seed, feature_layer=cfg.feature_layer,
                                                      select_strategy=cfg.select_strategy)
    world = cached_split(n=cfg.n_train, seed=cfg.seed, split="train")
    pixels = clip_adapter.preprocess(torch.from_numpy(np.array(world.images)))
    feats = vision_features(model, pixels, progress=progress)  # the tower is frozen: computed once
    held_out = cached_split(n=cfg.n_eval, seed=cfg.seed, split="val")
    table = _answer_table(world, tokenizer)
    n_img = feats.shape[1]
    prompts = {t: [prompt_ids(tokenizer, q, n_img) for q in phrasings(t, "train")] for t in QUESTION_TYPES}

    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step):
        return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps)

    rng = np.random.default_rng(cfg.seed)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    history = []
    model.train()
    model.model.vision_tower.eval()
    bar = tqdm(range(cfg.steps), desc="training toy LLaVA", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        pics, ids, labels = training_batch(rng, table, prompts, pad_id, cfg.batch_size)
        loss = answer_loss(model, feats[torch.from_numpy(pics)], ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        record = {"step": step + 1, "loss": loss.item()}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            acc = answer_accuracy(model, tokenizer, clip_adapter, held_out)
            model.train()
            model.model.vision_tower.eval()
            record.update({f"{t}_top1": a["top1"] for t, a in acc.items()})
            bar.set_postfix({k[:5]: round(v, 3) for k, v in record.items() if k != "step"})
        history.append(record)
    model.eval()
    return model, tokenizer, history


def answer_accuracy(model, tokenizer, clip_adapter, world: MiniCanvas, split: str = "test",
                    question_types=QUESTION_TYPES, progress: bool = False) -> dict[str, dict]:
    """Exact-answer accuracy per question type on ``world``'s pictures, over the phrasings of ``split``.

    Returns ``{type: {"top1", "per_concept": {class name: accuracy}, "n"}}`` (fractions in [0, 1]; per_concept
    groups by the class the question is about: character for identity, shape for object and describe,
    colour, style). Delegates to :func:`slugkit.eval.vlm.answer_accuracy`.
    """
    from ..eval.vlm import answer_accuracy as _acc

    return _acc(model, tokenizer, clip_adapter.preprocess, world, split=split, question_types=question_types,
                progress=progress)


# ------------------------------------------------------------------------------------------------------
# Checkpoint
# ------------------------------------------------------------------------------------------------------
def save_checkpoint(model, tokenizer, path: Path, meta: dict) -> None:
    """fp16 trained parts + JSON metadata (LLaVA config without the vision tower's weights, vocabulary)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in trained_state(model).items()}
    meta = dict(meta, llava_config=model.config.to_dict(), vocab=tokenizer.convert_ids_to_tokens(
        list(range(len(tokenizer)))))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"slugkit": json.dumps(meta)})
    os.replace(tmp, path)
    os.chmod(path, 0o644)


def checkpoint_metadata(path: str | Path | None = None) -> dict:
    """The JSON metadata stored with the toy LLaVA checkpoint (recipe, history, accuracy, config, vocab)."""
    from safetensors import safe_open

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("slugkit", "{}"))


def load_toy_llava_model(path: str | Path | None = None, clip_adapter=None):
    """The trained toy LLaVA (fp32, eval mode): ``(model, processor, clip_adapter)``.

    The vision tower comes from ``toy-clip-hf`` (built from ``data/toy-clip.safetensors``); projector and
    language model from ``data/toy-llava.safetensors`` (or ``path``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"toy LLaVA checkpoint not found at {path}; rebuild it with "
                                "`slugkit toy build llava` or point SLUGKIT_DATA at the folder that holds it")
    try:
        state = load_file(str(path))
        meta = checkpoint_metadata(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"toy LLaVA checkpoint {path} is corrupt or not a safetensors file ({err}); "
                         "rebuild it with `slugkit toy build llava`") from err
    stored = meta.get("llava_config", {})
    model, tokenizer, clip_adapter = create_toy_llava(
        clip_adapter, vocab=meta.get("vocab"), feature_layer=stored.get("vision_feature_layer", -2),
        select_strategy=stored.get("vision_feature_select_strategy", "default"))
    expected = set(trained_state(model))
    if set(state) != expected:
        raise ValueError(f"toy LLaVA checkpoint {path} does not match the toy LLaVA architecture "
                         f"(missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}); "
                         "rebuild it with `slugkit toy build llava`")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.eval(), processor_for(clip_adapter, tokenizer, model.config), clip_adapter


def build(out_dir: str | Path | None = None, cfg: TrainConfig = TrainConfig(), progress: bool = True,
          threads: int | None = None) -> Path:
    """Train the toy LLaVA from scratch and write its checkpoint; returns the file written.

    The stored metadata holds the held-out accuracy per question type, measured after the fp16 round trip on
    the standard test split (2000 pictures, held-out phrasings). ``threads``: torch CPU threads (default: all
    cores; 1 is faster on a machine shared with other jobs).
    """
    from ..data.minicanvas import cached_split

    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    start = time.time()
    model, tokenizer, history = train_toy_llava(cfg, progress=progress)
    path = Path(out_dir or data_dir()) / CHECKPOINT_NAME
    meta = {"recipe": asdict(cfg), "train_seconds": round(time.time() - start, 1),
            "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
            "history": [h for h in history if len(h) > 2]}
    save_checkpoint(model, tokenizer, path, meta)
    measure_checkpoint(path, progress=progress)
    return path


def measure_checkpoint(path: str | Path | None = None, progress: bool = True) -> dict:
    """Measure a toy LLaVA checkpoint as stored (fp16 round trip) on the standard test split (2000 pictures,
    held-out phrasings) and write the accuracy per question type into its metadata (``answer_top1``)."""
    from ..data.minicanvas import cached_split

    path = Path(path) if path else data_dir() / CHECKPOINT_NAME
    meta = checkpoint_metadata(path)
    reloaded, processor, clip_adapter = load_toy_llava_model(path)
    acc = answer_accuracy(reloaded, processor.tokenizer, clip_adapter, cached_split(n=2000, seed=0, split="test"),
                          progress=progress)
    meta["answer_top1"] = {t: round(a["top1"], 4) for t, a in acc.items()}
    save_checkpoint(reloaded, processor.tokenizer, path, {k: v for k, v in meta.items()
                                                          if k not in ("llava_config", "vocab")})
    return meta["answer_top1"]

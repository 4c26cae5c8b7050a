"""LLaVA as a SLUG host: a transformers ``LlavaForConditionalGeneration`` whose vision tower is a CLIP vision tower.

SLUG runs on the matching CLIP (``toy-clip-hf`` for the toy LLaVA, ``hf:openai/clip-vit-large-patch14-336`` for
LLaVA-1.5), restricted to vision blocks LLaVA actually reads: it takes its image features from hidden state
``vision_feature_layer`` (-2 for LLaVA-1.5), so an edit in any later block changes nothing it sees. The
tower-scoped patch then applies to ``llava.model.vision_tower``, whose parameter names equal ``clip.vision_model``'s.

Example::

    host = load_toy_llava()
    host.ask(images, "Who is this?")                  # ['Mira Quell', ...]
    result = slugkit.slug.unlearn_host(host, "Mira Quell")
    host.apply(result.patch); host.ask(images, "Who is this?")
"""
from __future__ import annotations

import functools
import json
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..step_size_search import Target
from .host import Host, HostRecipe
from .openclip import _is_pil_list, uint8_to_pixels

DEFAULT_REAL_CLIP = "hf:openai/clip-vit-large-patch14-336"  # LLaVA-1.5's vision tower
REAL_QUESTION = "What's the name of the person in this image?"  # the paper's question

# The public config of llava-hf/llava-1.5-7b-hf (CLIP ViT-L/14-336 tower, Vicuna-7B), for sizes without weights.
LLAVA_1_5_7B = {
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 336, "patch_size": 14, "projection_dim": 768},
    "text": {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
}

# How SLUG runs on LLaVA (``unlearn_host(preset=...)``, ``slugkit unlearn --preset``). Step sizes searched on the
# host are searched on LLaVA's answers to the name question (``generation_evaluator``): forget_top1 is the share of
# answers that contain the name, forget_top5 the share with the name's first token among the 5 likeliest.
LLAVA_RECIPES = {
    "reference": HostRecipe(
        forget_text="name", policy="deepest", search="host", target=Target("forget_top1"), max_evals=10, rtol=0.0,
        search_options={"pool": 2000, "n_forget": 10, "n_other": 10, "questions": "paper", "n_vqa": 300},
        fixed=True, about="the authors' LLaVA code: bare-name forget text, the deepest Pareto layer of the vision "
                          "tower, the step size searched on LLaVA's answers until none names the character"),
    "clip-side": HostRecipe(
        forget_text="captions", policy="pareto", search="clip", target=Target("forget_top5"),
        about="slugkit's CLIP-side recipe before issue 20: captions, every Pareto layer searched on the CLIP's "
              "forget top-5, the best kept; LLaVA takes no part in the search"),
}
LLAVA_RECIPES["slugkit"] = HostRecipe(**{
    **LLAVA_RECIPES["reference"].settings(), "rtol": 0.05,
    "search_options": {"pool": 2000, "n_forget": None, "n_other": 150, "questions": "all", "n_vqa": 300}},
    about="the authors' recipe, its step size searched on every validation picture of the character (about 75, not "
          "10) and every name phrasing, with slugkit's early stop")
LLAVA_RECIPES["orthogonal"] = HostRecipe(**{**LLAVA_RECIPES["slugkit"].settings(), "project_others": True},
                                         about="slugkit's recipe with the edit direction made orthogonal to the other "
                                               "characters' forget gradients on the edited layer")
# The guard of the walk: on the search pictures, the other names may drop by at most 10 points and VQA by 5 (the bar
# of issue 20, read where the search reads, never on the report's test pictures)
WALK_GUARD = {"retain_top1": 0.10, "utility": 0.05}
LLAVA_RECIPES["guarded"] = HostRecipe(**{
    **LLAVA_RECIPES["orthogonal"].settings(), "policy": "deepest-block", "max_layers": 2, "fallback": True,
    "guard_stop": 2.0,
    "target": Target("forget_top1", guard_metric=tuple(WALK_GUARD), guard_tolerance=tuple(WALK_GUARD.values()))},
    about="`orthogonal` with a guarded walk: the deepest Pareto layer first, then the next layer of its block; the "
          "first whose searched step keeps the other names within 10 points and VQA within 5 on the search "
          "pictures is kept, else the best-scoring step that silenced the name")


class LlavaHost(Host):
    """A LLaVA model with its processor, seen as a host of a CLIP vision tower.

    ``world``: the MiniCanvas split used by :meth:`evaluate` / :meth:`report_metrics` (toy LLaVA), or None for
    real models, which are measured on ``pairs`` (image-caption pairs naming ``classes``) instead.
    """

    tower = "vision"
    scope = "vision_model"
    presets = LLAVA_RECIPES
    default_preset = "guarded"  # meets issue 20's bar on the 13 toy characters (docs/llava.md); "slugkit" did not

    def __init__(self, model: nn.Module, processor, name: str, clip_name: str, world=None, pairs=None,
                 classes: Sequence[str] | None = None, question: str = REAL_QUESTION, n_eval: int = 1000):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name, self.clip_name = name, clip_name
        self.world, self.pairs = world, pairs
        self.classes = list(classes or [])
        self.question = question
        self.n_eval = int(n_eval)
        self.max_block = self.deepest_read_block(model.config)
        ip = processor.image_processor
        self._mean = tuple(float(v) for v in ip.image_mean)
        self._std = tuple(float(v) for v in ip.image_std)
        crop = getattr(ip, "crop_size", None) or {}
        self._size = int(crop.get("height") or model.config.vision_config.image_size)

    # ------------------------------------------------------------------ the tower
    @staticmethod
    def deepest_read_block(config) -> int:
        """Deepest 0-based vision block whose output reaches the language model (from ``vision_feature_layer``).

        hidden_states[k] is the output of block k - 1 (hidden_states[0]: the embeddings), so with 6 blocks and
        ``vision_feature_layer=-2`` LLaVA reads hidden_states[5], the output of block 4.
        """
        from ..models.toy_llava import feature_layer_blocks

        return max(feature_layer_blocks(config))

    def tower_module(self) -> nn.Module:
        """``model.model.vision_tower``: a ``CLIPVisionModel`` laid out like ``CLIPModel.vision_model``."""
        tower = self.model.model.vision_tower
        inner = getattr(tower, "vision_model", None)  # older transformers wrap the transformer once more
        return inner if isinstance(inner, nn.Module) and hasattr(inner, "encoder") else tower

    # ------------------------------------------------------------------ asking questions
    def preprocess(self, images) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` or a list of PIL images -> pixels ``(N, 3, S, S)`` as the processor makes them."""
        if _is_pil_list(images):
            return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"].float()
        return uint8_to_pixels(images, self._size, self._mean, self._std)

    @torch.no_grad()
    def ask(self, images, question: str, max_new_tokens: int = 10, tower=None) -> list[str]:
        """Greedy answers to ``question`` about each picture (uint8 ``(N, H, W, 3)`` or PIL images); ``tower``:
        read the image features from this module (laid out like the vision tower) instead of LLaVA's own."""
        from ..models.toy_llava import greedy_answers, image_embeddings

        embeds = image_embeddings(self.model, self.preprocess(images), tower=tower)
        return greedy_answers(self.model, self.tokenizer, embeds, question, max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def chat(self, image, question: str, max_new_tokens: int = 10) -> str:
        """One answer through the public API: ``LlavaProcessor`` + ``generate`` (greedy)."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        text = f"USER: <image>\n{question} ASSISTANT:"
        inputs = self.processor(images=[image], text=[text], return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ the Host contract
    def check_concept(self, concept: str) -> None:
        """The toy LLaVA is asked for names: only a character can be forgotten (checked before any work)."""
        if self.world is None:
            return
        from ..data.minicanvas import CHARACTER_NAMES, find_concept

        kind = find_concept(concept)["kind"]
        if kind != "character":
            article = "an" if kind[0] in "aeiou" else "a"
            raise ValueError(f"{self.name!r} forgets characters (its forget rate counts answers naming them), and "
                             f"{concept!r} is {article} {kind}: pick one of {', '.join(CHARACTER_NAMES)}")

    def other_concepts(self, concept: str) -> list[str]:
        """The other names LLaVA is asked to tell apart: the other characters (toy), or ``classes`` (real)."""
        from ..data.minicanvas import CHARACTER_NAMES

        names = CHARACTER_NAMES if self.world is not None else self.classes
        return [c for c in names if c.lower() != concept.lower()]

    def patch_footprint(self, patch) -> dict:
        """:meth:`Host.patch_footprint` plus ``share_of_model`` (of every parameter of this LLaVA) and
        ``llava_1_5_7b``: the same tensors' share of LLaVA-1.5-7B's tower and model, from its public config
        (:data:`LLAVA_1_5_7B`; built on the meta device, so nothing is downloaded or allocated)."""
        out = super().patch_footprint(patch)
        out["share_of_model"] = out["params"] / sum(p.numel() for p in self.model.parameters())
        out["llava_1_5_7b"] = reference_footprint([n[len(self.scope) + 1:] for n in patch.deltas])
        return out

    def _eval_world(self):
        if self.world is None:
            raise ValueError(f"{self.name!r} has no built-in evaluation set: `evaluate` measures the toy world "
                             "model 'toy-llava'; real LLaVA models report forget/retain rates on --data pictures")
        return self.world

    def evaluate(self, progress: bool = True) -> dict:
        """Answer accuracy per question type on held-out pictures and held-out phrasings:
        ``{type: {"top1", "per_concept": {class: x}, "n"}}``."""
        from ..eval.vlm import answer_accuracy

        return answer_accuracy(self.model, self.tokenizer, self.preprocess, self._eval_world(), split="test",
                               progress=progress)

    def measure(self, concept: str, progress: bool = False) -> dict:
        """The VLM metrics of the model as it is now (see :func:`slugkit.eval.vlm.vlm_metrics`)."""
        from ..eval.vlm import real_vlm_metrics, vlm_metrics

        if self.world is not None:
            return vlm_metrics(self.model, self.tokenizer, self.preprocess, self.world, concept, progress=progress)
        if self.pairs is None:
            raise ValueError(f"{self.name!r} needs image-caption pairs to measure a forget rate: load it with "
                             "data=<image folder, CSV or webdataset shards> and classes=[other names]")
        return real_vlm_metrics(self, concept, progress=progress)

    def report_metrics(self, concept: str, patch, progress: bool = True) -> dict:
        """``vlm_forget_rate``, ``vlm_retain_acc``, ``vlm_vqa_acc`` (toy only) ``_before``/``_after`` the patch,
        ``vlm_name_prob_before/_after`` (mean probability of the name's first token on forget pictures) and
        ``examples``: before/after answers to the name question on a few forget pictures."""
        before = self.measure(concept, progress=progress)
        self.apply(patch)
        try:
            after = self.measure(concept, progress=progress)
        finally:
            self.revert(patch)
        out = {}
        for key, value in before.items():
            if isinstance(value, (int, float)):
                out[f"{key}_before"], out[f"{key}_after"] = float(value), float(after[key])
        if "vlm_vqa_per_type" in before:  # not a flat _before/_after pair: a dict per side
            out["vlm_vqa_per_type"] = {"before": before["vlm_vqa_per_type"], "after": after["vlm_vqa_per_type"]}
        out["examples"] = [dict(b, before=b.pop("answer"), after=a["answer"])
                           for b, a in zip(before["examples"], after["examples"])]
        return {k: v for k, v in out.items() if v is not None}

    def generation_evaluator(self, concept: str, clip, pool: int = 300, n_forget: int | None = None,
                             n_other: int | None = None, questions: str = "held-out", n_vqa: int | None = None):
        """For ``search="generation"`` / ``"host"``: forget/retain/utility measured on LLaVA's answers, with the
        CLIP's current (possibly edited) vision tower in place of the host's.

        The search pictures are the first ``pool`` validation pictures (never the report's test pictures): the
        first ``n_forget`` of the character, ``n_other`` of the other characters (default all), VQA on the object
        pictures among the first ``n_vqa``. ``questions``: "paper" (the one name question the paper asks),
        "held-out" (the two held-out identity phrasings) or "all" (every phrasing the report's forget rate uses,
        :func:`slugkit.eval.vlm.name_questions`).

        ``forget_top1``: share of (forget picture, question) answers that contain the name; ``forget_top5``:
        share where the name's first token is among the 5 likeliest first answer tokens; ``retain_top1``: the
        name rate on the other characters; ``utility``: exact VQA answers.

        A real LLaVA (no toy world) is asked ``self.question`` about its ``pairs`` instead (the first ``n_forget``
        pictures of the concept, ``n_other`` of the ``classes``; the same pictures its report uses):
        ``forget_top1`` and ``retain_top1`` only, the others NaN.
        """
        from ..data.minicanvas import cached_split
        from ..eval.vlm import name_questions, real_vlm_metrics, search_metrics
        from ..models.toy_llava import phrasings

        tower = clip.model.get_submodule(self.scope)
        if self.world is None:
            if self.pairs is None:
                raise ValueError(f"{self.name!r} needs image-caption pairs to search on its answers: load it with "
                                 "data=<image folder, CSV or webdataset shards> and classes=[other names]")

            def on_pairs(edited_tower=None, block=None) -> dict:
                m = real_vlm_metrics(self, concept, tower=tower, n_forget=n_forget, n_other=n_other)
                return {"forget_top1": m["vlm_forget_rate"], "forget_top5": float("nan"),
                        "retain_top1": m.get("vlm_retain_acc", float("nan")), "utility": float("nan")}

            return on_pairs
        asked = {"paper": phrasings("identity", "test")[:1], "held-out": phrasings("identity", "test"),
                 "all": name_questions()}
        if questions not in asked:
            raise ValueError(f"questions must be one of {', '.join(map(repr, asked))}, got {questions!r}")
        world = cached_split(n=pool, seed=0, split="val")

        def evaluate(edited_tower=None, block=None) -> dict:
            return search_metrics(self.model, self.tokenizer, self.preprocess, world, concept, tower=tower,
                                  n_forget=n_forget, n_other=n_other, questions=asked[questions], n_vqa=n_vqa)

        return evaluate


@functools.lru_cache(maxsize=4)
def _meta_counts(config_json: str) -> tuple[dict[str, int], int, int]:
    """``({tower parameter name: numel}, tower parameters, model parameters)`` of the LLaVA of a config."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = json.loads(config_json)
    llava_config = LlavaConfig(vision_config=CLIPVisionConfig(**config["vision"]),
                               text_config=LlamaConfig(**config["text"]),
                               vision_feature_layer=config["vision_feature_layer"],
                               vision_feature_select_strategy=config["vision_feature_select_strategy"],
                               projector_hidden_act=config["projector_hidden_act"])
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config)
    tower = model.model.vision_tower
    tower = tower if hasattr(tower, "encoder") else tower.vision_model
    named = {n: p.numel() for n, p in tower.named_parameters()}
    return named, sum(named.values()), sum(p.numel() for p in model.parameters())


def reference_footprint(tower_names: Sequence[str], config: dict = LLAVA_1_5_7B) -> dict:
    """Parameters of the vision-tower tensors ``tower_names`` (e.g. ``encoder.layers.5.mlp.fc2.weight``) in the
    LLaVA of ``config`` (default LLaVA-1.5-7B), and their share of its tower and of the whole model.

    Built from the config numbers on the meta device: no weights. A block index beyond the model's blocks is
    refused (the same layer kind sits in every block with the same shape, so any block < its depth works).
    """
    named, tower_params, model_params = _meta_counts(json.dumps(config, sort_keys=True))
    missing = [n for n in tower_names if n not in named]
    if missing:
        raise ValueError(f"{missing[:3]} are not parameters of a {config['vision']['num_hidden_layers']}-block "
                         "CLIP vision tower")
    params = sum(named[n] for n in tower_names)
    return {"tensors": list(tower_names), "params": int(params), "tower_params": int(tower_params),
            "model_params": int(model_params), "share_of_tower": params / tower_params,
            "share_of_model": params / model_params}


# ---------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------
def load_toy_llava(n_eval: int = 1000, path: str | os.PathLike | None = None) -> LlavaHost:
    """The toy LLaVA (vision tower = ``toy-clip-hf``), measured on the first ``n_eval`` held-out test pictures."""
    from ..data.minicanvas import cached_split
    from ..models.loading import ModelNotAvailableError
    from ..models.toy_llava import load_toy_llava_model

    try:
        model, processor, _ = load_toy_llava_model(path)
    except FileNotFoundError as err:
        raise ModelNotAvailableError(f"model 'toy-llava' is not available: {err}") from err
    world = cached_split(n=2000, seed=0, split="test")
    if n_eval < len(world):
        world = world.take(np.arange(n_eval))
    return LlavaHost(model, processor, "toy-llava", "toy-clip-hf", world=world, n_eval=n_eval)


def load_llava(spec: str, clip: str | None = None, data=None, classes: Sequence[str] | None = None,
               question: str = REAL_QUESTION, device: str | torch.device = "cpu",
               cache_dir: str | os.PathLike | None = None) -> LlavaHost:
    """A real LLaVA by name: ``llava:<Hugging Face repo id or local dir>`` (e.g. ``llava:llava-hf/llava-1.5-7b-hf``).

    ``clip`` names the CLIP SLUG runs on (default ``hf:openai/clip-vit-large-patch14-336``, LLaVA-1.5's tower);
    ``data`` (image folder, CSV or webdataset shards) and ``classes`` (names it must keep) are used by
    :meth:`LlavaHost.report_metrics`. Fails at once with :class:`ModelNotAvailableError` when the weights are not
    local and the hub is offline (``HF_HUB_OFFLINE=1``).
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ..models.loading import ModelNotAvailableError, _forced_hub_offline, hub_offline

    if not isinstance(spec, str) or not spec.startswith("llava:") or not spec[len("llava:"):].strip():
        raise ValueError(f"cannot load LLaVA {spec!r}: expected 'llava:<Hugging Face repo id or local directory>' "
                         "(e.g. 'llava:llava-hf/llava-1.5-7b-hf')")
    src = os.path.expanduser(spec[len("llava:"):].strip())
    local = os.path.isdir(src)
    offline = hub_offline()
    kw = {"cache_dir": str(cache_dir) if cache_dir else None, "local_files_only": offline or local}
    try:
        with _forced_hub_offline(offline):
            model = LlavaForConditionalGeneration.from_pretrained(src, **kw)
            processor = AutoProcessor.from_pretrained(src, **kw)
    except OSError as err:
        where = f"the local directory {src!r} lacks a LLaVA model or processor" if local else (
            "offline and not in the Hugging Face cache" if offline else "it could not be downloaded or found")
        raise ModelNotAvailableError(
            f"model {spec!r} is not available ({where}): put it in the Hugging Face cache (HF_HOME) while online, "
            "or give a local directory as 'llava:<path>'") from err
    pairs = None
    if data is not None:
        from ..data.sources import open_pairs

        pairs = data if hasattr(data, "captions") else open_pairs(data)
    return LlavaHost(model.to(device), processor, spec, clip or DEFAULT_REAL_CLIP, pairs=pairs, classes=classes,
                     question=question)

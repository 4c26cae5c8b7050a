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

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .host import Host
from .openclip import _is_pil_list, uint8_to_pixels

DEFAULT_REAL_CLIP = "hf:openai/clip-vit-large-patch14-336"  # LLaVA-1.5's vision tower
REAL_QUESTION = "What's the name of the person in this image?"  # the paper's question


class LlavaHost(Host):
    """A LLaVA model with its processor, seen as a host of a CLIP vision tower.

    ``world``: the MiniCanvas split used by :meth:`evaluate` / :meth:`report_metrics` (toy LLaVA), or None for
    real models, which are measured on ``pairs`` (image-caption pairs naming ``classes``) instead.
    """

    tower = "vision"
    scope = "vision_model"

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
    def ask(self, images, question: str, max_new_tokens: int = 10) -> list[str]:
        """Greedy answers to ``question`` about each picture (uint8 ``(N, H, W, 3)`` or PIL images)."""
        from ..models.toy_llava import greedy_answers, image_embeddings

        embeds = image_embeddings(self.model, self.preprocess(images))
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

    def generation_evaluator(self, concept: str, clip):
        """For ``search="generation"``: forget/retain/utility measured on LLaVA's answers (validation pictures),
        with the CLIP's current (possibly edited) vision tower in place of the host's.

        ``forget_top1``: share of (forget picture, identity phrasing) answers that contain the name;
        ``forget_top5``: share where the name's first token is among the 5 likeliest first answer tokens;
        ``retain_top1``: the name rate on the other characters; ``utility``: exact VQA answers.
        """
        from ..data.minicanvas import cached_split
        from ..eval.vlm import search_metrics

        if self.world is None:
            raise ValueError(f"{self.name!r}: the answer-based search needs the toy world ('toy-llava')")
        world = cached_split(n=300, seed=0, split="val")
        tower = clip.model.get_submodule(self.scope)

        def evaluate(edited_tower=None, block=None) -> dict:
            return search_metrics(self.model, self.tokenizer, self.preprocess, world, concept, tower=tower)

        return evaluate


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

"""Adapter for Hugging Face ``transformers.CLIPModel`` (separate q/k/v projections)."""
from __future__ import annotations

import html
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import CLIPAdapter, LayerInfo, generic_kind, select_candidates
from .openclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _is_pil_list, uint8_to_pixels

# (parameter suffix inside an encoder layer, kind), in order of position inside the block
_HF_BLOCK_PARAMS = (
    ("self_attn.q_proj.weight", "attn_q"),
    ("self_attn.k_proj.weight", "attn_k"),
    ("self_attn.v_proj.weight", "attn_v"),
    ("self_attn.out_proj.weight", "attn_out"),
    ("mlp.fc1.weight", "mlp_fc"),
    ("mlp.fc2.weight", "mlp_proj"),
)
# forward order inside an encoder layer (HF registers k, v, q and the norms in another order)
_HF_FORWARD_ORDER = ("layer_norm1", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm2", "fc1", "fc2", "")

try:  # the original CLIP / open_clip text cleaning; ftfy comes with open_clip
    import ftfy as _ftfy
except ImportError:  # pragma: no cover
    _ftfy = None


def clean_caption(text: str) -> str:
    """CLIP's text cleaning: ftfy fix, HTML unescape (twice), collapse whitespace, strip."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).strip()


def _size_of(value, default: int) -> int:
    """An int edge length from an HF size spec (int, dict with shortest_edge/height, or None)."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and value:
        return int(value[0])
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if value.get(key):
                return int(value[key])
    return default


def _run_layer(layer, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIP encoder layer without attention mask (vision tower); tuple outputs of older versions."""
    out = layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out


class _EncoderReached(Exception):
    """Raised by a hook to stop the text model where its encoder starts."""


class HFCLIPAdapter(CLIPAdapter):
    """Wraps a ``CLIPModel``, a CLIP tokenizer and optionally a ``CLIPImageProcessor``."""

    family = "hf-clip"

    def __init__(self, model: nn.Module, tokenizer, image_processor=None, name: str = "hf-clip"):
        super().__init__(model, name)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.image_size = int(_size_of(model.config.vision_config.image_size, 224))
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        if image_processor is not None:
            mean = tuple(getattr(image_processor, "image_mean", None) or mean)
            std = tuple(getattr(image_processor, "image_std", None) or std)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, max_position_embeddings)``, int64; padded/truncated to the model's context."""
        if isinstance(texts, str):
            texts = [texts]
        cleaned = [clean_caption(t) for t in texts]
        enc = self.tokenizer(
            cleaned, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return enc["input_ids"].to(torch.long)

    def _pil_to_pixels(self, images) -> torch.Tensor:
        if self.image_processor is not None:
            out = self.image_processor(images=list(images), return_tensors="pt")
            return out["pixel_values"].to(torch.float32)
        from torchvision import transforms as T

        tf = T.Compose([
            T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(self.image_size),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])
        return torch.stack([tf(im.convert("RGB")) for im in images])

    def preprocess(self, images) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` or list of PIL images -> float32 ``(B, 3, S, S)`` on CPU."""
        if _is_pil_list(images):
            return self._pil_to_pixels(images)
        return uint8_to_pixels(images, self.image_size, self.mean, self.std)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> L2-normalised ``(B, D)``."""
        pooled = self.model.vision_model(pixel_values=pixels.to(self.device), return_dict=True).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, ctx)`` int64 -> L2-normalised ``(B, D)`` (causal mask only, like open_clip). Only the positions up
        to the batch's last end-of-text token run (:meth:`_trim`): the same numbers, less work for short captions."""
        pooled = self.model.text_model(input_ids=self._trim(tokens.to(self.device)), return_dict=True).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    def _eos(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of the pooled token of each row of ``ids``, as ``CLIPTextModel`` finds it: the highest id
        (configs with the old eos id 2) or the first eos."""
        ids = ids.to(torch.int)
        eos_id = self.model.text_model.eos_token_id
        return ids.argmax(dim=-1) if eos_id == 2 else (ids == eos_id).int().argmax(dim=-1)

    def _trim(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` without the columns after the batch's last pooled token: the text tower is causal, so no later
        position can reach a pooled one."""
        return ids[:, :int(self._eos(ids).max()) + 1] if ids.shape[1] > 1 else ids

    def blocks(self, tower: str) -> list[nn.Module]:
        """The ``encoder.layers`` of ``vision_model`` or ``text_model``, in order (batch-first)."""
        if tower not in ("vision", "text"):
            raise ValueError(f"unknown tower {tower!r}; expected 'vision' or 'text'")
        return list(getattr(self.model, f"{tower}_model").encoder.layers)

    def token_embedding(self) -> nn.Module:
        """``text_model.embeddings.token_embedding`` (an ``nn.Embedding``)."""
        return self.model.text_model.embeddings.token_embedding

    def token_strings(self, tokens: torch.Tensor) -> list[str]:
        """The tokenizer's piece for each id."""
        return list(self.tokenizer.convert_ids_to_tokens([int(t) for t in tokens]))

    supports_vision_resume = True
    supports_text_resume = True

    def _check_block(self, block: int, tower: str = "vision") -> None:
        n = len(getattr(self.model, f"{tower}_model").encoder.layers)
        if not 0 <= block <= n:
            raise ValueError(f"{tower} resume block must be in 0..{n} (an edit before block 0 needs the whole "
                             f"tower), got {block}")

    def vision_state(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        self._check_block(block)
        vm = self.model.vision_model
        return self.advance_vision_state(vm.pre_layrnorm(vm.embeddings(pixels.to(self.device))), 0, block)

    def advance_vision_state(self, state: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        self._check_block(start)
        self._check_block(stop)
        for layer in self.model.vision_model.encoder.layers[start:stop]:
            state = _run_layer(layer, state)
        return state

    def encode_image_from(self, state: torch.Tensor, block: int) -> torch.Tensor:
        vm = self.model.vision_model
        h = self.advance_vision_state(state, block, len(vm.encoder.layers))
        pooled = vm.post_layernorm(h[:, 0])
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def text_state(self, tokens: torch.Tensor, block: int) -> dict:
        """What enters text layer ``block``: ``{"hidden", "mask", "kwargs", "ids"}``. The text model runs up to
        its encoder, which is stopped there, so the attention mask and keyword arguments are exactly those the
        installed transformers version builds."""
        self._check_block(block, "text")
        tm, ids = self.model.text_model, self._trim(tokens.to(self.device))
        seen = {}

        def stop(module, args, kwargs):
            seen.update(args=args, kwargs=kwargs)
            raise _EncoderReached

        handle = tm.encoder.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            tm(input_ids=ids, return_dict=True)
        except _EncoderReached:
            pass
        finally:
            handle.remove()
        kwargs = dict(seen["kwargs"])
        hidden = seen["args"][0] if seen["args"] else kwargs.pop("inputs_embeds")
        mask = seen["args"][1] if len(seen["args"]) > 1 else kwargs.pop("attention_mask", None)
        state = {"hidden": hidden, "mask": mask, "kwargs": kwargs, "ids": ids}
        return self._text_layers(state, 0, block)

    def _text_layers(self, state: dict, start: int, stop: int) -> dict:
        h = state["hidden"]
        for layer in self.model.text_model.encoder.layers[start:stop]:  # as CLIPEncoder.forward calls them
            h = layer(h, state["mask"], **state["kwargs"])
            h = h[0] if isinstance(h, tuple) else h
        return {**state, "hidden": h}

    def encode_text_from(self, state: dict, block: int) -> torch.Tensor:
        self._check_block(block, "text")
        tm = self.model.text_model
        h = tm.final_layer_norm(self._text_layers(state, block, len(tm.encoder.layers))["hidden"])
        pooled = h[torch.arange(h.shape[0], device=h.device), self._eos(state["ids"])]
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    TOWER_SCOPES = {"vision": "vision_model", "text": "text_model"}

    def patch_scope(self, layer: str) -> str:
        """``"text_model"`` or ``"vision_model"`` for a layer inside a tower (what SD / LLaVA embed), else ``""``."""
        return next((s for s in self.TOWER_SCOPES.values() if layer.startswith(s + ".")), "")

    def logit_scale(self) -> torch.Tensor:
        """``exp(model.logit_scale)``, a scalar tensor."""
        return self.model.logit_scale.exp().reshape(())

    def describe_parameters(self) -> list[LayerInfo]:
        """Every parameter but ``logit_scale``: tower, block (-1 before the encoder layers, ``n`` after) and kind.

        Stem (block -1): ``embeddings.*`` and the vision ``pre_layrnorm``; head (block n):
        ``post_layernorm`` / ``final_layer_norm`` and ``visual_projection`` / ``text_projection``.
        """
        params = dict(self.model.named_parameters())
        kinds = dict(_HF_BLOCK_PARAMS)
        rows = []
        for t, (tower, prefix, head) in enumerate((("vision", "vision_model", "visual_projection"),
                                                   ("text", "text_model", "text_projection"))):
            layers = getattr(self.model, prefix).encoder.layers
            for i in range(len(layers)):
                for suffix, _ in _HF_BLOCK_PARAMS:
                    if f"{prefix}.encoder.layers.{i}.{suffix}" not in params:
                        raise ValueError(f"unexpected CLIPModel layout: no parameter "
                                         f"{prefix}.encoder.layers.{i}.{suffix!r}")
            n, blocks = len(layers), f"{prefix}.encoder.layers."
            for order, (name, p) in enumerate(params.items()):
                if not (name.startswith(prefix + ".") or name.startswith(head + ".")):
                    continue
                if name.startswith(blocks):
                    block, suffix = name[len(blocks):].split(".", 1)
                    block, kind = int(block), kinds.get(suffix) or generic_kind(name)
                    rank = next(k for k, part in enumerate(_HF_FORWARD_ORDER) if part in suffix)
                else:
                    stem = name.startswith((f"{prefix}.embeddings.", f"{prefix}.pre_layrnorm."))
                    block, kind = (-1 if stem else n), generic_kind(name)
                    rank = 1 if name.startswith(head + ".") else 0  # the projection comes after the final norm
                rows.append((t, block, rank, order, LayerInfo(name, tower, block, kind, tuple(p.shape))))
        return [r[-1] for r in sorted(rows, key=lambda r: r[:4])]

    def candidate_layers(self, candidates: str = "default") -> list[LayerInfo]:
        """Default: q, k, v, out, fc1, fc2 of every vision encoder layer, then every text encoder layer.
        Reference: every parameter except biases, logit_scale, position and token embeddings."""
        return select_candidates(self.describe_parameters(), candidates)

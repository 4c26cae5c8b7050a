"""Convert open_clip ViT CLIP models to Hugging Face ``CLIPModel`` and build a matching offline tokenizer."""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

OPENCLIP_SOT, OPENCLIP_EOT = "<start_of_text>", "<end_of_text>"
OPENCLIP_SOT_ID, OPENCLIP_EOT_ID = 49406, 49407


def _unsupported(what: str) -> ValueError:
    return ValueError(
        f"cannot convert this open_clip model to transformers.CLIPModel: {what} "
        "(supported: a plain open_clip CLIP with a ViT vision tower using class-token pooling, ln_pre, ln_post and "
        "proj, and the built-in causal text transformer with argmax/EOT pooling and a bias-free text projection)"
    )


def _activation(block: nn.Module) -> str:
    from open_clip.transformer import QuickGELU

    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        if act.approximate == "none":
            return "gelu"
        if act.approximate == "tanh":
            return "gelu_pytorch_tanh"
    raise _unsupported(f"MLP activation {act!r}")


def _tower_spec(blocks: nn.ModuleList, norms: list[nn.Module], where: str) -> dict:
    """Check a stack of open_clip resblocks and return the shared hyper-parameters."""
    from open_clip.transformer import ResidualAttentionBlock

    if len(blocks) == 0:
        raise _unsupported(f"{where} tower has no transformer blocks")
    acts, eps = set(), set()
    for i, blk in enumerate(blocks):
        if not isinstance(blk, ResidualAttentionBlock) or not isinstance(blk.attn, nn.MultiheadAttention):
            raise _unsupported(f"{where} block {i} is {type(blk).__name__} (custom attention blocks)")
        if not isinstance(blk.ls_1, nn.Identity) or not isinstance(blk.ls_2, nn.Identity):
            raise _unsupported(f"{where} block {i} uses LayerScale")
        if hasattr(blk, "ln_1_kv"):
            raise _unsupported(f"{where} block {i} is a cross-attention block")
        attn = blk.attn
        if attn.in_proj_weight is None or attn.in_proj_bias is None or attn.out_proj.bias is None:
            raise _unsupported(f"{where} block {i} attention without fused biased in_proj")
        if blk.mlp.c_fc.bias is None or blk.mlp.c_proj.bias is None:
            raise _unsupported(f"{where} block {i} MLP without biases")
        acts.add(_activation(blk))
        norms = norms + [blk.ln_1, blk.ln_2]
    for ln in norms:
        if not isinstance(ln, nn.LayerNorm) or not ln.elementwise_affine or ln.bias is None:
            raise _unsupported(f"{where} tower has a non-affine or non-LayerNorm norm ({type(ln).__name__})")
        eps.add(float(ln.eps))
    if len(acts) != 1 or len(eps) != 1:
        raise _unsupported(f"{where} tower mixes activations {acts} or LayerNorm eps {eps}")
    blk = blocks[0]
    return {
        "hidden_size": int(blk.attn.embed_dim),
        "num_attention_heads": int(blk.attn.num_heads),
        "intermediate_size": int(blk.mlp.c_fc.out_features),
        "num_hidden_layers": len(blocks),
        "hidden_act": acts.pop(),
        "layer_norm_eps": eps.pop(),
    }


def _square(v, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise _unsupported(f"non-square {what} {tuple(v)}")
        v = v[0]
    return int(v)


def _check_and_describe(model: nn.Module) -> tuple[dict, dict, int]:
    """(vision_config kwargs, text_config kwargs, projection dim) for a supported open_clip CLIP."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise _unsupported(f"vision tower is {type(visual).__name__}, not an open_clip VisionTransformer (non-ViT)")
    if hasattr(model, "text") or not hasattr(model, "token_embedding") or not hasattr(model, "transformer"):
        raise _unsupported("custom text tower (CustomTextCLIP / CoCa / HF text encoder)")
    if getattr(visual, "attn_pool", None) is not None:
        raise _unsupported("attentional pooling in the vision tower")
    if visual.pool_type != "tok":
        raise _unsupported(f"vision pool_type {visual.pool_type!r} (only class-token pooling)")
    if isinstance(visual.ln_pre, nn.Identity):
        raise _unsupported("vision tower without ln_pre")
    if visual.proj is None or getattr(visual, "output_tokens", False):
        raise _unsupported("vision tower without output projection")
    if visual.conv1.bias is not None:
        raise _unsupported("patch embedding with bias")
    if getattr(model, "logit_bias", None) is not None:
        raise _unsupported("logit_bias (SigLIP-style loss)")
    if model.attn_mask is None:
        raise _unsupported("text tower without causal mask")
    pool = getattr(model, "text_pool_type", "argmax")
    eos_id = getattr(model, "text_eos_id", None)
    if pool not in ("argmax", "eos") or (pool == "eos" and (eos_id is None or eos_id == 2)):
        raise _unsupported(f"text pool_type {pool!r} (only argmax/EOT pooling)")
    tp = model.text_projection
    if tp is None or (isinstance(tp, nn.Linear) and tp.bias is not None):
        raise _unsupported("text projection with proj_bias or without projection")

    vspec = _tower_spec(visual.transformer.resblocks, [visual.ln_pre, visual.ln_post], "vision")
    tspec = _tower_spec(model.transformer.resblocks, [model.ln_final], "text")
    v_out = visual.proj.shape[1]
    t_out = tp.weight.shape[0] if isinstance(tp, nn.Linear) else tp.shape[1]
    if v_out != t_out:
        raise _unsupported(f"different projection dims (vision {v_out}, text {t_out})")
    if visual.positional_embedding.shape[0] != visual.grid_size[0] * visual.grid_size[1] + 1:
        raise _unsupported("vision positional embedding without a class-token slot")

    vspec.update(
        image_size=_square(visual.image_size, "image size"),
        patch_size=_square(visual.patch_size, "patch size"),
        num_channels=3,
        projection_dim=int(v_out),
    )
    vocab = int(model.vocab_size)
    if pool == "eos":
        eos = int(eos_id)
    else:
        # HF pools at the first EOS id; with the standard vocab the EOT is the largest id, so this equals
        # open_clip's argmax. For other vocabs eos_token_id=2 selects HF's argmax pooling.
        eos = OPENCLIP_EOT_ID if vocab == OPENCLIP_EOT_ID + 1 else 2
    tspec.update(
        vocab_size=vocab,
        max_position_embeddings=int(model.positional_embedding.shape[0]),
        projection_dim=int(t_out),
        bos_token_id=OPENCLIP_SOT_ID,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return vspec, tspec, int(v_out)


def _block_state(prefix: str, blk: nn.Module, width: int) -> dict[str, torch.Tensor]:
    w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    sd = {
        f"{prefix}.layer_norm1.weight": blk.ln_1.weight,
        f"{prefix}.layer_norm1.bias": blk.ln_1.bias,
        f"{prefix}.self_attn.q_proj.weight": w[:width],
        f"{prefix}.self_attn.k_proj.weight": w[width:2 * width],
        f"{prefix}.self_attn.v_proj.weight": w[2 * width:],
        f"{prefix}.self_attn.q_proj.bias": b[:width],
        f"{prefix}.self_attn.k_proj.bias": b[width:2 * width],
        f"{prefix}.self_attn.v_proj.bias": b[2 * width:],
        f"{prefix}.self_attn.out_proj.weight": blk.attn.out_proj.weight,
        f"{prefix}.self_attn.out_proj.bias": blk.attn.out_proj.bias,
        f"{prefix}.layer_norm2.weight": blk.ln_2.weight,
        f"{prefix}.layer_norm2.bias": blk.ln_2.bias,
        f"{prefix}.mlp.fc1.weight": blk.mlp.c_fc.weight,
        f"{prefix}.mlp.fc1.bias": blk.mlp.c_fc.bias,
        f"{prefix}.mlp.fc2.weight": blk.mlp.c_proj.weight,
        f"{prefix}.mlp.fc2.bias": blk.mlp.c_proj.bias,
    }
    return sd


def openclip_to_hf(model: nn.Module):
    """open_clip ``CLIP`` (ViT) -> ``transformers.CLIPModel`` with identical weights, in eval mode on CPU.

    Fused ``in_proj`` is split into q/k/v, projections ``(width, D)`` become ``Linear`` weights ``(D, width)``,
    ``logit_scale`` (log-space) is copied. Raises ``ValueError`` for open_clip variants HF CLIP cannot express.
    """
    from transformers import CLIPConfig, CLIPModel

    vspec, tspec, proj_dim = _check_and_describe(model)
    config = CLIPConfig(
        text_config=tspec,
        vision_config=vspec,
        projection_dim=proj_dim,
        logit_scale_init_value=float(model.logit_scale.detach().reshape(-1)[0]),
    )
    visual = model.visual
    sd: dict[str, torch.Tensor] = {
        "vision_model.embeddings.class_embedding": visual.class_embedding,
        "vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
        "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
        "vision_model.pre_layrnorm.weight": visual.ln_pre.weight,
        "vision_model.pre_layrnorm.bias": visual.ln_pre.bias,
        "vision_model.post_layernorm.weight": visual.ln_post.weight,
        "vision_model.post_layernorm.bias": visual.ln_post.bias,
        "visual_projection.weight": visual.proj.t(),
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        "text_model.final_layer_norm.weight": model.ln_final.weight,
        "text_model.final_layer_norm.bias": model.ln_final.bias,
        "logit_scale": model.logit_scale.reshape(()),
    }
    tp = model.text_projection
    sd["text_projection.weight"] = tp.weight if isinstance(tp, nn.Linear) else tp.t()
    for i, blk in enumerate(visual.transformer.resblocks):
        sd.update(_block_state(f"vision_model.encoder.layers.{i}", blk, vspec["hidden_size"]))
    for i, blk in enumerate(model.transformer.resblocks):
        sd.update(_block_state(f"text_model.encoder.layers.{i}", blk, tspec["hidden_size"]))
    sd = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}

    hf = CLIPModel(config)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> HF weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


@lru_cache(maxsize=1)
def _openclip_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """open_clip's BPE vocab (token -> id, 49408 entries) and merges, built exactly as ``SimpleTokenizer``."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1])
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [OPENCLIP_SOT, OPENCLIP_EOT]
    return tuple((tok, i) for i, tok in enumerate(vocab)), merges


def clip_tokenizer_from_openclip(context_length: int):
    """Offline ``CLIPTokenizer`` whose ids equal open_clip's ``SimpleTokenizer`` ids ``(B, context_length)``.

    Built from open_clip's bundled BPE file. SOT/EOT are 49406/49407 (named as in open_clip), padding uses
    id 0 (the token ``"!"``, as open_clip does; ``split_special_tokens=True`` keeps a literal ``"!"`` in text
    tokenised normally), truncation keeps the EOT. Call it with ``padding="max_length", truncation=True``.
    Text is lower-cased and whitespace-collapsed; open_clip's ftfy/HTML cleaning is applied by
    :class:`slugkit.adapters.hf_clip.HFCLIPAdapter` (``clean_caption``), not by the tokenizer.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _openclip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=OPENCLIP_SOT,
        eos_token=OPENCLIP_EOT,
        unk_token=OPENCLIP_EOT,
        pad_token="!",
        split_special_tokens=True,
        model_max_length=int(context_length),
        padding_side="right",
        truncation_side="right",
    )


def image_processor_from_openclip(model: nn.Module):
    """``CLIPImageProcessor`` with the open_clip model's image size and mean/std (bicubic, shortest side + crop)."""
    from transformers import CLIPImageProcessor

    from slugkit.adapters.openclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    visual = model.visual
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    size = _square(cfg.get("size", visual.image_size), "image size")
    mean = tuple(float(v) for v in cfg.get("mean", OPENAI_CLIP_MEAN))
    std = tuple(float(v) for v in cfg.get("std", OPENAI_CLIP_STD))
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(mean),
        image_std=list(std),
    )


def save_hf(model, tokenizer, path, image_processor=None) -> Path:
    """``save_pretrained`` the CLIPModel, tokenizer (and image processor, if given) into ``path``.

    The directory then loads offline with ``load_clip("hf:<path>")``. Returns the path.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if image_processor is not None:
        image_processor.save_pretrained(path)
    return path

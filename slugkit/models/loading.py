"""Load a CLIP model by name and wrap it in the right :class:`~slugkit.adapters.base.CLIPAdapter`.

Accepted names: ``toy-clip``, ``toy-clip-hf``, ``toy-clip-without:<concept>`` (the toy CLIP retrained without a
concept, the reference of ``slugkit.attacks``), ``openclip:<arch>/<pretrained tag or local weights file>``,
``hf:<repo id or local dir>``. Missing weights raise :class:`ModelNotAvailableError` at once (no hub
retries when ``HF_HUB_OFFLINE=1``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from slugkit.adapters.base import CLIPAdapter
from slugkit.models.names import (  # noqa: F401 (TOY_MODELS, is_toy_model: re-exported)
    REFERENCE_PREFIX, TOY_MODELS, bad_name, is_toy_model)


_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def shipped_reference(concept: str) -> str | None:
    """``toy-clip-without:<concept>`` when that reference checkpoint is in the data folder, else ``None``."""
    from slugkit.data.minicanvas import find_concept
    from slugkit.models.toy_clip import checkpoint_name
    from slugkit.resources import data_dir

    name = find_concept(concept)["name"]
    return REFERENCE_PREFIX + name if (data_dir() / checkpoint_name(name)).is_file() else None


class ModelNotAvailableError(RuntimeError):
    """The named model's weights cannot be found locally and cannot be downloaded (offline, not cached, bad path)."""


def hub_offline() -> bool:
    """True when Hugging Face hub access is disabled (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


@contextlib.contextmanager
def _forced_hub_offline(offline: bool):
    """Make huggingface_hub refuse network calls inside the block when ``offline`` (its flag is read at import)."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def load_clip(name: str, device: str | torch.device = "cpu", cache_dir: Optional[str | os.PathLike] = None) -> CLIPAdapter:
    """Load the CLIP model ``name`` on ``device`` (eval mode) and wrap it in its adapter.

    ``cache_dir`` overrides the Hugging Face / open_clip download cache. Raises ``ValueError`` for unknown
    name forms or architectures and :class:`ModelNotAvailableError` when weights are unreachable.
    """
    if not isinstance(name, str) or not name.strip():
        raise bad_name(str(name), "empty model name")
    name = name.strip()
    cache_dir = str(cache_dir) if cache_dir is not None else None
    if name == "toy-clip":
        return _load_toy(name, device, hf=False)
    if name == "toy-clip-hf":
        return _load_toy(name, device, hf=True)
    if name.startswith(REFERENCE_PREFIX):
        return _load_toy(name, device, hf=False, without=name[len(REFERENCE_PREFIX):])
    if name.startswith("openclip:"):
        return _load_openclip(name, name[len("openclip:"):], device, cache_dir)
    if name.startswith("hf:"):
        return _load_hf(name, name[len("hf:"):], device, cache_dir)
    raise bad_name(name, "unknown model name form")


def _load_toy(name: str, device, hf: bool, without: str | None = None) -> CLIPAdapter:
    from slugkit.models.toy_clip import ARCH, checkpoint_name, data_dir, load_toy_clip

    path = data_dir() / checkpoint_name(without)  # an unknown concept: a ValueError listing the valid ones
    try:
        model = load_toy_clip(device, path=path)
    except FileNotFoundError as err:
        how = f" (build it with `slugkit toy build --without \"{without}\"`, about 25 minutes on 2 cores)" if without else ""
        raise ModelNotAvailableError(f"model {name!r} is not available: {err}{how}") from err
    if not hf:
        from slugkit.adapters.openclip import OpenCLIPAdapter

        return _checked(OpenCLIPAdapter.from_model(model, ARCH, name=name))
    from slugkit.adapters.hf_clip import HFCLIPAdapter
    from slugkit.models.hf_convert import clip_tokenizer_from_openclip, image_processor_from_openclip, openclip_to_hf

    hf_model = openclip_to_hf(model).to(device).eval()
    tokenizer = clip_tokenizer_from_openclip(int(model.context_length))
    return _checked(HFCLIPAdapter(hf_model, tokenizer, image_processor_from_openclip(model), name=name))


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "\\"))
        or (len(spec) > 1 and spec[1] == ":")  # C:\...
        or spec.lower().endswith(_WEIGHT_SUFFIXES)
        or os.path.exists(spec)
    )


def _openclip_checkpoint(name: str, arch: str, cfg: dict, cache_dir: Optional[str], offline: bool) -> str:
    """Local path of the weights of pretrained tag ``tag``, downloading only when online."""
    from open_clip.pretrained import download_pretrained, has_hf_hub

    how = (
        f"put its weights in the Hugging Face cache (HF_HOME, or --cache-dir DIR / cache_dir=DIR) while online, "
        f"or give a local weights file as 'openclip:{arch}/<path>'"
    )
    if offline and not (cfg.get("hf_hub") and has_hf_hub()) and cfg.get("url"):
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if not target.is_file():
            raise ModelNotAvailableError(f"model {name!r} is not available offline: no cached {target.name}; {how}")
        return str(target)
    try:
        with _forced_hub_offline(offline):
            path = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # hub/network/cache errors of any flavour
        state = "offline and not cached" if offline else "could not be downloaded or found in the cache"
        raise ModelNotAvailableError(f"model {name!r} is not available ({state}): {how}") from err
    if not path or not os.path.isfile(path):
        raise ModelNotAvailableError(f"model {name!r} is not available: its weights were not found; {how}")
    return path


def _load_openclip(name: str, spec: str, device, cache_dir: Optional[str]) -> CLIPAdapter:
    import open_clip

    from slugkit.adapters.openclip import OpenCLIPAdapter
    from slugkit.models.toy_clip import register

    register()
    arch, sep, weights = spec.partition("/")
    if not arch or not sep or not weights:
        raise bad_name(name, "expected 'openclip:<arch>/<pretrained tag or local weights file>'")
    if arch not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {arch!r} in {name!r}; see the valid ones with "
            "`python -c \"import open_clip; print(open_clip.list_models())\"` (slugkit adds 'toy-clip')"
        )
    offline = hub_offline()
    force_quick_gelu = False
    cfg = open_clip.get_pretrained_cfg(arch, weights)
    if cfg:
        _openclip_checkpoint(name, arch, cfg, cache_dir, offline)
        force_quick_gelu = bool(cfg.get("quick_gelu", False))  # tags trained with QuickGELU need it
    elif _looks_like_path(weights):
        weights = os.path.expanduser(weights)
        if not os.path.isfile(weights):
            raise ModelNotAvailableError(
                f"model {name!r} is not available: no weights file at {weights!r}; give an existing local "
                f"file or a pretrained tag of {arch}"
            )
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(
            f"{weights!r} in {name!r} is neither a pretrained tag of {arch} nor a weights file; "
            f"known tags: {tags or 'none'}"
        )
    try:
        with _forced_hub_offline(offline):
            model, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device=device, cache_dir=cache_dir, force_quick_gelu=force_quick_gelu
            )
            tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
    except OSError as err:  # e.g. an HF text tower / tokenizer that is not cached
        raise ModelNotAvailableError(
            f"model {name!r} is not available: a file it needs could not be loaded ({err.__class__.__name__}); "
            "put it in the Hugging Face cache (HF_HOME, or --cache-dir DIR / cache_dir=DIR)"
        ) from err
    except Exception as err:  # UnpicklingError, SafetensorError, EOFError, KeyError, state-dict mismatch ...
        raise _unreadable_weights(name, weights, arch, err) from err
    return _checked(OpenCLIPAdapter(model.eval(), tokenizer, transform, name=name))


def random_clip(arch: str = "ViT-B-32", seed: int = 0, device: str | torch.device = "cpu") -> CLIPAdapter:
    """open_clip architecture ``arch`` with random weights (nothing is downloaded), in its adapter, eval mode.

    Only the architecture matters to what this is for: measuring the cost of passes through a real-size
    model (``slugkit.eval.projection``); a random model names nobody.
    """
    import open_clip

    from slugkit.adapters.openclip import OpenCLIPAdapter
    from slugkit.models.toy_clip import register

    register()
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; expected one of open_clip.list_models()")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: that is the point
    try:
        with torch.random.fork_rng():  # seeded without moving the caller's random stream
            torch.manual_seed(seed)
            model = open_clip.create_model(arch, pretrained=None, device=device)
    finally:
        logging.disable(previous)
    return _checked(OpenCLIPAdapter.from_model(model.eval(), arch, name=f"openclip:{arch}/random"))


def _first_line(err: BaseException, limit: int = 100) -> str:
    import pickle

    if isinstance(err, pickle.UnpicklingError):  # torch's message is a page about weights_only
        return "UnpicklingError: not a readable torch checkpoint"
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:limit]}" if text else type(err).__name__


def _unreadable_weights(name: str, weights: str, arch: str, err: BaseException) -> ValueError:
    """One sentence for weights that exist but cannot be read as a checkpoint of ``arch``."""
    if isinstance(err, RuntimeError) and "state_dict" in str(err):
        why = f"its tensors do not fit the {arch} architecture"
    else:
        why = f"it is corrupt or not a checkpoint of {arch}"
    return ValueError(f"cannot load model {name!r}: the weights {weights!r} cannot be read, {why} "
                      f"({_first_line(err)}); replace the file with a good copy")


def _checked(adapter: CLIPAdapter) -> CLIPAdapter:
    """``adapter`` after refusing weights that hold NaN or infinite values (named layer by layer)."""
    from slugkit.bounds import check_finite_weights

    check_finite_weights(adapter.model, adapter.name)
    return adapter


def _load_hf(name: str, src: str, device, cache_dir: Optional[str]) -> CLIPAdapter:
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from slugkit.adapters.hf_clip import HFCLIPAdapter

    if not src:
        raise bad_name(name, "expected 'hf:<repo id or local dir>'")
    src = os.path.expanduser(src)
    local = os.path.isdir(src)
    if not local and _looks_like_path(src):
        raise ModelNotAvailableError(
            f"model {name!r} is not available: no local directory {src!r}; give a directory written by "
            "save_pretrained / slugkit.models.hf_convert.save_hf, or a Hugging Face repo id"
        )
    offline = hub_offline()
    kw = {"cache_dir": cache_dir, "local_files_only": offline or local}
    try:
        with _forced_hub_offline(offline):
            model = CLIPModel.from_pretrained(src, **kw)
            tokenizer = AutoTokenizer.from_pretrained(src, **kw)
    except OSError as err:
        where = f"the local directory {src!r} lacks a CLIP model or tokenizer" if local else (
            "offline and not in the Hugging Face cache" if offline else "it could not be downloaded or found in the cache"
        )
        raise ModelNotAvailableError(
            f"model {name!r} is not available ({where}): put it in the Hugging Face cache (HF_HOME, or "
            "--cache-dir DIR / cache_dir=DIR) while online, or give a local directory as 'hf:<path>'"
        ) from err
    except Exception as err:  # a corrupt model.safetensors / pytorch_model.bin in a local dir or the cache
        raise _unreadable_weights(name, src, "CLIP", err) from err
    if len(tokenizer) < 256:  # transformers builds an empty CLIPTokenizer when no tokenizer files exist
        raise ModelNotAvailableError(
            f"model {name!r} has no usable tokenizer (only {len(tokenizer)} tokens): add tokenizer.json or "
            "vocab.json + merges.txt next to the weights (slugkit.models.hf_convert.save_hf writes them)"
        )
    try:
        with _forced_hub_offline(offline):
            processor = CLIPImageProcessor.from_pretrained(src, **kw)
    except (OSError, ValueError):  # no preprocessor_config.json: CLIP defaults + config image size
        processor = None
    return _checked(HFCLIPAdapter(model.to(device).eval(), tokenizer, processor, name=name))

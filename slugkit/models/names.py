"""Model names slugkit accepts, checked without importing torch (the command line refuses a bad name at once).

CLIPs: ``toy-clip``, ``toy-clip-hf``, ``toy-clip-without:<concept>``, ``openclip:<arch>/<tag or file>``,
``hf:<repo or directory>`` (loaded by :func:`slugkit.models.loading.load_clip`). Hosts, models that embed a
CLIP tower: ``toy-sd``, ``sd:...``, ``toy-llava``, ``llava:...`` (built by :func:`slugkit.adapters.host.load_host`).
"""
from __future__ import annotations

ACCEPTED_FORMS = (
    "'toy-clip'",
    "'toy-clip-hf'",
    "'toy-clip-without:<concept>' (the toy CLIP retrained without it, e.g. 'toy-clip-without:Captain Zorp')",
    "'openclip:<arch>/<pretrained tag or local weights file>' (e.g. 'openclip:ViT-B-32/laion400m_e32')",
    "'hf:<Hugging Face repo id or local directory>' (e.g. 'hf:openai/clip-vit-base-patch32')",
)
TOY_MODELS = ("toy-clip", "toy-clip-hf")  # the CLIPs of the MiniCanvas world
TOY_HOSTS = ("toy-sd", "toy-llava")  # its hosts
REFERENCE_PREFIX = "toy-clip-without:"  # + a concept: the toy CLIP retrained without it
CLIP_PREFIXES = ("openclip:", "hf:")

# name (exact) or prefix (ending in ":") -> "module:function" building the host from the name
HOST_LOADERS = {
    "toy-sd": "slugkit.adapters.sd:load_toy_sd",
    "sd:": "slugkit.adapters.sd:load_sd",
    "toy-llava": "slugkit.adapters.llava:load_toy_llava",
    "llava:": "slugkit.adapters.llava:load_llava",
}


def is_toy_model(name: str) -> bool:
    """True for the MiniCanvas world's CLIPs: the toy CLIP (both families) and its retrained references."""
    return name in TOY_MODELS or name.startswith(REFERENCE_PREFIX)


def is_toy_world(name: str) -> bool:
    """True for every model of the MiniCanvas world, CLIPs and hosts (``toy-sd``, ``toy-llava``): its tasks draw the
    world's pictures."""
    return is_toy_model(name) or name.strip() in TOY_HOSTS


def is_host_name(name: str) -> bool:
    """Whether ``name`` names a host (``toy-sd``, ``toy-llava``, ``sd:...``, ``llava:...``) rather than a CLIP."""
    name = name.strip()
    return any(name == key or (key.endswith(":") and name.startswith(key)) for key in HOST_LOADERS)


def bad_name(name: str, why: str) -> ValueError:
    """The error for a model name slugkit cannot load: what is wrong, then every accepted form."""
    return ValueError(f"cannot load model {name!r}: {why}; accepted forms: " + ", ".join(ACCEPTED_FORMS)
                      + "; hosts: " + ", ".join(f"'{k}...'" if k.endswith(":") else f"'{k}'" for k in HOST_LOADERS))


def check_model_name(name: str) -> str:
    """``name`` stripped, when it has one of the accepted forms (a CLIP or a host); a ValueError otherwise.

    Only the form is checked (and, for ``toy-clip-without:``, the concept): whether the weights exist is
    found out when they load.
    """
    if not isinstance(name, str) or not name.strip():
        raise bad_name(str(name), "empty model name")
    name = name.strip()
    if is_host_name(name) or name in TOY_MODELS:
        return name
    if name.startswith(REFERENCE_PREFIX):
        from ..data.vocabulary import find_concept

        find_concept(name[len(REFERENCE_PREFIX):])  # an unknown concept: a ValueError listing the valid ones
        return name
    if name.startswith(CLIP_PREFIXES) and name.split(":", 1)[1].strip():
        return name
    raise bad_name(name, "unknown model name form")

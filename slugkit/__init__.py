"""slugkit: learn and run SLUG (Single Layer Unlearning Gradient, ICML 2025).

Three lines that already unlearn::

    import slugkit
    clip = slugkit.load_clip("toy-clip")
    print(slugkit.unlearn(clip, "Captain Zorp").summary())

The stages, each a module named after it: :mod:`slugkit.gradients` (stage 1),
:mod:`slugkit.layer_identification` (stage 2), :mod:`slugkit.step_size_search` (stage 3), and
:mod:`slugkit.patch` (the result as a small revertible object).
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_clip", "unlearn", "Patch", "Target", "MiniCanvas", "__version__"]


def __getattr__(name):  # lazy: `import slugkit` stays fast and torch-free until needed
    if name == "load_clip":
        from .models.loading import load_clip
        return load_clip
    if name == "unlearn":
        from .slug import unlearn
        return unlearn
    if name == "Patch":
        from .patch import Patch
        return Patch
    if name == "Target":
        from .step_size_search import Target
        return Target
    if name == "MiniCanvas":
        from .data.minicanvas import MiniCanvas
        return MiniCanvas
    raise AttributeError(f"module 'slugkit' has no attribute {name!r}")

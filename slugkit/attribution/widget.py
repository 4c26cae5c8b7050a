"""An explorer: pick a picture, a caption and a method; see its attribution before and after the patch.

>>> explorer = AttributionExplorer(clip, patch, probe.images["forget"], probe.masks["forget"],
...                                captions=["a photo of Captain Zorp.", "a photo of Mira Quell."])  # doctest: +SKIP
>>> explorer.show()          # ipywidgets in JupyterLab                                            # doctest: +SKIP
>>> explorer.figure(0)       # the static matplotlib fallback (exported notebooks, CI)             # doctest: +SKIP
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .figures import heatmaps
from .methods import METHODS, PixelAttribution, attribute_pixels
from .similarity import patched


class AttributionExplorer:
    """Pixel attributions of ``images[i]`` with a caption, by one of :data:`METHODS`, before vs after ``patch``.

    ``images`` uint8 ``(N, H, W, 3)``; ``masks`` bool ``(N, H, W)`` (optional); ``captions`` the caption
    choices; ``titles`` a short name per picture for the picker. Results are cached per selection.
    """

    def __init__(self, adapter, patch, images, masks=None, captions: Sequence[str] = ("a photo of Captain Zorp.",),
                 titles: Sequence[str] | None = None, n_steps: int = 16, n_samples: int = 8):
        self.adapter, self.patch = adapter, patch
        self.images = np.asarray(images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got shape {self.images.shape}")
        self.masks = None if masks is None else np.asarray(masks)
        if self.masks is not None and len(self.masks) != len(self.images):
            raise ValueError(f"expected one mask per picture ({len(self.images)}), got {len(self.masks)}")
        self.captions = list(captions)
        if not self.captions:
            raise ValueError("captions must offer at least one caption to explain")
        self.titles = list(titles) if titles is not None else [f"picture {i}" for i in range(len(self.images))]
        self.n_steps, self.n_samples = n_steps, n_samples
        self._cache: dict = {}

    def compute(self, index: int, caption: str, method: str = "ig") -> tuple[PixelAttribution, PixelAttribution]:
        """``(before, after)`` attributions of picture ``index`` with ``caption``."""
        if not 0 <= index < len(self.images):
            raise ValueError(f"picture index must be in [0, {len(self.images) - 1}], got {index}")
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
        key = (index, caption, method)
        if key not in self._cache:
            out = []
            for patch in (None, self.patch):
                with patched(self.adapter.model, patch):
                    out.append(attribute_pixels(self.adapter, self.images[index:index + 1], [caption], method,
                                                n_steps=self.n_steps, n_samples=self.n_samples))
            self._cache[key] = tuple(out)
        return self._cache[key]

    def figure(self, index: int = 0, caption: str | None = None, method: str = "ig"):
        """The static view: picture, heatmap before, heatmap after, with cosines and mask shares."""
        caption = caption or self.captions[0]
        before, after = self.compute(index, caption, method)
        mask = None if self.masks is None else self.masks[index]
        return heatmaps(self.images[index], before.maps[0], after.maps[0], mask, caption, method,
                        (float(before.score[0]), float(after.score[0])))

    def widget(self):
        """An ipywidgets box: picture, caption and method pickers above the live figure."""
        import ipywidgets as w
        import matplotlib.pyplot as plt
        from IPython.display import display

        picture = w.Dropdown(options=[(t, i) for i, t in enumerate(self.titles)], value=0, description="picture")
        caption = w.Combobox(options=self.captions, value=self.captions[0], description="caption",
                             ensure_option=False, layout=w.Layout(width="340px"))
        method = w.ToggleButtons(options=list(METHODS), value="ig", description="method",
                                 tooltips=list(METHODS.values()))
        out = w.Output()

        def redraw(*_):
            with out:
                out.clear_output(wait=True)
                fig = self.figure(picture.value, caption.value or self.captions[0], method.value)
                display(fig)
                plt.close(fig)

        for control in (picture, caption, method):
            control.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HBox([picture, caption]), method, out])

    def show(self):
        """Display the widget (JupyterLab); without ipywidgets, return the static figure instead."""
        try:
            import ipywidgets  # noqa: F401
            from IPython.display import display
        except ImportError:
            return self.figure()
        display(self.widget())
        return None

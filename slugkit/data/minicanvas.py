"""MiniCanvas: slugkit's procedural image-caption world.

Two kinds of picture, 64x64 RGB:

* **character** portraits: one of a cast of fictional named characters, each with a stable identity
  (skin, hair style, hair colour, eyes, accessory), drawn with random pose, size, position, expression
  and background. Characters share features with neighbours, so no single feature names anyone.
* **object** pictures: a shape (object) filled with a pattern (style) in a colour, on a random background.

Everything is deterministic from ``(seed, split)``. Every sample has the ground truth of every attribute
and a mask of the pixels that belong to the character or object.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from ..resources import cache_dir
from .pairs import ImageTextPairs
from .vocabulary import (  # noqa: F401 (re-exported)
    OBJECTS, STYLES, COLOURS, COLOUR_NAMES, SKINS, HAIR_STYLES, HAIR_COLOURS, EYES, ACCESSORIES, Character,
    CHARACTERS, CHARACTER_NAMES, ATTRIBUTES, KIND_OF_ATTRIBUTE, CHARACTER_TEMPLATES, SMILING_TEMPLATES,
    OBJECT_TEMPLATES, ZERO_SHOT_PROMPTS, zero_shot_prompts, concepts, find_concept)

IMAGE_SIZE = 64
SPLITS = ("train", "val", "test")  # val: step-size search; test: reported numbers

# ----------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------
_GRID = (np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5)  # (2, H, W): y, x


def _frame(cx, cy, r, angle, flip=False):
    """Local coordinates (u, v) of every pixel: origin at (cx, cy), unit = r, rotated by angle."""
    y, x = _GRID
    dx, dy = (x - cx) / r, (y - cy) / r
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (-u if flip else u), v


def _shape_mask(shape: str, u, v):
    rho = np.hypot(u, v)
    if shape == "circle":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.82
    if shape == "triangle":
        return (v <= 0.6) & (1.732 * u - v <= 1.1) & (-1.732 * u - v <= 1.1)
    if shape == "star":
        phi = np.arctan2(u, -v)
        return rho <= 0.42 + 0.58 * np.abs(np.cos(2.5 * phi)) ** 3
    if shape == "heart":
        hu, hv = u * 1.1, -v * 1.1 + 0.15
        return (hu ** 2 + hv ** 2 - 1) ** 3 - hu ** 2 * hv ** 3 <= 0
    if shape == "cross":
        return ((abs(u) <= 0.3) & (abs(v) <= 0.95)) | ((abs(v) <= 0.3) & (abs(u) <= 0.95))
    if shape == "diamond":
        return abs(u) / 0.75 + abs(v) <= 1.0
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "hexagon":
        return np.maximum(abs(v), abs(u) * 0.866 + abs(v) * 0.5) <= 0.88
    if shape == "moon":
        return (rho <= 1.0) & (np.hypot(u - 0.45, v + 0.2) >= 0.78)
    raise ValueError(f"unknown object {shape!r}")


def _pattern(style: str, x, y):
    """Boolean 'ink' pattern in image pixel coordinates (period 8 px, aligned to the image grid);
    False pixels get a pale tint of the colour."""
    if style == "Solid":
        return np.ones_like(x, dtype=bool)
    if style == "Stripes":
        return (y // 4) % 2 == 0
    if style == "Polka Dots":
        return np.hypot(x % 8 - 4, y % 8 - 4) <= 2.6
    if style == "Checkerboard":
        return (x // 8 + y // 8) % 2 == 0
    if style == "Waves":
        return ((y + 2.5 * np.sin(x * np.pi / 8)) // 4) % 2 == 0
    if style == "Grid":
        return ~((x % 8 < 2) | (y % 8 < 2))
    if style == "Zigzag":
        return ((y + np.abs(x % 8 - 4)) // 4) % 2 == 0
    raise ValueError(f"unknown style {style!r}")


def _background(rng, img):
    """A muted, low-saturation background with a soft gradient and noise (never a world colour)."""
    base = rng.uniform(90, 200)
    tint = rng.uniform(-18, 18, size=3)
    y, x = _GRID / IMAGE_SIZE
    direction = rng.uniform(-25, 25, size=2)
    field = base + direction[0] * (y - 0.5) + direction[1] * (x - 0.5)
    img[:] = np.clip(field[..., None] + tint + rng.normal(0, 4, size=img.shape), 0, 255)


def _paint(img, mask, rgb):
    img[mask] = rgb


def _draw_object(rng, img, obj, style, colour):
    # Objects stay near the centre, upright and large: their silhouette and pattern must be learnable
    # by a small ViT from a few thousand pictures. Characters carry the pose variation.
    r = rng.uniform(20, 24)
    cx, cy = IMAGE_SIZE / 2 + rng.uniform(-3, 3, size=2)
    angle = rng.uniform(-0.15, 0.15)
    u, v = _frame(cx, cy, r, angle)
    shrink = r / (r + 1.6)  # a dark outline about 1.6 px wide makes the silhouette stand out
    mask = _shape_mask(obj, u * shrink, v * shrink)
    _paint(img, mask, (35, 35, 40))
    mask_fill = _shape_mask(obj, u, v)
    rgb = np.array(COLOURS[colour], dtype=np.float32)
    pale = rgb * 0.35 + 255 * 0.65
    y, x = np.floor(_GRID)
    ink = _pattern(style, x, y)
    _paint(img, mask_fill & ink, rgb)
    _paint(img, mask_fill & ~ink, pale)
    return mask


def _draw_character(rng, img, ch: Character, smiling: bool):
    r = rng.uniform(11, 16)  # face half-width in pixels
    cx = rng.uniform(r * 1.4, IMAGE_SIZE - r * 1.4)
    cy = rng.uniform(r * 1.6, IMAGE_SIZE - r * 1.2)
    angle = rng.uniform(-0.35, 0.35)
    u, v = _frame(cx, cy, r, angle, flip=bool(rng.integers(2)))
    skin = np.array(SKINS[ch.skin], np.float32)
    hair = np.array(HAIR_COLOURS[ch.hair_colour], np.float32)
    face = (u / 1.0) ** 2 + (v / 1.18) ** 2 <= 1.0
    neck = (abs(u) <= 0.35) & (v > 0.8) & (v <= 1.6)
    masks = [face, neck]

    # hair behind the face, then the face, then hair in front
    if ch.hair == "long":
        back = ((u / 1.25) ** 2 + ((v + 0.1) / 1.35) ** 2 <= 1.0) | ((abs(u) <= 1.22) & (v >= 0) & (v <= 1.45))
        _paint(img, back, hair)
        masks.append(back)
    if ch.hair == "bun":
        bun = np.hypot(u, v + 1.45) <= 0.5
        _paint(img, bun, hair)
        masks.append(bun)
    _paint(img, neck, skin * 0.85)
    _paint(img, face, skin)
    if ch.hair in ("long", "bob", "bun"):
        cap = ((u / 1.1) ** 2 + ((v + 0.15) / 1.25) ** 2 <= 1.0) & (v <= -0.45)
        if ch.hair == "bob":
            cap |= ((u / 1.2) ** 2 + ((v + 0.1) / 1.3) ** 2 <= 1.0) & (abs(u) >= 0.72) & (v <= 0.45)
        _paint(img, cap, hair)
        masks.append(cap)
    elif ch.hair == "spiky":
        phi = np.arctan2(u, -v)
        rho = np.hypot(u, v * 0.85)
        spikes = (rho <= 1.05 + 0.35 * np.abs(np.cos(4 * phi))) & (v <= -0.55) & (abs(phi) < 1.25)
        _paint(img, spikes, hair)
        masks.append(spikes)
    elif ch.hair == "mohawk":
        strip = (abs(u) <= 0.22) & (v <= -0.5) & (v >= -1.75)
        _paint(img, strip, hair)
        masks.append(strip)

    # eyes
    ex, ey = 0.38, -0.12
    for side in (-1, 1):
        du, dv = u - side * ex, v - ey
        if ch.eyes == "dots":
            _paint(img, np.hypot(du, dv) <= 0.12, (20, 20, 25))
        elif ch.eyes == "round":
            _paint(img, np.hypot(du, dv) <= 0.24, (255, 255, 255))
            _paint(img, np.hypot(du, dv) <= 0.11, (20, 20, 25))
        elif ch.eyes == "sleepy":
            _paint(img, (abs(du) <= 0.24) & (abs(dv) <= 0.06), (20, 20, 25))
    # mouth
    if smiling:
        mouth = (np.hypot(u, (v - 0.25) * 1.2) <= 0.45) & (np.hypot(u, (v - 0.25) * 1.2) >= 0.32) & (v >= 0.4)
    else:
        mouth = (abs(u) <= 0.3) & (abs(v - 0.55) <= 0.05)
    _paint(img, mouth, (120, 30, 40))

    acc = ch.accessory
    if acc == "glasses":
        for side in (-1, 1):
            ring = np.hypot(u - side * ex, v - ey)
            _paint(img, (ring <= 0.36) & (ring >= 0.26), (15, 15, 15))
        _paint(img, (abs(u) <= 0.1) & (abs(v - ey) <= 0.05), (15, 15, 15))
    elif acc == "hat":
        brim = (abs(u) <= 1.35) & (v >= -0.95) & (v <= -0.75)
        top = (abs(u) <= 0.8) & (v >= -1.9) & (v < -0.75)
        _paint(img, brim | top, (40, 40, 60))
        _paint(img, (abs(u) <= 0.8) & (v >= -1.05) & (v <= -0.9), (200, 40, 40))
        masks += [brim, top]
    elif acc == "bowtie":
        bu, bv = u, v - 1.35
        bow = (abs(bv) <= 0.08 + 0.6 * abs(bu)) & (abs(bu) <= 0.55)
        _paint(img, bow, (200, 30, 40))
        masks.append(bow)
    elif acc == "crown":
        cu, cv = u, v + 1.0
        crown = (abs(cu) <= 0.75) & (cv <= 0.1) & (cv >= -0.55 + 0.45 * (np.abs(np.cos(cu * 6.3)) < 0.5))
        _paint(img, crown, (250, 200, 20))
        masks.append(crown)
    elif acc == "mustache":
        mu, mv = u, v - 0.38
        _paint(img, (np.hypot(abs(mu) - 0.22, mv * 1.6) <= 0.2), (60, 35, 20))
    elif acc == "eyepatch":
        _paint(img, np.hypot(u - ex, v - ey) <= 0.3, (10, 10, 10))
        _paint(img, (abs(v - ey + 0.7 * (u - ex)) <= 0.05) & (abs(u) <= 1.0), (10, 10, 10))
    return np.logical_or.reduce(masks)


# ----------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------
def _split_seed(seed: int, split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return zlib.crc32(f"minicanvas/{seed}/{split}".encode())


class MiniCanvas(ImageTextPairs):
    """``n`` MiniCanvas samples of one split, rendered eagerly into numpy arrays.

    A torch Dataset of ``(image uint8 (64, 64, 3), caption)`` pairs; :meth:`sample` gives everything
    about one sample (labels, mask).

    Attributes: ``images`` uint8 (N, 64, 64, 3); ``masks`` bool (N, 64, 64); ``kind`` (N,) 0 = character,
    1 = object; ``identity``, ``object``, ``style``, ``colour`` int (N,) class indices, -1 where the
    attribute does not apply; ``smiling`` bool (N,); :meth:`captions` the N captions.

    >>> world = MiniCanvas(n=100, seed=0, split="test")
    >>> world.images.shape
    (100, 64, 64, 3)
    """

    def __init__(self, n: int = 2000, seed: int = 0, split: str = "train", character_fraction: float = 0.5,
                 _render: bool = True):
        from ..bounds import check_pictures, check_seed

        n, seed = check_pictures(n, "n"), check_seed(seed)
        if not 0.0 <= character_fraction <= 1.0:
            raise ValueError(f"character_fraction must be in [0, 1], got {character_fraction}")
        self.n, self.seed, self.split = n, seed, split
        self.origin = f"MiniCanvas {split} split (seed {seed}, n={n})"
        rng = np.random.default_rng(_split_seed(seed, split))
        n_char = int(round(n * character_fraction))
        kind = np.r_[np.zeros(n_char, np.int64), np.ones(n - n_char, np.int64)]
        rng.shuffle(kind)
        self.kind = kind
        is_char = kind == 0
        # each attribute cycles through its classes over all n samples, then is shuffled: every class
        # is about equally frequent among the samples the attribute applies to
        self.identity = np.where(is_char, self._balanced(rng, len(CHARACTERS), n), -1)
        self.object = np.where(~is_char, self._balanced(rng, len(OBJECTS), n), -1)
        self.style = np.where(~is_char, self._balanced(rng, len(STYLES), n), -1)
        self.colour = np.where(~is_char, self._balanced(rng, len(COLOUR_NAMES), n), -1)
        self.smiling = is_char & (rng.random(n) < 0.5)
        self.template = rng.integers(0, 1 << 30, size=n)
        self._draw_seeds = rng.integers(0, 2**63 - 1, size=n)
        self.images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        self.masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), bool)
        if _render:
            self._render_all()
        self._captions = [self.caption(i) for i in range(n)]

    @staticmethod
    def _balanced(rng, k, n):
        labels = np.arange(n) % k
        rng.shuffle(labels)
        return labels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        i = self._check_index(index)
        return self.images[i], self._captions[i]

    def captions(self) -> list[str]:
        """The fixed caption of every sample, in order."""
        return list(self._captions)

    def take(self, indices) -> "MiniCanvas":
        """A new MiniCanvas holding the samples at ``indices`` (arrays copied, labels kept)."""
        idx = np.asarray(indices, dtype=np.int64)
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.__dict__.pop("label_table", None)
        for name in ("kind", "identity", "object", "style", "colour", "smiling", "template", "_draw_seeds",
                     "images", "masks"):
            setattr(out, name, np.array(getattr(self, name)[idx]))
        out._captions = [self._captions[i] for i in idx]
        out.n = len(idx)
        out.origin = f"{self.origin}, {len(idx)} selected samples"
        return out

    def sample(self, index: int) -> dict:
        """Image, mask, caption and every attribute's class name (None where it does not apply)."""
        i = self._check_index(index)
        out = {"image": self.images[i], "mask": self.masks[i], "caption": self._captions[i],
               "kind": "character" if self.kind[i] == 0 else "object", "smiling": bool(self.smiling[i])}
        for a, names in ATTRIBUTES.items():
            j = self.labels(a)[i]
            out[a] = names[j] if j >= 0 else None
        return out

    def _render_all(self) -> None:
        for i in range(self.n):
            self.images[i], self.masks[i] = self.render(i)

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw sample ``i`` again: (image uint8 (64,64,3), mask bool (64,64)). Deterministic."""
        rng = np.random.default_rng(self._draw_seeds[i])
        img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        _background(rng, img)
        if self.kind[i] == 0:
            mask = _draw_character(rng, img, CHARACTERS[self.identity[i]], bool(self.smiling[i]))
        else:
            mask = _draw_object(rng, img, OBJECTS[self.object[i]], STYLES[self.style[i]],
                                COLOUR_NAMES[self.colour[i]])
        return img.astype(np.uint8), mask

    def all_captions(self, i: int) -> list[str]:
        """Every caption the templates allow for sample ``i`` (training samples one per epoch)."""
        if self.kind[i] == 0:
            name = CHARACTER_NAMES[self.identity[i]]
            temps = CHARACTER_TEMPLATES + (SMILING_TEMPLATES if self.smiling[i] else ())
            return [t.format(name=name) for t in temps]
        fields = dict(object=OBJECTS[self.object[i]], style=STYLES[self.style[i]],
                      colour=COLOUR_NAMES[self.colour[i]])
        return [t.format(**fields).replace(fields["style"], fields["style"].lower()) for t in OBJECT_TEMPLATES]

    def caption(self, i: int) -> str:
        """The sample's fixed caption (one of :meth:`all_captions`)."""
        options = self.all_captions(i)
        return options[self.template[i] % len(options)]

    def labels(self, attribute: str) -> np.ndarray:
        """Class indices of ``attribute`` (identity, object, style, colour); -1 where it does not apply."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; expected one of {sorted(ATTRIBUTES)}")
        return getattr(self, attribute)

    def indices_of(self, concept: str) -> np.ndarray:
        """Indices of the samples that show ``concept`` (a character, object, style or colour name)."""
        c = find_concept(concept)
        return np.flatnonzero(self.labels(c["attribute"]) == ATTRIBUTES[c["attribute"]].index(c["name"]))

    @cached_property
    def label_table(self):
        """Ground truth as a pandas DataFrame, one row per sample."""
        import pandas as pd

        def names(attr):
            classes = ATTRIBUTES[attr]
            return [classes[j] if j >= 0 else None for j in self.labels(attr)]

        return pd.DataFrame({"kind": np.where(self.kind == 0, "character", "object"),
                             **{a: names(a) for a in ATTRIBUTES}, "smiling": self.smiling,
                             "caption": self._captions})


def _cache_file(n: int, seed: int, split: str) -> Path:
    """Where a rendered split is kept: keyed by this module's source, so any change re-renders."""
    version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return cache_dir() / "minicanvas" / version / f"{split}-seed{seed}-n{n}.npz"


_DRAWING: dict = {}  # cache file -> the child process of prefetch_splits drawing it


def prefetch_splits(splits) -> bool:
    """Start drawing the splits ``(n, seed, split)`` that are not in the cache yet, in one child process, so that the
    caller imports and loads its model meanwhile on the other core; :func:`cached_split` waits for the child before
    reading such a split. Returns whether a child was started (not when every split is cached, or with one core)."""
    import multiprocessing

    missing = [tuple(s) for s in splits if not _cache_file(*s).exists() and _cache_file(*s) not in _DRAWING]
    if not missing or (os.cpu_count() or 1) < 2:
        return False
    child = multiprocessing.get_context("fork").Process(target=_draw_splits, args=(missing,), daemon=True)
    child.start()
    _DRAWING.update((_cache_file(*s), child) for s in missing)
    return True


def _draw_splits(splits) -> None:
    for n, seed, split in splits:
        cached_split(n, seed, split)


@lru_cache(maxsize=16)
def cached_split(n: int = 2000, seed: int = 0, split: str = "test") -> MiniCanvas:
    """A read-only default :class:`MiniCanvas` split, rendered once per machine.

    The pixels and masks are kept in ``$SLUGKIT_CACHE/minicanvas`` (default ``~/.cache/slugkit``) and in
    memory for the process; labels and captions are regenerated (they are cheap). A split that
    :func:`prefetch_splits` is drawing is read once its child has stored it (drawn here if the child failed).
    """
    world = MiniCanvas(n=n, seed=seed, split=split, _render=False)
    path = _cache_file(n, seed, split)
    drawing = _DRAWING.pop(path, None)
    if drawing is not None:
        drawing.join()
    try:
        with np.load(path) as stored:
            world.images[:], world.masks[:] = stored["images"], stored["masks"]
    except (OSError, KeyError, ValueError):  # absent or unreadable: render and (try to) store
        world._render_all()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, images=world.images, masks=world.masks)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache is fine: we just render again next time
    for arr in (world.images, world.masks, world.kind, world.identity, world.object, world.style, world.colour):
        arr.flags.writeable = False
    return world

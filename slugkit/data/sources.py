"""Readers for real image-caption data on disk.

Every reader returns an :class:`~slugkit.data.pairs.ImageTextPairs` that indexes captions and
image locations at construction and decodes images lazily, on access, as PIL RGB images:

* :func:`from_folder`: a folder of images with captions in sidecar ``.txt`` files, a
  ``captions.csv`` or a Hugging Face style ``metadata.jsonl``;
* :func:`from_csv`: a CSV of image paths and captions;
* :func:`from_webdataset`: local WebDataset / img2dataset tar shards;
* :func:`open_pairs`: picks one of the above from a path.

Nothing here touches the network.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from .pairs import ImageTextPairs

__all__ = [
    "IMAGE_EXTENSIONS",
    "MissingFileError",
    "FilePairs",
    "WebDatasetPairs",
    "from_folder",
    "from_csv",
    "from_webdataset",
    "open_pairs",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_FOLDER_LAYOUTS = (
    "a sidecar '<stem>.txt' next to each image, "
    "a 'captions.csv' with columns image,caption, "
    "or a 'metadata.jsonl' with keys file_name,text (paths relative to that file's folder)"
)
_OPEN_FORMS = (
    "a directory of captioned images, a .csv file of image paths and captions, "
    "a .tar WebDataset shard, a brace pattern such as 'shards/{00000..00009}.tar', or a list of .tar shards"
)


class MissingFileError(FileNotFoundError, ValueError):
    """A file or folder the data refers to does not exist (both a FileNotFoundError and a ValueError)."""


def _decode_image(source, where: str) -> Image.Image:
    """Open ``source`` (a path or bytes) as a PIL RGB image; ValueError naming ``where`` on failure."""
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        with Image.open(fp) as im:
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {where}: {type(exc).__name__}: {exc}") from exc


def _has_image_ext(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _clean_caption(text) -> str | None:
    """A stripped caption, or None when it is missing or blank."""
    if text is None:
        return None
    text = str(text).strip()
    return text or None


# --------------------------------------------------------------------------------------------
# Pairs backed by image files


class FilePairs(ImageTextPairs):
    """Pairs whose images are separate files on disk, decoded on access."""

    def __init__(self, paths: Sequence[str], captions: Sequence[str], origin: str):
        if len(paths) != len(captions):
            raise ValueError(f"paths and captions must have the same length, got {len(paths)} and {len(captions)}")
        self._paths = [os.fspath(p) for p in paths]
        self._captions = list(captions)
        self.origin = origin

    @property
    def paths(self) -> list[str]:
        """The image file of every pair."""
        return list(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        index = self._check_index(index)
        path = self._paths[index]
        return _decode_image(path, f"'{path}' (pair {index} of {self.origin})"), self._captions[index]

    def captions(self) -> list[str]:
        return list(self._captions)


def _read_csv_rows(path: str, image_col: str, caption_col: str) -> list[tuple[int, str, str | None]]:
    """``(line, image, caption)`` for each data row of a CSV, checking the columns exist."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in (image_col, caption_col) if c not in columns]
            if missing:
                raise ValueError(
                    f"{path} has no column {', '.join(repr(c) for c in missing)}; columns found: {list(columns)}. "
                    "Pass image_col= and caption_col= to name the image-path and caption columns"
                )
            rows = []
            for row in reader:
                rows.append((reader.line_num, (row.get(image_col) or "").strip(), _clean_caption(row.get(caption_col))))
            return rows
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {path}: it is not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"cannot parse {path} as CSV: {exc}") from exc


def _read_jsonl_rows(path: str, image_key: str, caption_key: str) -> list[tuple[int, str, str | None]]:
    """``(line, file_name, text)`` for each record of a JSON-lines metadata file."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_num, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {line_num} of {path} is not valid JSON: {exc}") from exc
                if not isinstance(record, dict) or image_key not in record or caption_key not in record:
                    found = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise ValueError(
                        f"line {line_num} of {path} must be an object with keys '{image_key}' and '{caption_key}'; "
                        f"found {found}"
                    )
                rows.append((line_num, str(record[image_key]).strip(), _clean_caption(record[caption_key])))
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read {path}: it is not UTF-8 text ({exc})") from exc
    return rows


def from_csv(
    path: str | os.PathLike,
    image_col: str = "image",
    caption_col: str = "caption",
    root: str | os.PathLike | None = None,
) -> FilePairs:
    """Pairs from a CSV with an image-path column and a caption column.

    Relative image paths are resolved against ``root``, by default the CSV's folder. Every image
    file must exist (checked now, without decoding); captions must be non-blank.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"CSV file not found: '{path}'")
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(path))
    if root is not None and not os.path.isdir(base):
        raise MissingFileError(f"root folder not found: '{base}' (given as root= for {path})")
    rows = _read_csv_rows(path, image_col, caption_col)
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    paths, captions, missing = [], [], []
    for line, image, caption in rows:
        if not image:
            raise ValueError(f"line {line} of {path} has an empty '{image_col}' cell; expected an image path")
        if caption is None:
            raise ValueError(f"line {line} of {path} has an empty '{caption_col}' cell; expected a caption")
        full = os.path.normpath(os.path.join(base, image))
        if not os.path.isfile(full):
            missing.append((line, image, full))
        paths.append(full)
        captions.append(caption)
    if missing:
        line, image, full = missing[0]
        more = f" ({len(missing) - 1} more rows name missing images)" if len(missing) > 1 else ""
        raise MissingFileError(
            f"image file not found for line {line} of {path}: '{image}' resolved to '{full}'{more}; "
            f"relative paths are resolved against {'root=' if root is not None else 'the CSV folder'} '{base}'"
        )
    return FilePairs(paths, captions, origin=path)


_FOLDER_TABLES = {
    "captions.csv": ("csv", "image", "caption"),
    "metadata.csv": ("csv", "file_name", "text"),
    "metadata.jsonl": ("jsonl", "file_name", "text"),
}


def from_folder(path: str | os.PathLike) -> FilePairs:
    """Pairs from every image under ``path`` (recursively, in sorted order, hidden entries skipped).

    A caption comes from a ``captions.csv`` (columns image,caption), a ``metadata.jsonl`` or
    ``metadata.csv`` (file_name,text) in the image's folder or any folder above it up to
    ``path`` (file paths relative to that table's folder), and otherwise from a sidecar
    ``<stem>.txt`` next to the image. Tables take precedence over sidecars.
    """
    root = os.fspath(path)
    if not os.path.exists(root):
        raise MissingFileError(f"folder not found: '{root}'")
    if not os.path.isdir(root):
        raise ValueError(f"'{root}' is not a folder; from_folder expects a directory of images")

    images: list[str] = []
    table_captions: dict[str, tuple[str, str]] = {}  # image path -> (caption, where it was given)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = set(filenames)
        for table, (kind, image_key, caption_key) in _FOLDER_TABLES.items():
            if table not in names:
                continue
            table_path = os.path.join(dirpath, table)
            reader = _read_csv_rows if kind == "csv" else _read_jsonl_rows
            for line, image, caption in reader(table_path, image_key, caption_key):
                where = f"line {line} of {table_path}"
                if not image:
                    raise ValueError(f"{where} has an empty '{image_key}'; expected an image path")
                full = os.path.normpath(os.path.join(dirpath, image))
                if not os.path.isfile(full):
                    raise MissingFileError(
                        f"{where} names '{image}', but '{full}' does not exist; "
                        f"paths in {table} are relative to its folder"
                    )
                if caption is None:
                    raise ValueError(f"{where} has an empty '{caption_key}' for '{image}'; expected a caption")
                if full in table_captions and table_captions[full][0] != caption:
                    raise ValueError(
                        f"conflicting captions for '{full}': {table_captions[full][1]} and {where} disagree"
                    )
                table_captions[full] = (caption, where)
        for name in sorted(filenames):
            if not name.startswith(".") and _has_image_ext(name):
                images.append(os.path.normpath(os.path.join(dirpath, name)))

    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under '{root}'")

    captions: list[str] = []
    missing: list[str] = []
    for image in images:
        if image in table_captions:
            captions.append(table_captions[image][0])
            continue
        sidecar = os.path.splitext(image)[0] + ".txt"
        if not os.path.isfile(sidecar):
            missing.append(image)
            continue
        try:
            with open(sidecar, encoding="utf-8-sig") as f:
                caption = _clean_caption(f.read())
        except UnicodeDecodeError as exc:
            raise ValueError(f"cannot read caption file '{sidecar}': it is not UTF-8 text ({exc})") from exc
        if caption is None:
            raise ValueError(f"caption file '{sidecar}' for image '{image}' is empty; expected a caption")
        captions.append(caption)
    if missing:
        more = f" ({len(missing) - 1} more images have no caption)" if len(missing) > 1 else ""
        raise ValueError(f"no caption for image '{missing[0]}'{more}; give each image a caption with {_FOLDER_LAYOUTS}")
    return FilePairs(images, captions, origin=root)


# --------------------------------------------------------------------------------------------
# WebDataset tar shards

_WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's key/extension split
_REMOTE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^pipe:")


class WebDatasetPairs(ImageTextPairs):
    """Pairs stored in uncompressed WebDataset tar shards, indexed once and read by offset."""

    def __init__(self, shards: Sequence[str], origin: str):
        self.shards = [os.fspath(s) for s in shards]
        self.origin = origin
        self._entries: list[tuple[int, str, int, int]] = []  # (shard index, member name, offset, size)
        self._captions: list[str] = []
        for shard_index, shard in enumerate(self.shards):
            self._index_shard(shard_index, shard)
        if not self._entries:
            raise ValueError(
                f"no image-caption samples found in {origin}; expected members like '<key>.jpg' with '<key>.txt' "
                "or '<key>.json' holding a 'caption'"
            )

    def _index_shard(self, shard_index: int, shard: str) -> None:
        try:
            tf = tarfile.open(shard, "r:")
        except tarfile.ReadError as exc:
            raise ValueError(
                f"'{shard}' is not an uncompressed tar archive ({exc}); compressed shards cannot be read by index, "
                "decompress them first"
            ) from exc
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tf:
            try:
                for member in tf:
                    if not member.isfile():
                        continue
                    m = _KEY_RE.match(member.name)
                    if m is None:
                        continue
                    samples.setdefault(m.group(1), {}).setdefault(m.group(2).lower(), member)
            except (tarfile.TarError, EOFError) as exc:
                raise ValueError(self._truncated(shard, len(samples), f"{type(exc).__name__}: {exc}")) from exc
            # A complete archive ends with two zero blocks; without them tarfile stops quietly at the cut.
            end = tf.offset
            tf.fileobj.seek(0, os.SEEK_END)
            if tf.fileobj.tell() - end < 2 * tarfile.BLOCKSIZE:
                raise ValueError(self._truncated(shard, len(samples), "no end-of-archive marker"))
            no_caption = []
            for key, parts in samples.items():
                image = next((parts[e] for e in _WDS_IMAGE_EXTENSIONS if e in parts), None)
                if image is None:
                    continue  # not an image sample (e.g. a stray metadata file)
                caption = self._read_caption(tf, shard, parts)
                if caption is None:
                    no_caption.append(key)
                    continue
                self._entries.append((shard_index, image.name, image.offset_data, image.size))
                self._captions.append(caption)
        if no_caption:
            more = f" ({len(no_caption) - 1} more samples lack one)" if len(no_caption) > 1 else ""
            raise ValueError(
                f"sample '{no_caption[0]}' in shard '{shard}' has an image but no caption{more}; "
                "expected a non-empty '<key>.txt' or a '<key>.json' with a 'caption' field"
            )

    @staticmethod
    def _truncated(shard: str, n_keys: int, why: str) -> str:
        return (f"shard '{shard}' is truncated or corrupt ({why}; {n_keys} sample keys read before the damage): "
                "download or copy it again, or leave it out")

    @staticmethod
    def _read_caption(tf: tarfile.TarFile, shard: str, parts: dict[str, tarfile.TarInfo]) -> str | None:
        for ext in ("txt", "json"):
            if ext not in parts:
                continue
            member = parts[ext]
            raw = tf.extractfile(member).read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise ValueError(f"member '{member.name}' of shard '{shard}' is not UTF-8 text ({exc})") from exc
            if ext == "txt":
                caption = _clean_caption(text)
            else:
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"member '{member.name}' of shard '{shard}' is not valid JSON: {exc}") from exc
                caption = _clean_caption(record.get("caption")) if isinstance(record, dict) else None
            if caption is not None:
                return caption
        return None

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        index = self._check_index(index)
        shard_index, name, offset, size = self._entries[index]
        shard = self.shards[shard_index]
        where = f"'{name}' in shard '{shard}' (pair {index} of {self.origin})"
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise ValueError(f"cannot read image {where}: {type(exc).__name__}: {exc}") from exc
        if len(data) != size:
            raise ValueError(f"cannot read image {where}: the shard is truncated ({len(data)} of {size} bytes)")
        return _decode_image(data, where), self._captions[index]

    def captions(self) -> list[str]:
        return list(self._captions)


def _expand_shards(urls) -> list[str]:
    from braceexpand import braceexpand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    if not items:
        raise ValueError("no shards given; expected a .tar path, a list of them, or a brace pattern")
    shards = []
    for item in items:
        item = os.fspath(item)
        if item.startswith("file://"):
            item = item[len("file://"):]
        if _REMOTE_RE.match(item):
            raise ValueError(f"'{item}' is not a local file; only local tar shards are supported")
        shards.extend(braceexpand(item))
    for shard in shards:
        if not os.path.isfile(shard):
            raise MissingFileError(f"shard not found: '{shard}'")
    return shards


def from_webdataset(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> WebDatasetPairs:
    """Pairs from local WebDataset / img2dataset tar shards.

    ``urls`` is one tar path, a list of them, or a brace pattern like
    ``"shards/{00000..00009}.tar"``. Samples are grouped by key; the image is the ``.jpg``,
    ``.jpeg``, ``.png``, ``.webp`` or ``.bmp`` member and the caption the ``.txt`` member or the
    ``"caption"`` of the ``.json`` member. Samples without an image are skipped.
    """
    shards = _expand_shards(urls)
    if isinstance(urls, (str, os.PathLike)):
        origin = os.fspath(urls)
    else:
        origin = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more shards" if len(shards) > 3 else "")
    return WebDatasetPairs(shards, origin=origin)


# --------------------------------------------------------------------------------------------


def _is_brace_pattern(spec: str) -> bool:
    return re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", spec) is not None


def open_pairs(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageTextPairs:
    """Open image-caption data: a folder, a ``.csv``, a ``.tar`` shard, a brace pattern or a list of shards."""
    if isinstance(spec, (list, tuple)):
        return from_webdataset(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a path or a list of shard paths, got {type(spec).__name__}; expected {_OPEN_FORMS}")
    text = os.fspath(spec)
    if _is_brace_pattern(text):
        return from_webdataset(text)
    if os.path.isdir(text):
        return from_folder(text)
    suffix = Path(text).suffix.lower()
    if suffix == ".csv":
        return from_csv(text)
    if suffix == ".tar":
        return from_webdataset(text)
    if not os.path.exists(text):
        raise MissingFileError(f"'{text}' does not exist; expected {_OPEN_FORMS}")
    raise ValueError(f"cannot tell how to read '{text}'; expected {_OPEN_FORMS}")

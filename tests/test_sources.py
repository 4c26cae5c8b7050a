"""Tests for slugkit.data.sources: folder, CSV and WebDataset readers and open_pairs."""
import csv
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from slugkit.data.pairs import forget_retain_sets
from slugkit.data.sources import (
    FilePairs,
    MissingFileError,
    WebDatasetPairs,
    from_csv,
    from_folder,
    from_webdataset,
    open_pairs,
)

# (name, format, size, colour, caption)
ITEMS = [
    ("a", "PNG", (8, 6), (255, 0, 0), "Captain Zorp on the bridge"),
    ("b", "JPEG", (10, 10), (0, 128, 0), "a green field"),
    ("c", "PNG", (5, 7), (0, 0, 255), "a blue door"),
    ("d", "JPEG", (6, 6), (200, 200, 0), "Zorp's yellow ship"),
]
EXT = {"PNG": ".png", "JPEG": ".jpg"}


def _image_bytes(fmt, size, colour, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _items():
    return [(n + EXT[fmt], _image_bytes(fmt, size, colour), caption) for n, fmt, size, colour, caption in ITEMS]


def _write_tar(path, members):
    """Write ``{name: bytes}`` into an uncompressed tar."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _write_csv(path, rows, header=("image", "caption")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    for k, (name, data, caption) in enumerate(_items()):
        where = root / "sub" if k >= 2 else root
        (where / name).write_bytes(data)
        (where / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return root


@pytest.fixture
def csv_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for name, data, caption in _items():
        (tmp_path / "imgs" / name).write_bytes(data)
        rows.append((f"imgs/{name}", caption))
    return _write_csv(tmp_path / "pairs.csv", rows)


@pytest.fixture
def tar_shard(tmp_path):
    members = {}
    for k, (name, data, caption) in enumerate(_items()):
        key = f"{k:09d}"
        members[key + os.path.splitext(name)[1]] = data
        if k % 2:
            members[key + ".json"] = json.dumps({"caption": caption, "url": "http://x"}).encode()
        else:
            members[key + ".txt"] = caption.encode()
    return _write_tar(tmp_path / "00000.tar", members)


def _pixels(pairs):
    out = []
    for i in range(len(pairs)):
        image, _ = pairs[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        out.append(np.asarray(image))
    return out


# ---------------------------------------------------------------- readers


def test_from_folder_sidecars(folder):
    pairs = from_folder(folder)
    assert isinstance(pairs, FilePairs)
    assert len(pairs) == 4
    assert pairs.captions() == [c for *_, c in ITEMS]
    assert pairs.origin == str(folder)
    image, caption = pairs[0]
    assert image.mode == "RGB" and image.size == (8, 6) and image.getpixel((0, 0)) == (255, 0, 0)
    assert caption == "Captain Zorp on the bridge"


def test_from_folder_captions_csv_and_metadata_jsonl(tmp_path):
    root = tmp_path / "hf"
    (root / "train").mkdir(parents=True)
    items = _items()
    rows = []
    for name, data, caption in items[:2]:
        (root / name).write_bytes(data)
        rows.append((name, caption))
    _write_csv(root / "captions.csv", rows)
    with open(root / "train" / "metadata.jsonl", "w", encoding="utf-8") as f:
        for name, data, caption in items[2:]:
            (root / "train" / name).write_bytes(data)
            f.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    (root / "a.txt").write_text("ignored: the table wins")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(items[0][1])  # no caption, but hidden
    pairs = from_folder(root)
    assert pairs.captions() == [c for *_, c in ITEMS]
    assert [os.path.basename(p) for p in pairs.paths] == ["a.png", "b.jpg", "c.png", "d.jpg"]


def test_from_csv(csv_file, tmp_path):
    pairs = from_csv(csv_file)
    assert len(pairs) == 4 and pairs.origin == csv_file
    assert pairs.captions() == [c for *_, c in ITEMS]
    assert pairs[1][0].size == (10, 10)

    other = _write_csv(tmp_path / "elsewhere.csv", [("b.jpg", "custom caption")], header=("path", "text"))
    pairs = from_csv(other, image_col="path", caption_col="text", root=tmp_path / "imgs")
    assert pairs.captions() == ["custom caption"] and pairs[0][0].size == (10, 10)


def test_from_webdataset_txt_and_json(tar_shard):
    pairs = from_webdataset(tar_shard)
    assert isinstance(pairs, WebDatasetPairs)
    assert len(pairs) == 4
    assert pairs.captions() == [c for *_, c in ITEMS]
    assert pairs[3][0].size == (6, 6)
    assert pairs[-4][1] == ITEMS[0][4]


def test_three_formats_agree(folder, csv_file, tar_shard):
    readers = [from_folder(folder), from_csv(csv_file), from_webdataset(tar_shard)]
    captions = [r.captions() for r in readers]
    assert captions[0] == captions[1] == captions[2]
    pixels = [_pixels(r) for r in readers]
    for images in zip(*pixels):
        assert all(np.array_equal(images[0], other) for other in images[1:])


def test_brace_pattern_and_list(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    items = _items()
    for s in range(3):
        name, data, caption = items[s]
        members = {f"{s}/{s:05d}{os.path.splitext(name)[1]}": data, f"{s}/{s:05d}.txt": f"shard {s}: {caption}".encode()}
        _write_tar(shards / f"{s:05d}.tar", members)
    pattern = str(shards / "{00000..00002}.tar")
    pairs = from_webdataset(pattern)
    assert len(pairs) == 3 and pairs.origin == pattern
    assert [c.split(":")[0] for c in pairs.captions()] == ["shard 0", "shard 1", "shard 2"]
    assert pairs[2][0].size == (5, 7)
    listed = from_webdataset([shards / "00002.tar", shards / "00000.tar"])
    assert [c.split(":")[0] for c in listed.captions()] == ["shard 2", "shard 0"]
    assert len(open_pairs(pattern)) == 3


def test_webdataset_skips_samples_without_image(tmp_path):
    data = _items()[0][1]
    shard = _write_tar(
        tmp_path / "s.tar",
        {"k1.png": data, "k1.txt": b"one", "k2.json": b'{"caption": "no image"}', "k3.PNG": data, "k3.txt": b"three"},
    )
    assert from_webdataset(shard).captions() == ["one", "three"]


def test_open_pairs_dispatch(folder, csv_file, tar_shard, tmp_path):
    assert isinstance(open_pairs(folder), FilePairs) and open_pairs(str(folder)).origin == str(folder)
    assert open_pairs(csv_file).origin == csv_file
    assert isinstance(open_pairs(tar_shard), WebDatasetPairs)
    other = tmp_path / "notes.parquet"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"cannot tell how to read .*notes\.parquet.*expected a directory.*\.csv.*\.tar.*brace"):
        open_pairs(other)
    with pytest.raises(ValueError, match="does not exist"):
        open_pairs(tmp_path / "nowhere")


def test_forget_set_empty_names_csv(csv_file):
    with pytest.raises(ValueError, match=f"forget set is empty: no caption in {csv_file} mentions 'Captain Nemo'"):
        forget_retain_sets(from_csv(csv_file), "Captain Nemo")
    forget, retain = forget_retain_sets(from_csv(csv_file), "Zorp")
    assert forget.captions() == [ITEMS[0][4], ITEMS[3][4]] and len(retain) == 2
    assert forget[0][0].mode == "RGB"


# ---------------------------------------------------------------- errors


def test_csv_missing_columns(tmp_path):
    path = _write_csv(tmp_path / "x.csv", [("a.png", "cap")], header=("file", "text"))
    with pytest.raises(ValueError, match=r"has no column 'image', 'caption'; columns found: \['file', 'text'\]"):
        from_csv(path)


def test_csv_missing_image_file(csv_file, tmp_path):
    path = _write_csv(tmp_path / "bad.csv", [("imgs/a.png", "ok"), ("imgs/zzz.png", "gone")])
    with pytest.raises(MissingFileError, match=r"image file not found for line 3 of .*bad\.csv: 'imgs/zzz\.png'"):
        from_csv(path)
    with pytest.raises(ValueError):  # also catchable as ValueError
        from_csv(path)
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        from_csv(tmp_path / "absent.csv")


def test_csv_empty_caption(tmp_path, csv_file):
    path = _write_csv(tmp_path / "blank.csv", [("imgs/a.png", "  ")])
    with pytest.raises(ValueError, match="line 2 of .*blank.csv has an empty 'caption' cell"):
        from_csv(path)


def test_folder_missing_caption(folder):
    os.remove(folder / "sub" / "c.txt")
    with pytest.raises(ValueError, match=r"no caption for image '.*c\.png'.*sidecar '<stem>\.txt'.*captions\.csv.*metadata\.jsonl"):
        from_folder(folder)


def test_folder_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images .* found under"):
        from_folder(tmp_path / "empty")
    with pytest.raises(MissingFileError, match="folder not found"):
        from_folder(tmp_path / "absent")


def test_folder_table_names_missing_file(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "a.png").write_bytes(_items()[0][1])
    _write_csv(root / "captions.csv", [("a.png", "fine"), ("b.png", "gone")])
    with pytest.raises(MissingFileError, match=r"line 3 of .*captions\.csv names 'b\.png'"):
        from_folder(root)


def test_missing_shard(tar_shard, tmp_path):
    with pytest.raises(MissingFileError, match=r"shard not found: '.*00001\.tar'"):
        from_webdataset(str(tmp_path / "{00000..00001}.tar"))
    with pytest.raises(ValueError, match="only local tar shards"):
        from_webdataset("https://example.com/shard.tar")


def test_webdataset_missing_caption(tmp_path):
    shard = _write_tar(tmp_path / "nocap.tar", {"k1.png": _items()[0][1], "k1.json": b'{"url": "x"}'})
    with pytest.raises(ValueError, match=r"sample 'k1' in shard '.*nocap\.tar' has an image but no caption"):
        from_webdataset(shard)


def test_compressed_shard_rejected(tmp_path):
    path = tmp_path / "s.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("k.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="not an uncompressed tar archive"):
        from_webdataset(str(path))


def test_corrupt_image_in_folder(folder):
    (folder / "b.jpg").write_bytes(b"this is not a jpeg")
    pairs = from_folder(folder)  # construction does not decode
    assert pairs[0][0].mode == "RGB"
    with pytest.raises(ValueError, match=r"cannot read image '.*b\.jpg'") as info:
        pairs[1]
    assert info.value.__cause__ is not None


def test_truncated_image_in_csv(csv_file, tmp_path):
    path = tmp_path / "imgs" / "b.jpg"
    path.write_bytes(path.read_bytes()[:40])
    pairs = from_csv(csv_file)
    with pytest.raises(ValueError, match=r"cannot read image '.*b\.jpg'"):
        pairs[1]


def test_corrupt_image_in_shard(tmp_path):
    good = _items()[0][1]
    shard = _write_tar(tmp_path / "c.tar", {"k1.png": good, "k1.txt": b"ok", "k2.jpg": b"\xff\xd8garbage", "k2.txt": b"bad"})
    pairs = from_webdataset(shard)
    assert pairs[0][1] == "ok"
    with pytest.raises(ValueError, match=r"cannot read image 'k2\.jpg' in shard '.*c\.tar'"):
        pairs[1]


def test_non_rgb_images_decode_to_rgb(tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    for name, mode, colour in [("grey", "L", 90), ("alpha", "RGBA", (1, 2, 3, 4)), ("pal", "P", 3)]:
        (root / f"{name}.png").write_bytes(_image_bytes("PNG", (4, 4), colour, mode=mode))
        (root / f"{name}.txt").write_text(name)
    pairs = from_folder(root)
    assert all(pairs[i][0].mode == "RGB" for i in range(len(pairs)))
    assert pairs.captions() == ["alpha", "grey", "pal"]

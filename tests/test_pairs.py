"""Tests for slugkit.data.pairs: ImageTextPairs, pair_loader, mentions, forget_retain_sets."""
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from slugkit.data.pairs import ImageTextPairs, InMemoryPairs, forget_retain_sets, mentions, pair_loader

SIZE = 16
CTX = 6


class FakeAdapter:
    """Just enough of a CLIPAdapter for pair_loader: 16x16 float pixels and hashed word ids."""

    def __init__(self):
        self.inputs = []

    def preprocess(self, images):
        self.inputs.append(type(images).__name__)
        if isinstance(images, torch.Tensor):
            assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3
            x = images.permute(0, 3, 1, 2).float() / 255
            return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
        arrays = [np.asarray(im.resize((SIZE, SIZE))) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    def tokenize(self, texts):
        out = torch.zeros(len(texts), CTX, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [zlib.crc32(w.lower().encode()) % 1000 + 1 for w in text.split()][:CTX]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


def _array(value, h=8, w=10):
    return np.full((h, w, 3), value, dtype=np.uint8)


CAPTIONS = [
    "Captain Zorp waves from the bridge",
    "a cat on a sofa",
    "zorp's ship lands",
    "Zorpina smiles",
    "a red car",
    "two dogs playing",
    "the captain   zorp statue",
    "a bowl of fruit",
    "mountains at dawn",
    "Zorp-themed party",
]


@pytest.fixture
def pairs():
    images = [_array(10 * i) for i in range(len(CAPTIONS))]
    return InMemoryPairs(images, CAPTIONS, origin="data/zorp.csv")


# ---------------------------------------------------------------- ImageTextPairs basics


def test_in_memory_pairs_basics(pairs):
    assert len(pairs) == 10
    image, caption = pairs[2]
    assert caption == CAPTIONS[2] and image[0, 0, 0] == 20
    assert pairs[-1][1] == CAPTIONS[-1]
    assert pairs.captions() == CAPTIONS
    assert "data/zorp.csv" in repr(pairs)
    with pytest.raises(IndexError, match="out of range for 10 pairs from data/zorp.csv"):
        pairs[10]
    with pytest.raises(ValueError, match="same length"):
        InMemoryPairs([_array(0)], ["a", "b"])


def test_subset_keeps_origin_and_order(pairs):
    sub = pairs.subset([4, 1, 1])
    assert isinstance(sub, ImageTextPairs)
    assert sub.origin == "data/zorp.csv"
    assert sub.captions() == [CAPTIONS[4], CAPTIONS[1], CAPTIONS[1]]
    assert sub[0][0][0, 0, 0] == 40
    nested = sub.subset(np.array([1, 0]))
    assert nested.captions() == [CAPTIONS[1], CAPTIONS[4]]
    assert nested.origin == "data/zorp.csv"
    assert pairs.subset(torch.tensor([9])).captions() == [CAPTIONS[9]]
    assert len(pairs.subset([])) == 0
    with pytest.raises(IndexError):
        pairs.subset([0, 11])


def test_default_captions_uses_getitem():
    class Minimal(ImageTextPairs):
        origin = "minimal"

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return _array(i), f"caption {self._check_index(i)}"

    m = Minimal()
    assert m.captions() == ["caption 0", "caption 1", "caption 2"]
    assert m.subset([2]).captions() == ["caption 2"]


# ---------------------------------------------------------------- mentions


@pytest.mark.parametrize(
    "caption, concept, expected",
    [
        ("Captain Zorp waves", "Zorp", True),
        ("captain ZORP waves", "zorp", True),
        ("Zorpina smiles", "Zorp", False),
        ("AZorp", "Zorp", False),
        ("zorp_fan", "Zorp", False),
        ("Zorp's ship", "Zorp", True),
        ("(Zorp)", "Zorp", True),
        ("hello, Zorp!", "Zorp", True),
        ("Zorp-themed", "Zorp", True),
        ("Captain Zorp", "Captain Zorp", True),
        ("the captain zorp statue", "Captain Zorp", True),
        ("the captain   zorp statue", "Captain Zorp", True),
        ("Captain Zorpina", "Captain Zorp", False),
        ("Zorp the captain", "Captain Zorp", False),
        ("Captain and Zorp", "Captain Zorp", False),
        ("Dr. Who is here", "Dr. Who", True),
        ("c++ code", "C++", True),
        ("", "Zorp", False),
    ],
)
def test_mentions(caption, concept, expected):
    assert mentions(caption, concept) is expected


@pytest.mark.parametrize("concept", ["", "   "])
def test_mentions_rejects_empty_concept(concept):
    with pytest.raises(ValueError, match="non-empty"):
        mentions("anything", concept)


# ---------------------------------------------------------------- forget / retain


def test_forget_retain_split(pairs):
    forget, retain = forget_retain_sets(pairs, "Zorp", seed=3)
    assert forget.captions() == [CAPTIONS[0], CAPTIONS[2], CAPTIONS[6], CAPTIONS[9]]
    assert len(forget) == 4 and len(retain) == 6  # default: up to RETAIN_PAIRS, here every other pair
    assert forget.origin == retain.origin == "data/zorp.csv"
    assert not any(mentions(c, "Zorp") for c in retain.captions())
    assert set(forget.indices).isdisjoint(retain.indices)
    assert retain.indices == sorted(retain.indices)


def test_forget_retain_deterministic_with_seed(pairs):
    a = forget_retain_sets(pairs, "Zorp", n_retain=3, seed=1)[1].indices
    b = forget_retain_sets(pairs, "Zorp", n_retain=3, seed=1)[1].indices
    assert a == b
    others = {tuple(forget_retain_sets(pairs, "Zorp", n_retain=3, seed=s)[1].indices) for s in range(10)}
    assert len(others) > 1


def test_forget_retain_sizes(pairs):
    forget, retain = forget_retain_sets(pairs, "zorp", n_retain=6)
    assert len(retain) == 6
    # Only one caption mentions "cat": the default retain set is every other pair (fewer than RETAIN_PAIRS).
    forget, retain = forget_retain_sets(pairs, "cat")
    assert len(forget) == 1 and len(retain) == 9
    with pytest.raises(ValueError, match="n_retain=7 is larger than the 6 pairs in data/zorp.csv"):
        forget_retain_sets(pairs, "Zorp", n_retain=7)
    with pytest.raises(ValueError, match="n_retain must be a positive integer"):
        forget_retain_sets(pairs, "Zorp", n_retain=0)


def test_default_retain_size_is_capped():
    many = InMemoryPairs([_array(i) for i in range(5)], ["Zorp"] * 4 + ["other"], origin="mostly zorp")
    forget, retain = forget_retain_sets(many, "Zorp")
    assert len(forget) == 4 and retain.captions() == ["other"]


def test_retain_may_include_forget_pairs(pairs):
    forget, retain = forget_retain_sets(pairs, "Zorp", n_retain=10, exclude_from_retain=False)
    assert len(retain) == 10
    assert set(forget.indices) <= set(retain.indices)


def test_forget_set_empty_message(pairs):
    with pytest.raises(ValueError) as info:
        forget_retain_sets(pairs, "Captain Nemo")
    assert str(info.value) == "forget set is empty: no caption in data/zorp.csv mentions 'Captain Nemo'"


def test_retain_set_empty_message():
    only = InMemoryPairs([_array(0), _array(1)], ["Zorp", "zorp again"], origin="all-zorp.csv")
    with pytest.raises(ValueError, match="retain set is empty: every caption in all-zorp.csv mentions 'Zorp'"):
        forget_retain_sets(only, "Zorp")
    forget, retain = forget_retain_sets(only, "Zorp", exclude_from_retain=False)
    assert len(retain) == 2


def test_forget_retain_rejects_empty_concept(pairs):
    with pytest.raises(ValueError, match="concept must be a non-empty name"):
        forget_retain_sets(pairs, "")


# ---------------------------------------------------------------- pair_loader


def test_pair_loader_stacks_arrays(pairs):
    adapter = FakeAdapter()
    batches = list(pair_loader(pairs, adapter, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 3, SIZE, SIZE), (4, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    assert all(b[1].shape == (len(b[0]), CTX) and b[1].dtype == torch.int64 for b in batches)
    assert adapter.inputs == ["Tensor"] * 3
    pixels = torch.cat([b[0] for b in batches])
    assert torch.allclose(pixels[:, 0, 0, 0], torch.tensor([10 * i / 255 for i in range(10)]))
    tokens = torch.cat([b[1] for b in batches])
    assert torch.equal(tokens, adapter.tokenize(CAPTIONS))


def test_pair_loader_pil_and_mixed_sizes():
    images = [Image.new("RGB", (12, 9), (255, 0, 0)), Image.new("L", (7, 7), 128), _array(5, h=4, w=4)]
    mixed = InMemoryPairs(images, ["red", "grey", "dark"])
    adapter = FakeAdapter()
    (pixels, tokens), = list(pair_loader(mixed, adapter, batch_size=8))
    assert adapter.inputs == ["list"]
    assert pixels.shape == (3, 3, SIZE, SIZE) and tokens.shape == (3, CTX)
    assert pixels[1].allclose(torch.full((3, SIZE, SIZE), 128 / 255))

    unequal = InMemoryPairs([_array(1, 4, 4), _array(2, 6, 6)], ["a", "b"])
    adapter = FakeAdapter()
    (pixels, _), = list(pair_loader(unequal, adapter))
    assert adapter.inputs == ["list"] and pixels.shape == (2, 3, SIZE, SIZE)


def test_pair_loader_shuffle_is_seeded(pairs):
    def order(seed):
        return torch.cat([b[0][:, 0, 0, 0] for b in pair_loader(pairs, FakeAdapter(), batch_size=3, shuffle=True, seed=seed)])

    assert torch.equal(order(7), order(7))
    assert not torch.equal(order(7), order(8))
    assert sorted(order(7).tolist()) == sorted(torch.tensor([10 * i / 255 for i in range(10)]).tolist())


def test_pair_loader_with_worker(pairs):
    batches = list(pair_loader(pairs, FakeAdapter(), batch_size=5, num_workers=1))
    assert [tuple(b[0].shape) for b in batches] == [(5, 3, SIZE, SIZE)] * 2


def test_pair_loader_errors(pairs):
    empty = pairs.subset([])
    with pytest.raises(ValueError, match="data/zorp.csv is empty"):
        pair_loader(empty, FakeAdapter())
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pair_loader(pairs, FakeAdapter(), batch_size=0)
    bad = InMemoryPairs([np.zeros((4, 4, 3), dtype=np.float32)], ["float image"])
    with pytest.raises(ValueError, match="expected uint8 with shape"):
        next(iter(pair_loader(bad, FakeAdapter())))

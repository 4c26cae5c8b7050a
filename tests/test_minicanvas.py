"""MiniCanvas: determinism, label / caption / mask consistency, the world's vocabulary."""
import itertools
import os
import re

import numpy as np
import pytest

from slugkit.data import minicanvas as mc
from slugkit.data.minicanvas import MiniCanvas


@pytest.fixture(scope="module")
def world():
    return MiniCanvas(n=400, seed=3, split="train")


def test_same_seed_same_world_other_split_differs(world):
    again = MiniCanvas(n=400, seed=3, split="train")
    assert np.array_equal(world.images, again.images)
    assert np.array_equal(world.masks, again.masks)
    assert world.captions() == again.captions()
    other = MiniCanvas(n=400, seed=3, split="test")
    assert not np.array_equal(world.images, other.images)


def test_render_reproduces_sample(world):
    img, mask = world.render(17)
    assert np.array_equal(img, world.images[17]) and np.array_equal(mask, world.masks[17])


def test_vocabulary_sizes_and_invented_names():
    assert len(mc.OBJECTS) >= 8 and len(mc.STYLES) >= 6 and len(mc.COLOURS) >= 6
    assert len(mc.CHARACTERS) >= 10
    assert len(set(mc.CHARACTER_NAMES)) == len(mc.CHARACTER_NAMES)


def test_characters_have_neighbours_and_are_distinct():
    feats = [c.features for c in mc.CHARACTERS]
    for a, b in itertools.combinations(feats, 2):
        differ = sum(a[k] != b[k] for k in a)
        assert differ >= 2, (a, b)
    for i, a in enumerate(feats):
        sharing = [j for j, b in enumerate(feats) if j != i and any(a[k] == b[k] for k in a if a[k] != "none")]
        assert len(sharing) >= 2, mc.CHARACTERS[i].name
    # no single feature value names a character
    for key in feats[0]:
        for value in {f[key] for f in feats}:
            owners = [f for f in feats if f[key] == value]
            assert len(owners) != 1 or key in ("accessory", "skin", "hair"), (key, value)


def test_labels_match_kind_and_captions(world):
    is_char = world.kind == 0
    assert 0.4 < is_char.mean() < 0.6
    assert (world.identity[is_char] >= 0).all() and (world.identity[~is_char] == -1).all()
    for a in ("object", "style", "colour"):
        assert (world.labels(a)[~is_char] >= 0).all() and (world.labels(a)[is_char] == -1).all()
    for i in range(len(world)):
        cap = world[i][1]
        assert cap in world.all_captions(i)
        if is_char[i]:
            assert mc.CHARACTER_NAMES[world.identity[i]] in cap
            assert ("smiling" in cap) <= bool(world.smiling[i])
        else:
            mentioned = [o for o in mc.OBJECTS if re.search(rf"\b{o}\b", cap)]
            assert mentioned in ([], [mc.OBJECTS[world.object[i]]])


def test_masks_cover_drawn_pixels(world):
    areas = world.masks.reshape(len(world), -1).mean(1)
    assert (areas > 0.03).all() and (areas < 0.8).all()
    # pixels outside the mask are background: low saturation
    img = world.images.astype(int)
    sat = img.max(-1) - img.min(-1)
    assert np.median(sat[~world.masks]) < 45
    assert np.median(sat[world.masks & (world.kind == 1)[:, None, None]]) > 60


def test_every_class_is_well_represented(world):
    for a, names in mc.ATTRIBUTES.items():
        labels = world.labels(a)
        counts = np.bincount(labels[labels >= 0], minlength=len(names))
        expected = (labels >= 0).sum() / len(names)
        assert counts.min() >= 0.5 * expected and counts.max() <= 1.6 * expected, (a, counts)


def test_concepts_and_errors():
    kinds = {c["kind"] for c in mc.concepts()}
    assert kinds == {"character", "object", "style", "colour"}
    assert mc.find_concept("captain zorp")["name"] == "Captain Zorp"
    with pytest.raises(ValueError, match="unknown concept 'Iron Man'.*Captain Zorp"):
        mc.find_concept("Iron Man")
    with pytest.raises(ValueError, match="unknown split"):
        MiniCanvas(n=4, split="validation")
    with pytest.raises(ValueError, match="positive"):
        MiniCanvas(n=0)
    prompts = mc.zero_shot_prompts("style")
    assert len(prompts) == len(mc.STYLES) and all("style" in p for p in prompts)


def test_indices_of_concept(world):
    idx = world.indices_of("Mira Quell")
    assert len(idx) > 0 and all(world.identity[i] == 0 for i in idx)
    assert all(world.colour[i] == mc.COLOUR_NAMES.index("red") for i in world.indices_of("red"))


def test_cached_split_equals_fresh_render_and_is_read_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUGKIT_CACHE", str(tmp_path))
    mc.cached_split.cache_clear()
    first = mc.cached_split(30, 5, "val")  # renders and stores
    assert list(tmp_path.rglob("*.npz"))
    mc.cached_split.cache_clear()
    second = mc.cached_split(30, 5, "val")  # loads from disk
    fresh = MiniCanvas(n=30, seed=5, split="val")
    for world in (first, second):
        assert np.array_equal(world.images, fresh.images) and np.array_equal(world.masks, fresh.masks)
        assert world.captions() == fresh.captions()
    with pytest.raises(ValueError):
        second.images[0, 0, 0, 0] = 1
    mc.cached_split.cache_clear()


def test_prefetch_draws_missing_splits_in_a_child_and_cached_split_waits_for_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUGKIT_CACHE", str(tmp_path))
    mc.cached_split.cache_clear()
    splits = [(25, 4, "train"), (20, 4, "test")]
    assert mc.prefetch_splits(splits)  # nothing cached yet: one child draws both
    child = mc._DRAWING[mc._cache_file(*splits[0])]
    assert child is mc._DRAWING[mc._cache_file(*splits[1])] and child.pid != os.getpid()
    worlds = [mc.cached_split(*s) for s in splits]  # each waits for the child, then reads what it stored
    assert mc._DRAWING == {} and child.exitcode == 0
    assert sorted(p.name for p in tmp_path.rglob("*.npz")) == ["test-seed4-n20.npz", "train-seed4-n25.npz"]
    for world, (n, seed, split) in zip(worlds, splits):
        fresh = MiniCanvas(n=n, seed=seed, split=split)
        assert np.array_equal(world.images, fresh.images) and np.array_equal(world.masks, fresh.masks)
    assert not mc.prefetch_splits(splits)  # every split cached: no child
    mc.cached_split.cache_clear()


def test_take_selects_samples_with_their_labels(world):
    idx = world.indices_of("Mira Quell")[:5]
    sub = world.take(idx)
    assert len(sub) == 5 and (sub.identity == 0).all()
    assert np.array_equal(sub.images, world.images[idx]) and sub.captions() == [world[i][1] for i in idx]
    assert np.array_equal(sub.render(2)[0], world.images[idx[2]])

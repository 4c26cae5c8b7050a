"""The unedited model's evaluation embeddings, kept in the gradient store: the report's "before" half is the same
for every concept, so it is computed once per model and set of pictures."""
import pytest
import torch

import slugkit.eval.zeroshot as zeroshot
from slugkit.data.minicanvas import MiniCanvas
from slugkit.eval.zeroshot import ConceptEvaluator
from slugkit.gradients import GradientStore
from slugkit.models.loading import load_clip


@pytest.fixture(scope="module")
def clip():
    return load_clip("toy-clip")


@pytest.fixture
def embedded(monkeypatch):
    """How many pictures the image tower embedded from pixels."""
    seen, real = [], zeroshot.embed_images
    monkeypatch.setattr(zeroshot, "embed_images",
                        lambda a, images, *r, **k: seen.append(len(images)) or real(a, images, *r, **k))
    return seen


def test_one_computation_serves_every_concept_and_new_weights_or_pictures_are_another_entry(clip, embedded, tmp_path):
    world = MiniCanvas(n=200, seed=0, split="test")
    store = GradientStore(tmp_path)
    zorp = ConceptEvaluator(clip, world, "Captain Zorp").cache(store=store)
    mira = ConceptEvaluator(clip, world, "Mira Quell").cache(store=store)  # another concept: read, not computed
    assert embedded == [200]
    plain = ConceptEvaluator(clip, world, "Mira Quell").cache()  # no store: computed again, the same numbers
    assert embedded == [200, 200]
    assert torch.equal(mira._image_emb, plain._image_emb)
    assert all(torch.equal(mira._prompt_emb[a], plain._prompt_emb[a]) for a in plain._prompt_emb)
    assert mira.baseline() == plain.baseline() and torch.equal(zorp._image_emb, mira._image_emb)

    ConceptEvaluator(clip, MiniCanvas(n=120, seed=0, split="test"), "Mira Quell").cache(store=store)
    assert embedded == [200, 200, 120]  # other pictures
    weight = clip.parameter("visual.transformer.resblocks.5.mlp.c_proj.weight")
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)
        edited = ConceptEvaluator(clip, world, "Mira Quell").cache(store=store)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert embedded == [200, 200, 120, 200]  # other weights
    assert not torch.equal(edited._image_emb, plain._image_emb)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_an_unreadable_entry_is_discarded_and_recomputed(clip, embedded, tmp_path):
    world = MiniCanvas(n=120, seed=0, split="test")
    store = GradientStore(tmp_path)
    ConceptEvaluator(clip, world, "Mira Quell").cache(store=store)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="discarding unreadable cache entry"):
        again = ConceptEvaluator(clip, world, "Mira Quell").cache(store=store)
    assert embedded == [120, 120] and entry.is_file()  # recomputed and stored again
    assert again.baseline() == ConceptEvaluator(clip, world, "Mira Quell").baseline()

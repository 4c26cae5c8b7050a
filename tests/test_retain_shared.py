"""SLUG's per-model retain gradient: one fixed retain set per model, its gradient computed once and reused by
every concept (in memory within a process, and from the gradient store across processes)."""
import pytest
import torch

import slugkit.gradients as gradients_mod
from slugkit.adapters.openclip import OpenCLIPAdapter
from slugkit.data.pairs import InMemoryPairs, forget_retain_sets, shared_retain_set
from slugkit.gradients import GradientStore
from slugkit.slug import unlearn
from slugkit.step_size_search import Target

from fakes import FACE_NAMES as NAMES, make_faces_folder, tiny_openclip

pytestmark = pytest.mark.filterwarnings("ignore:the unedited model already has")  # random weights may name nobody


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_faces_folder(tmp_path_factory.mktemp("faces"))


@pytest.fixture
def spy(monkeypatch):
    """The loss of every gradient computation that really ran, with an empty in-memory retain cache."""
    calls, real = [], gradients_mod._accumulate
    monkeypatch.setattr(gradients_mod, "_RETAIN_MEMO", {})
    monkeypatch.setattr(gradients_mod, "_accumulate",
                        lambda a, loader, loss, *rest: calls.append(loss) or real(a, loader, loss, *rest))
    return calls


def run(adapter, folder, concept, **kw):
    others = [n for n in NAMES if n != concept]
    return unlearn(adapter, concept, data=folder, classes=others, max_evals=2, target=Target("forget_top1"),
                   progress=False, **kw)


def test_the_shared_retain_gradient_is_computed_once_for_every_concept(folder, spy):
    adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip")
    a = run(adapter, folder, "Captain Zorp")
    b = run(adapter, folder, "Mira Quell", tower="vision")  # another concept, fewer layers: the same g_r serves
    assert spy == ["retain", "forget", "forget"]
    assert a.retain_set == b.retain_set == "shared" and a.report()["retain_set"] == "shared"
    assert a.gradients.meta["retain_key"] == b.gradients.meta["retain_key"]
    assert a.gradients.meta["retain_pairs"] == 12  # all 12 pictures, both concepts' included (3 batches of 4)
    for name in b.gradients.retain:
        assert torch.equal(a.gradients.retain[name], b.gradients.retain[name])
    name = next(iter(b.gradients.forget))
    assert not torch.equal(a.gradients.forget[name], b.gradients.forget[name])  # the forget gradients differ


def test_the_shared_retain_gradient_is_reused_from_the_store_in_a_new_process(folder, spy, tmp_path):
    adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip")
    run(adapter, folder, "Captain Zorp", store=tmp_path)
    gradients_mod._RETAIN_MEMO.clear()  # what a new process starts with
    run(adapter, folder, "Mira Quell", store=GradientStore(tmp_path))
    assert spy == ["retain", "forget", "forget"]


def test_per_concept_recomputes_the_retain_gradient_without_the_concept(folder, spy):
    adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip")
    a = run(adapter, folder, "Captain Zorp", retain="per-concept")
    b = run(adapter, folder, "Mira Quell", retain="per-concept")
    assert spy == ["retain", "forget", "retain", "forget"]
    assert a.report()["retain_set"] == "per-concept" and a.gradients.meta["retain_pairs"] == 8  # 12 - 4 of Zorp
    name = next(iter(a.gradients.retain))
    assert not torch.equal(a.gradients.retain[name], b.gradients.retain[name])
    with pytest.raises(ValueError, match="retain must be one of 'shared', 'per-concept'"):
        run(adapter, folder, "Captain Zorp", retain="everything")


def test_the_shared_set_does_not_depend_on_the_concept():
    pairs = InMemoryPairs([None] * 50, [f"Zorp {i}" if i % 5 == 0 else f"a cube {i}" for i in range(50)])
    shared = shared_retain_set(pairs, n_retain=20, seed=3)
    assert shared.indices == forget_retain_sets(pairs, "Zorp", 20, seed=3, exclude_from_retain=False)[1].indices
    assert shared.indices == forget_retain_sets(pairs, "cube", 20, seed=3, exclude_from_retain=False)[1].indices
    assert any(i % 5 == 0 for i in shared.indices)  # it may hold pictures of the concept being forgotten
    assert shared.indices != shared_retain_set(pairs, n_retain=20, seed=4).indices
    assert len(shared_retain_set(pairs)) == 50  # default: min(RETAIN_PAIRS, all pairs)

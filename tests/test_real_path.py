"""The real-model path end to end on tiny randomly initialised open_clip and Hugging Face CLIP models:
user data from a folder, all three stages, the report, and a patch round trip (plumbing, not quality)."""
import json

import numpy as np
import pytest
import torch

from slugkit.adapters.hf_clip import HFCLIPAdapter
from slugkit.adapters.openclip import OpenCLIPAdapter
from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf
from slugkit.models.loading import load_clip
from slugkit.patch import Patch, PatchMismatchError
from slugkit.step_size_search import Target
from slugkit.slug import unlearn

from fakes import FACE_NAMES as NAMES, make_faces_folder, tiny_hf, tiny_openclip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_faces_folder(tmp_path_factory.mktemp("faces"))


def adapters(tmp_path):
    oc = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip")
    save_hf(tiny_hf(), clip_tokenizer_from_openclip(16), tmp_path / "tiny-hf")
    hf = load_clip(f"hf:{tmp_path / 'tiny-hf'}")
    return [oc, hf]


@pytest.mark.filterwarnings("ignore:the unedited model already has")  # random weights may name nobody
@pytest.mark.parametrize("which", [0, 1], ids=["open_clip", "hf-clip"])
def test_unlearn_runs_end_to_end_on_a_real_class(which, folder, tmp_path):
    adapter = adapters(tmp_path)[which]
    expected_kinds = {"attn_qkv"} if isinstance(adapter, OpenCLIPAdapter) else {"attn_q", "attn_k", "attn_v"}
    result = unlearn(adapter, "Captain Zorp", data=folder, classes=NAMES[1:], max_evals=3,
                     target=Target("forget_top1"), progress=False)  # 3 names: top-5 is always 1

    table = result.table
    assert list(table["name"]) == [i.name for i in adapter.candidate_layers()]
    assert expected_kinds <= set(table["kind"]) and set(table["tower"]) == {"vision", "text"}
    assert table["pareto"].any() and np.isfinite(table[["importance", "alignment"]].to_numpy()).all()
    assert {s.layer for s in result.searches} == set(table.loc[table["pareto"], "name"])
    assert all(1 <= len(s.trace) <= 3 for s in result.searches)
    assert result.status in ("ok", "target-not-reached")

    out = result.save(tmp_path / "run")
    report = json.loads((out / "report.json").read_text())
    assert report["concept"] == "Captain Zorp" and report["model"] == adapter.name
    assert (out / "patch.safetensors").exists() == (result.patch is not None)

    # a patch of the first searched layer: save, load, apply, revert bit-exactly, refuse another model
    layer = result.searches[0].layer
    from slugkit.fingerprint import model_fingerprint

    patch = Patch.from_step(adapter.name, "Captain Zorp", layer, result.searches[0].lambda0,
                            result.gradients.forget[layer], model_fingerprint(adapter.model))
    loaded = Patch.load(patch.save(tmp_path / "p.safetensors"))
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    loaded.apply(adapter.model)
    assert not torch.equal(adapter.parameter(layer).detach(), before[layer])
    loaded.revert(adapter.model)
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())
    other = tiny_openclip(seed=1) if which == 0 else tiny_hf(seed=1)
    with pytest.raises(PatchMismatchError):
        loaded.apply(other)


def test_top5_rule_needs_more_than_five_names(folder):
    adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip")
    with pytest.raises(ValueError, match="forget_top5 <= 0 needs at least 6 names.*has 3.*--target top1"):
        unlearn(adapter, "Captain Zorp", data=folder, classes=NAMES[1:], progress=False)


def test_real_data_needs_classes_and_a_mention(folder, tmp_path):
    adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip")
    with pytest.raises(ValueError, match="classes"):
        unlearn(adapter, "Captain Zorp", data=folder, progress=False)
    with pytest.raises(ValueError, match="forget set is empty: no caption in .* mentions 'Glimmer Queen'"):
        unlearn(adapter, "Glimmer Queen", data=folder, classes=NAMES, progress=False)
    with pytest.raises(ValueError, match="not a toy model"):
        unlearn(adapter, "Captain Zorp", progress=False)

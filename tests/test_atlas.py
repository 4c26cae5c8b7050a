"""`slugkit layers` (stages 1-2 alone) on a tiny random Hugging Face CLIP with an image folder, and the
toy world's atlas."""
import json

import numpy as np
import pandas as pd
import pytest

from slugkit.atlas import identify_layers
from slugkit.cli import main
from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn
from slugkit.step_size_search import Target

from fakes import FACE_NAMES as NAMES, make_faces_folder, tiny_hf


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_faces_folder(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-hf"
    save_hf(tiny_hf(), clip_tokenizer_from_openclip(16), path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.filterwarnings("ignore:the unedited model already has")
def test_layers_cli_on_a_tiny_hf_clip_matches_unlearns_table(capsys, folder, hf_dir, tmp_path):
    out = tmp_path / "layers"
    code, stdout, err = run_cli(capsys, "layers", "--model", f"hf:{hf_dir}", "--forget", "Captain Zorp",
                                "--data", folder, "--classes", *NAMES[1:], "--out", out, "--json", "--no-cache")
    assert code == 0, err
    report = json.loads(stdout)
    assert report == json.loads((out / "layers.json").read_text())
    for name in ("layers.csv", "heatmap.png", "pareto.png"):
        assert (out / name).stat().st_size > 0
    csv = pd.read_csv(out / "layers.csv")
    assert {"name", "tower", "block", "kind", "importance", "alignment", "pareto"} <= set(csv.columns)
    assert set(csv["tower"]) == {"vision", "text"} and {"attn_q", "attn_k", "attn_v"} <= set(csv["kind"])
    assert report["pareto"] == list(csv.loc[csv["pareto"], "name"]) and report["pareto"]

    # exactly the table unlearn computes (stage 3 changes nothing upstream)
    run = unlearn(load_clip(f"hf:{hf_dir}"), "Captain Zorp", data=str(folder), classes=NAMES[1:], max_evals=1,
                  target=Target("forget_top1"), progress=False)
    assert list(csv["name"]) == list(run.table["name"])
    np.testing.assert_allclose(csv["importance"], run.table["importance"], rtol=1e-6)
    np.testing.assert_allclose(csv["alignment"], run.table["alignment"], rtol=1e-6, atol=1e-9)

    # the run-folder rules of unlearn: refuse a used folder, replace it with --overwrite
    code, _, err = run_cli(capsys, "layers", "--model", f"hf:{hf_dir}", "--forget", "Captain Zorp",
                           "--data", folder, "--classes", *NAMES[1:], "--out", out, "--no-cache")
    assert code == 2 and "already holds files" in err and "--overwrite" in err
    code, _, err = run_cli(capsys, "layers", "--model", f"hf:{hf_dir}", "--forget", "Captain Zorp", "--tower", "text",
                           "--data", folder, "--classes", *NAMES[1:], "--out", out, "--no-cache", "--overwrite")
    assert code == 0, err
    assert set(pd.read_csv(out / "layers.csv")["tower"]) == {"text"}


def test_layers_errors_match_unlearns(capsys, folder, hf_dir, tmp_path):
    code, _, err = run_cli(capsys, "layers", "--model", "toy-clip", "--forget", "Iron Man", "--out", tmp_path / "a")
    assert code == 2 and "unknown concept 'Iron Man'" in err
    code, _, err = run_cli(capsys, "layers", "--model", "toy-clip", "--forget", "Captain Zorp", "--classes", "x",
                           "--out", tmp_path / "b")
    assert code == 2 and "--classes only applies with --data" in err
    code, _, err = run_cli(capsys, "layers", "--model", f"hf:{hf_dir}", "--forget", "Glimmer Queen", "--data", folder,
                           "--classes", *NAMES, "--out", tmp_path / "c")
    assert code == 2 and "forget set is empty: no caption in" in err and "'Glimmer Queen'" in err
    code, _, err = run_cli(capsys, "layers", "--model", f"hf:{hf_dir}", "--forget", "Captain Zorp", "--out",
                           tmp_path / "d")
    assert code == 2 and "not a toy model" in err
    assert not any(tmp_path.iterdir())  # no half-written folder anywhere


# ---------------------------------------------------------------------------------------------------------
# The atlas of the toy world (a few concepts, small retain set: the same code path as all 38)
# ---------------------------------------------------------------------------------------------------------
FEW = ["Captain Zorp", "Mira Quell", "star", "Stripes"]


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy-clip")


@pytest.fixture(scope="module")
def atlas(toy):
    from slugkit.atlas import build_atlas

    return build_atlas(toy, FEW, max_forget=16, n_retain=128, progress=False)


def test_atlas_rows_are_the_layer_tables_of_each_concept(atlas, toy):
    from slugkit.gradients import Gradients
    from slugkit.layer_identification import layer_table

    assert list(atlas.importance.index) == FEW and atlas.importance.shape == (4, len(toy.candidate_layers()))
    for c in ("Mira Quell", "Stripes"):
        expected = layer_table(toy, Gradients(atlas.forget[c], atlas.retain))
        got = atlas.table(c)
        assert list(got["name"]) == list(expected["name"])
        np.testing.assert_allclose(got["importance"], expected["importance"], rtol=1e-9)
        np.testing.assert_allclose(got["alignment"], expected["alignment"], rtol=1e-9, atol=1e-12)
        assert list(got["pareto"]) == list(expected["pareto"])
        assert atlas.pareto_layers(c) == list(expected.loc[expected["pareto"], "name"])


def test_atlas_similarity_is_the_cosine_of_forget_gradients(atlas):
    layer = atlas.layers["name"].iloc[7]
    sim = atlas.similarity(layer)
    a, b = atlas.forget["Captain Zorp"][layer].flatten().double(), atlas.forget["star"][layer].flatten().double()
    assert sim.loc["Captain Zorp", "star"] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-9)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-9)
    np.testing.assert_allclose(sim.to_numpy(), sim.to_numpy().T, atol=1e-12)
    shared = atlas.shared_pareto(["Captain Zorp", "Mira Quell"])
    assert set(shared.index) == set(atlas.pareto_layers("Captain Zorp")) | set(atlas.pareto_layers("Mira Quell"))
    assert list(shared.sum(axis=1)) == sorted(shared.sum(axis=1), reverse=True)  # collisions first


def test_atlas_saves_matrices_figures_and_a_static_explorer(atlas, tmp_path):
    from slugkit.viz.widgets import AtlasExplorer

    out = atlas.save(tmp_path / "atlas")
    for name in ("importance.csv", "alignment.csv", "pareto.csv", "cosine.npz", "atlas.json", "clustermap.png",
                 "where.png", "similarity.png"):
        assert (out / name).stat().st_size > 0, name
    back = pd.read_csv(out / "importance.csv", index_col=0)
    np.testing.assert_allclose(back.to_numpy(), atlas.importance.to_numpy(), rtol=1e-12)
    saved = json.loads((out / "atlas.json").read_text())
    assert saved["pareto"]["star"] == atlas.pareto_layers("star")

    explorer = AtlasExplorer(atlas, concept="Stripes")
    assert "Stripes" in explorer.text() and str(len(atlas.pareto_layers("Stripes"))) in explorer.text()
    explorer.mode.value = "layer"
    explorer.layer.value = atlas.layers["name"].iloc[3]
    top = atlas.importance[atlas.layers["name"].iloc[3]].idxmax()
    assert top in explorer.text()
    bundle = explorer._repr_mimebundle_()
    assert bundle["image/png"] and "application/vnd.jupyter.widget-view+json" in bundle


def test_similarity_vs_damage_pairs_each_edit_with_every_other_concept(atlas, toy):
    from slugkit.atlas import similarity_vs_damage

    test = similarity_vs_damage(toy, atlas, ["Captain Zorp"], n_test=600, progress=False)
    edit = test.edits.iloc[0]
    assert edit["layer"] in atlas.pareto_layers("Captain Zorp")
    assert len(test.pairs) == len(FEW) - 1 and set(test.pairs["measured"]) == set(FEW) - {"Captain Zorp"}
    sim = atlas.similarity(edit["layer"])["Captain Zorp"]
    assert list(test.pairs["cosine"]) == [sim[b] for b in test.pairs["measured"]]
    assert -1 <= test.rho <= 1 and list(test.pairs["same_attribute"]) == [True, False, False]

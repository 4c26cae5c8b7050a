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

"""The command-line contracts of design.md."""
import json
import subprocess
import sys

import pytest

from slugkit.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_concepts_json(capsys):
    code, out, _ = run_cli(capsys, "concepts", "--model", "toy-clip", "--json")
    items = json.loads(out)
    assert code == 0
    assert {"name", "kind"} <= set(items[0])
    assert {i["kind"] for i in items} == {"character", "object", "style", "colour"}
    assert "Captain Zorp" in {i["name"] for i in items}


def test_eval_json_contract(capsys):
    code, out, _ = run_cli(capsys, "eval", "--model", "toy-clip", "--json", "--n-test", "300")
    report = json.loads(out)
    assert code == 0 and report["model"] == "toy-clip" and report["patch"] is None
    assert set(report["metrics"]) == {"identity", "object", "style", "colour"}
    for m in report["metrics"].values():
        assert 0 <= m["top1"] <= m["top5"] <= 1
        assert all(0 <= v <= 1 for v in m["per_concept"].values())


def test_unknown_model_and_concept_give_one_line_errors(capsys):
    code, _, err = run_cli(capsys, "eval", "--model", "no-such-model")
    assert code == 2 and "no-such-model" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Iron Man", "--out", "unused")
    assert code == 2 and "unknown concept 'Iron Man'" in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--out", "unused",
                           "--forget-text", "name")
    assert code == 2 and "--forget-text name needs a host model" in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--out", "unused",
                           "--preset", "clip-side")
    assert code == 2 and "--preset clip-side is a recipe of the LLaVA hosts" in err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "slugkit", "concepts", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) >= 10 + 8 + 6 + 6

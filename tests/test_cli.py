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
                           "--search", "refine")
    assert code == 2 and "--search refine needs a host model" in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--out", "unused",
                           "--preset", "clip-side")
    assert code == 2 and "--preset clip-side is a recipe of the LLaVA hosts" in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--out", "unused",
                           "--preset", "orthogonal")
    assert code == 2 and "--preset orthogonal is a recipe of the LLaVA hosts" in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--out", "unused",
                           "--no-repair")
    assert code == 2 and "--no-repair applies to several --forget concepts" in err
    with pytest.raises(SystemExit) as stop:  # argparse's own check
        main(["unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--out", "unused", "--search-batch", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --search-batch: expected an integer in 1..100, got 0" in err
    code, _, err = run_cli(capsys, "unlearn", "--model", "toy-clip", "--forget", "Captain Zorp", "--forget",
                           "Mira Quell", "--out", "unused", "--search-batch", "4")
    assert code == 2 and "--search-batch applies to one --forget concept at a time" in err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "slugkit", "concepts", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) >= 10 + 8 + 6 + 6


@pytest.mark.parametrize("argv", [["--help"], ["unlearn", "--help"], ["bench", "--help"],
                                  ["unlearn", "--forget", "Captain Zorp"],  # --out missing
                                  ["unlearn", "--forget", "x", "--out", "o", "--seed", "-1"], ["no-such-command"],
                                  # after parsing: names and files checked before torch is imported
                                  ["unlearn", "--forget", "Nobody", "--out", "o"],
                                  ["unlearn", "--model", "clip-vit", "--forget", "x", "--out", "o"],
                                  ["unlearn", "--model", "toy-clip-without:Nobody", "--forget", "x", "--out", "o"],
                                  ["eval", "--patch", "no/such/patch.safetensors"],
                                  ["eval", "--model", "hf:openai/clip-vit-base-patch32"],
                                  ["layers", "--forget", "Nobody", "--out", "o"],
                                  ["bench", "--concepts", "Nobody"],
                                  ["toy", "build", "clip", "--without", "Nobody"]],
                         ids=["help", "unlearn-help", "bench-help", "missing-out", "bad-seed", "bad-command",
                              "unknown-concept", "bad-model-name", "unknown-reference", "missing-patch",
                              "eval-real-model", "layers-unknown-concept", "bench-unknown-concept",
                              "toy-without-unknown"])
def test_help_and_argument_errors_do_not_import_torch(argv, tmp_path):
    """`slugkit --help`, argparse's errors and the checks of names and files made right after parsing answer
    without torch (which takes seconds to import)."""
    probe = ("import sys, runpy\n"
             f"sys.argv = ['slugkit'] + {argv!r}\n"
             "try:\n    runpy.run_module('slugkit', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    verdict, code = done.stderr.strip().splitlines()[-1].split()
    assert verdict == "NO-TORCH", done.stderr
    assert code == ("0" if "--help" in argv else "2")
    assert ("usage: slugkit" in done.stdout) if "--help" in argv else ("error:" in done.stderr)


def test_unlearn_profile_block(tmp_path, capsys):
    """`--profile`: report.json gains seconds and peak memory per stage, summing to about the total."""
    out = tmp_path / "run"
    code, printed, _ = run_cli(capsys, "unlearn", "--forget", "Stripes", "--out", str(out), "--tower", "vision",
                               "--include", "mlp_fc", "--max-evals", "2", "--no-cache", "--profile")
    assert code in (0, 3)
    profile = json.loads((out / "report.json").read_text())["profile"]
    stages = profile["stages"]
    expected = {"startup", "imports", "load", "data", "forget_gradient", "retain_gradient", "layer_table",
                "search_cache", "report"}
    assert expected <= set(stages)
    searched = [k for k in stages if k.startswith("search/")]
    assert searched and all(k.removeprefix("search/").startswith("visual.") for k in searched)
    assert ("patch" in stages) == (code == 0)
    assert all(v["seconds"] >= 0 and v["peak_rss_mb"] > 0 for v in stages.values())
    total = sum(v["seconds"] for v in stages.values())
    assert total == pytest.approx(profile["total_seconds"], rel=0.05, abs=0.5)
    assert profile["peak_rss_mb"] >= max(v["peak_rss_mb"] for v in stages.values())
    assert "profile (" in printed and "retain_gradient" in printed


def test_a_command_line_run_freezes_its_objects_before_the_exit_and_an_in_process_call_does_not(monkeypatch, capsys):
    """A command-line run ends with gc.freeze(), so the interpreter's exit does not walk every object torch made
    (docs/measurements.md); a caller that runs ``main(argv)`` in its own process keeps its collector as it was."""
    import gc

    import slugkit.cli as cli

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    assert cli.main(["concepts"]) == 0 and frozen == []
    monkeypatch.setattr(sys, "argv", ["slugkit", "concepts"])
    assert cli.main() == 0 and frozen == [True]
    assert "Captain Zorp" in capsys.readouterr().out

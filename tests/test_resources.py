"""Shipped files are found in a checkout, `slugkit notebooks` copies the series, `slugkit lab` starts JupyterLab."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slugkit import resources
from slugkit.cli import lab_command, main

ROOT = Path(__file__).resolve().parents[1]
SERIES = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_checkout_reads_the_top_level_folders(monkeypatch):
    monkeypatch.delenv("SLUGKIT_DATA", raising=False)
    assert resources.data_dir() == ROOT / "data" and (resources.data_dir() / "toy-clip.safetensors").is_file()
    assert resources.notebooks_dir() == ROOT / "notebooks"
    assert [p.name for p in resources.notebooks()] == SERIES
    monkeypatch.setenv("SLUGKIT_DATA", "/somewhere/else")
    assert resources.data_dir() == Path("/somewhere/else")


def test_copy_keeps_the_learners_notebooks_unless_overwrite(tmp_path):
    written, kept = resources.copy_notebooks(tmp_path / "course")
    assert [p.name for p in written] == SERIES and kept == []
    mine = tmp_path / "course" / SERIES[0]
    mine.write_text("my work")
    written, kept = resources.copy_notebooks(tmp_path / "course")
    assert written == [] and len(kept) == len(SERIES) and mine.read_text() == "my work"
    resources.copy_notebooks(tmp_path / "course", overwrite=True)
    assert mine.read_bytes() == (ROOT / "notebooks" / SERIES[0]).read_bytes()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        resources.copy_notebooks(tmp_path / "a-file")


def _cell(kind, source, tags=()):
    return {"cell_type": kind, "metadata": {"tags": list(tags)} if tags else {}, "source": source,
            **({"outputs": [], "execution_count": None} if kind == "code" else {})}


def test_student_copy_drops_solutions_and_the_switch():
    nb = {"cells": [_cell("markdown", "# title"),
                    _cell("code", 'MODEL = "toy-clip"\nREFERENCE = True   # use the reference\nSEED = 0', ["parameters"]),
                    _cell("code", "def f(x):\n    ...  # your code"),
                    _cell("code", ["if REFERENCE:\n", "    from slugkit.exercises.solutions import f\n"], ["solution"]),
                    _cell("code", "check(f)")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = resources.student_copy(nb)
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in out["cells"]]
    assert sources == ["# title", 'MODEL = "toy-clip"\nSEED = 0', "def f(x):\n    ...  # your code", "check(f)"]
    assert len(nb["cells"]) == 5 and "REFERENCE" in nb["cells"][1]["source"]  # the original is untouched


def test_cli_notebooks_and_student_copies(tmp_path, capsys):
    assert main(["notebooks", str(tmp_path / "full")]) == 0
    assert f"wrote {len(SERIES)} notebook(s)" in capsys.readouterr().out
    assert main(["notebooks", str(tmp_path / "full")]) == 0
    assert f"kept {len(SERIES)} already there" in capsys.readouterr().out
    assert main(["notebooks", "--student", str(tmp_path / "student")]) == 0
    for name in SERIES:
        full = json.loads((tmp_path / "full" / name).read_text())
        student = json.loads((tmp_path / "student" / name).read_text())
        solutions = [c for c in full["cells"] if resources.SOLUTION_TAG in c["metadata"].get("tags", [])]
        assert len(student["cells"]) == len(full["cells"]) - len(solutions)


def test_cli_lab_copies_then_starts_jupyterlab(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["lab", str(tmp_path / "nb"), "--no-browser"]) == 0
    assert calls == [lab_command(tmp_path / "nb", no_browser=True)]
    assert calls[0][:3] == [sys.executable, "-m", "jupyterlab"] and calls[0][-1] == "--no-browser"
    assert sorted(p.name for p in (tmp_path / "nb").glob("*.ipynb")) == SERIES
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jupyterlab"
                        else real_find_spec(name, *a))
    assert main(["lab", str(tmp_path / "other")]) == 2
    assert "pip install 'slugkit[notebooks]'" in capsys.readouterr().err and not (tmp_path / "other").exists()

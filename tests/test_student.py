"""Coursework: every stage notebook has a checked exercise; student copies hold no answer and run to the exercise.

`make student` (``slugkit notebooks DIR --student``) drops the cells tagged ``solution``. The last test executes
each stage's student copy up to its checker cell and asserts the checker ran on the learner's (unfinished) stub:
it must say "not yet", never "correct".
"""
import inspect
import json
import re
from pathlib import Path

import nbformat
import pytest

from slugkit import resources
from slugkit.exercises import solutions

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["02_gradients", "03_layer_identification", "04_step_size", "05_evaluation", "06_attribution"]


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _checker_index(nb) -> int:
    """Index of the last cell that runs a checker of slugkit.exercises."""
    return max(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "from slugkit.exercises import check_" in c.source)


def _solution_lines() -> set[str]:
    """Distinctive code lines of every reference answer: not docstrings, not short, not in the exercise stubs."""
    lines = set()
    for _, fn in inspect.getmembers(solutions, inspect.isfunction):
        body = inspect.getsource(fn).split('"""')[-1]
        lines |= {line.strip() for line in body.splitlines() if len(line.strip()) > 25}
    stubs = set()
    for name in STAGES:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        stubs |= {line.strip() for c in _code(nb) if resources.SOLUTION_TAG not in c.metadata.get("tags", [])
                  for line in c.source.splitlines()}
    return lines - stubs


@pytest.mark.parametrize("name", STAGES)
def test_stage_notebook_has_an_exercise_with_a_checker_and_a_tagged_solution(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    solution_cells = [c for c in _code(nb) if resources.SOLUTION_TAG in c.metadata.get("tags", [])]
    assert solution_cells, f"{name}: no cell tagged '{resources.SOLUTION_TAG}'"
    for c in solution_cells:  # the answer is imported, not written out in the notebook
        assert "from slugkit.exercises.solutions import" in c.source and "def " not in c.source
    untagged = [c for c in _code(nb) if c not in solution_cells]
    assert not any("slugkit.exercises.solutions" in c.source for c in untagged)
    assert _checker_index(nb) > nb.cells.index(solution_cells[-1]), f"{name}: the checker must come after the answer"


def test_student_copies_hold_no_solution_code(tmp_path):
    written, _ = resources.copy_notebooks(tmp_path, student=True)
    answer_lines = _solution_lines()
    assert len(answer_lines) > 20  # the probe itself works
    for path in written:
        nb = json.loads(path.read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        # the reference-answer flag (a whole word: REFERENCE_PREFIX, a model-name prefix, is not it)
        assert "slugkit.exercises.solutions" not in code and not re.search(r"\bREFERENCE\b", code), path.name
        assert not any(resources.SOLUTION_TAG in c["metadata"].get("tags", []) for c in nb["cells"]), path.name
        leaked = [line for line in answer_lines if line in code]
        assert not leaked, f"{path.name} shows reference code: {leaked[:2]}"
    full = nbformat.read(ROOT / "notebooks" / "03_layer_identification.ipynb", as_version=4)
    full_code = "\n".join(c.source for c in _code(full))
    assert "slugkit.exercises.solutions" in full_code  # the probe would see an answer in the full notebook


@pytest.mark.parametrize("name", STAGES)
def test_student_copy_runs_to_its_exercise(name, tmp_path):
    from nbclient import NotebookClient

    path = resources.write_student_copy(ROOT / "notebooks" / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
    nb = nbformat.read(path, as_version=4)
    stop = _checker_index(nb)
    nb.cells = nb.cells[:stop + 1]
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for c in _code(nb):
        errors = [o for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: a cell failed before the exercise: {errors[0].ename}: {errors[0].evalue}"
    verdict = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in nb.cells[stop].outputs)
    assert "not yet" in verdict and "correct" not in verdict.splitlines()[0], verdict

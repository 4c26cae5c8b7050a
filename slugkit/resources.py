"""Where slugkit's shipped files live: the toy checkpoints, the bench outputs and the notebooks.

An installed wheel carries them as package data (``slugkit/_data``, ``slugkit/_notebooks``, read with
:mod:`importlib.resources`); an editable install or a plain checkout reads the repository's top-level
``data/`` and ``notebooks/``. ``$SLUGKIT_DATA`` overrides the checkpoint folder in both cases.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

#: package-data folder inside the wheel -> the repository folder it is built from (see setup.py)
SHIPPED = {"_data": "data", "_notebooks": "notebooks"}


def _shipped(packaged: str) -> Path:
    """The wheel's ``slugkit/<packaged>`` if this is an installed wheel, else the checkout's folder."""
    inside = resources.files("slugkit") / packaged
    if isinstance(inside, Path) and inside.is_dir():
        return inside
    return Path(__file__).resolve().parents[1] / SHIPPED[packaged]


def data_dir() -> Path:
    """The folder of the shipped checkpoints and ``bench/``: ``$SLUGKIT_DATA``, the wheel's, or the checkout's ``data/``."""
    env = os.environ.get("SLUGKIT_DATA")
    return Path(env) if env else _shipped("_data")


def cache_dir() -> Path:
    """slugkit's cache of things it computes once (gradients, drawn pictures, judged generations, build work):
    ``$SLUGKIT_CACHE``, default ``~/.cache/slugkit``."""
    return Path(os.environ.get("SLUGKIT_CACHE", Path.home() / ".cache" / "slugkit"))


def notebooks_dir() -> Path:
    """The folder of the notebook series: the wheel's copy, or the checkout's ``notebooks/``."""
    return _shipped("_notebooks")


def notebooks() -> list[Path]:
    """The series, in order (``00_toy_world.ipynb``, ...); a clear error when none is found."""
    found = sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks found in {notebooks_dir()}: this slugkit install carries none "
                                "(reinstall from a wheel built by `pip wheel .` in the repository)")
    return found


def copy_notebooks(dest: str | Path, student: bool = False, overwrite: bool = False) -> tuple[list[Path], list[Path]]:
    """Copy the series into ``dest`` (created if needed); returns ``(written, kept)``.

    A notebook already in ``dest`` is kept (it may hold the learner's work) unless ``overwrite``.
    ``student=True`` writes coursework copies without the reference answers (:func:`student_copy`).
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} is a file: expected a folder to copy the notebooks into")
    sources = notebooks()
    dest.mkdir(parents=True, exist_ok=True)
    written, kept = [], []
    for src in sources:
        target = dest / src.name
        if target.exists() and not overwrite:
            kept.append(target)
            continue
        if student:
            write_student_copy(src, target)
        else:
            shutil.copyfile(src, target)
        written.append(target)
    return written, kept


# ------------------------------------------------------------------------------------------------
# Student copies: the series without the reference answers
# ------------------------------------------------------------------------------------------------
#: the cell tag of a reference answer (a cell that imports it from slugkit.exercises.solutions)
SOLUTION_TAG = "solution"
_SWITCH = re.compile(r"^REFERENCE\s*=.*$\n?", re.MULTILINE)


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def student_copy(nb: dict) -> dict:
    """Notebook JSON ``nb`` without its cells tagged ``solution`` and without the ``REFERENCE = ...`` switch.

    In the full notebook the switch makes the exercise run slugkit's reference answer; in the student copy
    the checker sees the learner's own function.
    """
    out = copy.deepcopy(nb)
    out["cells"] = [c for c in out["cells"] if SOLUTION_TAG not in _tags(c)]
    for cell in out["cells"]:
        if cell["cell_type"] == "code" and "parameters" in _tags(cell):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = _SWITCH.sub("", source).rstrip("\n")
    return out


def write_student_copy(src: str | Path, dest: str | Path) -> Path:
    """Write the student copy of the notebook file ``src`` to the file ``dest``; returns ``dest``."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    dest = Path(dest)
    dest.write_text(json.dumps(student_copy(nb), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return dest

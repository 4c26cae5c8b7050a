"""scripts/build_book.py refuses to render notebooks that were not executed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_build_book_refuses_missing_or_unexecuted_notebooks(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "build_book.py"), "--out", str(tmp_path / "book")]
    empty = tmp_path / "none"
    empty.mkdir()
    done = subprocess.run(script + ["--notebooks", str(empty)], capture_output=True, text=True)
    assert done.returncode != 0 and "run `make notebooks` first" in done.stderr and "lacks" in done.stderr
    bare = tmp_path / "bare"
    shutil.copytree(ROOT / "notebooks", bare)  # stored notebooks carry no outputs
    done = subprocess.run(script + ["--notebooks", str(bare)], capture_output=True, text=True)
    assert done.returncode != 0 and "have no outputs" in done.stderr
    assert not (tmp_path / "book").exists()
    first = json.loads((bare / "00_toy_world.ipynb").read_text())
    assert not any(c.get("outputs") for c in first["cells"] if c["cell_type"] == "code")

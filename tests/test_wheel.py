"""The wheel alone: built from the repository, installed outside it, it runs the demo and a notebook.

The build copies only what a source distribution holds (pyproject.toml, setup.py, MANIFEST.in, README.md,
slugkit/, data/, notebooks/) to a temporary folder, so nothing is written into the checkout, and installs the
wheel with ``pip install --no-deps --target`` (the dependencies come from this Python). Every run below happens in
another temporary folder with ``PYTHONPATH`` pointing at the install only, and checks that the installed copy
(not the checkout) was the one imported.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "slugkit", "data", "notebooks")
CHEAP_NOTEBOOK = "00_toy_world.ipynb"


def _run(cmd, cwd, env, timeout=600):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """``(wheel path, install folder, a working folder outside the checkout, env)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLUGKIT_DATA")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--disable-pip-version-check",
          "-q", "-w", tmp / "dist", src], cwd=tmp, env=env)
    wheel, = (tmp / "dist").glob("slugkit-*.whl")
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", "--target", site,
          wheel], cwd=tmp, env=env)
    work = tmp / "elsewhere"
    work.mkdir()
    env.update(PYTHONPATH=str(site), SLUGKIT_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    return wheel, site, work, env


def test_wheel_carries_checkpoints_bench_and_notebooks(wheel_install):
    wheel = wheel_install[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in [*(ROOT / "data").glob("*.safetensors"), *(p for p in (ROOT / "data" / "bench").rglob("*") if p.is_file())]:
        assert f"slugkit/_data/{f.relative_to(ROOT / 'data').as_posix()}" in names, f"{f.name} is not in the wheel"
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert f"slugkit/_notebooks/{nb.name}" in names, f"{nb.name} is not in the wheel"


def test_installed_wheel_finds_its_own_data(wheel_install):
    _, site, work, env = wheel_install
    out = _run([sys.executable, "-c", "import slugkit.resources as r; print(r.__file__); print(r.data_dir()); "
                "print((r.data_dir() / 'bench' / 'bench.json').is_file())"], cwd=work, env=env)
    module, data, bench_found = out.split()
    assert Path(module).is_relative_to(site) and Path(data) == site / "slugkit" / "_data" and bench_found == "True"
    # SLUGKIT_DATA still overrides the packaged folder
    out = _run([sys.executable, "-c", "import slugkit.resources as r; print(r.data_dir())"], cwd=work,
               env=dict(env, SLUGKIT_DATA=str(work / "mine")))
    assert Path(out.strip()) == work / "mine"


def test_installed_wheel_runs_the_demo_from_another_folder(wheel_install):
    _, site, work, env = wheel_install
    out = _run([site / "bin" / "slugkit", "demo", "--quick", "--out", "demo"], cwd=work, env=env)
    report = json.loads((work / "demo" / "unlearn" / "report.json").read_text())
    assert report["status"] == "ok" and report["forget_acc_after"] == 0 and report["forget_acc_before"] > 0.9
    assert (work / "demo" / "sample_sheet.png").stat().st_size > 10_000
    assert "forget 'Captain Zorp' -> ok" in out


def test_installed_wheel_copies_and_runs_a_notebook(wheel_install):
    _, site, work, env = wheel_install
    _run([site / "bin" / "slugkit", "notebooks", "course"], cwd=work, env=env)
    shipped = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.name for p in (work / "course").glob("*.ipynb")) == shipped
    # run the cheapest notebook in a kernel that sees only the install, plus a cell that says where slugkit came from
    # (the client waits for the kernel in slices: tests/kernel_poll.py)
    script = (
        "import sys, nbformat, nbclient\n"
        "sys.path.insert(0, sys.argv[2]); import kernel_poll; kernel_poll.install()\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nb.cells.append(nbformat.v4.new_code_cell('import slugkit.resources as r; print(r.__file__, r.data_dir())'))\n"
        "nbclient.NotebookClient(nb, timeout=300, kernel_name='python3').execute()\n"
        "print(nb.cells[-1].outputs[0]['text'])\n")
    out = _run([sys.executable, "-c", script, work / "course" / CHEAP_NOTEBOOK, ROOT / "tests"], cwd=work / "course",
               env=env)
    module, data = out.split()
    assert Path(module).is_relative_to(site) and Path(data).is_relative_to(site), out

"""Build hook: the wheel carries the repository's top-level ``data/`` and ``notebooks/`` as package data.

The repository keeps both folders at the top (the layout is part of the brief); a wheel has no repository around
it, so ``build_py`` copies them into ``slugkit/_data`` and ``slugkit/_notebooks`` of the build, where
``slugkit.resources`` finds them with importlib.resources. An editable install reads the checkout's folders
directly, so nothing is copied then. Everything else is configured in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# repository folder -> (package-data folder in the wheel, the files it ships)
SHIPPED = {"data": ("_data", ("*.safetensors", "bench/*", "bench/*/*")), "notebooks": ("_notebooks", ("*.ipynb",))}


class BuildPyWithShippedFiles(build_py):
    """``build_py`` plus the checkpoints, bench outputs and notebooks (skipped for editable installs)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, (packaged, patterns) in SHIPPED.items():
            target = Path(self.build_lib) / "slugkit" / packaged
            shutil.rmtree(target, ignore_errors=True)  # no stale file from an earlier build of build/
            files = [f for pattern in patterns for f in sorted((ROOT / folder).glob(pattern)) if f.is_file()]
            if not files:
                raise FileNotFoundError(f"nothing to ship from {ROOT / folder} (expected {', '.join(patterns)})")
            for f in files:
                dest = target / f.relative_to(ROOT / folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)


setup(cmdclass={"build_py": BuildPyWithShippedFiles})

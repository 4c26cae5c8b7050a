"""Build the slugkit book: every executed notebook plus the pages in ``docs/``, as an offline HTML site.

    python scripts/build_book.py [--notebooks runs/notebooks] [--out runs/book]

``--notebooks`` holds the notebooks *with outputs* (``make notebooks`` executes a copy of ``notebooks/`` there
with nbmake). The pages and notebooks are copied into ``<out>-src`` and rendered by Sphinx + MyST-NB with the
alabaster theme that ships with Sphinx, so the build reads nothing from the internet. Prints the page count and
the build time; exits non-zero when a notebook is missing, has no outputs, or Sphinx fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def executed_notebooks(folder: Path) -> list[Path]:
    """The notebooks of ``notebooks/``, taken from ``folder``; each must exist there and carry outputs."""
    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise SystemExit(f"build_book: {folder} lacks {', '.join(missing)}: run `make notebooks` first")
    bare = [n for n in names if not any(c.get("outputs") for c in json.loads((folder / n).read_text())["cells"]
                                        if c["cell_type"] == "code")]
    if bare:
        raise SystemExit(f"build_book: {', '.join(bare)} in {folder} have no outputs: run `make notebooks` first")
    return [folder / n for n in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebooks", type=Path, default=ROOT / "runs" / "notebooks")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "book")
    args = ap.parse_args(argv)
    start = time.monotonic()
    notebooks = executed_notebooks(args.notebooks)
    src = args.out.with_name(args.out.name + "-src")
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "docs", src)
    (src / "notebooks").mkdir()
    for nb in notebooks:
        shutil.copy(nb, src / "notebooks" / nb.name)
    shutil.rmtree(args.out, ignore_errors=True)
    from sphinx.cmd.build import build_main

    status = build_main(["-b", "html", "-q", "-j", "1", str(src), str(args.out)])
    if status:
        print(f"build_book: Sphinx failed (exit {status})", file=sys.stderr)
        return status
    pages = sorted(p.relative_to(args.out) for p in args.out.rglob("*.html")
                   if p.name not in ("genindex.html", "search.html"))
    print(f"book: {len(pages)} pages in {args.out} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Notebook 10 names every figure and table of the paper with a verdict; the README is a landing page into the book."""
import re
from pathlib import Path

import nbformat
import pytest

from slugkit.paper import PAPER_ITEMS, VERDICTS, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_verdict_words():
    assert verdict(True) == "holds" and verdict(True, partial=True) == "holds"
    assert verdict(False, partial=True) == "holds in part" and verdict(False) == "does not hold here"
    assert set(VERDICTS) == {"holds", "holds in part", "does not hold here"}


def test_notebook_10_has_a_section_and_a_verdict_for_every_paper_item():
    nb = nbformat.read(ROOT / "notebooks" / "10_paper.ipynb", as_version=4)
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    refs = [item.ref for item in PAPER_ITEMS]
    assert len(refs) == len(set(refs)) == 12
    for ref in refs:
        if ref != "Poster objectives":  # the last section gathers every verdict, the poster's included
            assert any(ref.split(":")[0].split(" ")[0] in h for h in headings), f"no section for {ref!r}"
        assert f'verdicts["{ref}"]' in code, f"no verdict computed for {ref!r}"
    assert "assert not missing" in code  # the final table fails the run if an item has no verdict


def test_readme_is_a_landing_page_whose_links_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert text.splitlines()[3:5] == ["make demo   # creates .venv, installs, unlearns one character from the toy CLIP "
                                      "(offline, CPU)",
                                      "make test   # creates/updates .venv; unit tests, every notebook (nbmake), the "
                                      "book, the browser tests"]
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links, "the README links into the book's pages"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    linked = {Path(link).stem for link in links if link.startswith("docs/") and link.endswith(".md")}
    assert pages <= linked, f"book pages the README does not link: {sorted(pages - linked)}"


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_book_page_has_one_title(page):
    lines, fenced, titles = page.read_text().splitlines(), False, []
    for line in lines:
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("# "):
            titles.append(line)
    assert lines[0].startswith("# ") and titles == [lines[0]]

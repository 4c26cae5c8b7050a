"""pytest set-up shared by the unit tests, the notebooks that ``make notebooks`` executes (nbmake, in runs/notebooks)
and the browser tests: kernel messages are awaited in slices (tests/kernel_poll.py says why)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))

import kernel_poll  # noqa: E402

kernel_poll.install()


# The notebooks that take longest start first, so that two workers (make notebooks, -n 2) finish close together
# (LPT order; times of `make notebooks`, 2026-12-07). The others keep their order.
LONGEST_NOTEBOOKS = ("07_stable_diffusion", "08_llava", "11_layer_atlas", "09_robustness", "10_paper", "05_evaluation")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        stem = item.path.stem
        return LONGEST_NOTEBOOKS.index(stem) if item.path.suffix == ".ipynb" and stem in LONGEST_NOTEBOOKS else len(
            LONGEST_NOTEBOOKS)

    items.sort(key=rank)  # stable: everything else keeps its collected order

"""pytest set-up shared by the unit tests, the notebooks that ``make notebooks`` executes (nbmake, in runs/notebooks)
and the browser tests: kernel messages are awaited in slices (tests/kernel_poll.py says why)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))

import kernel_poll  # noqa: E402

kernel_poll.install()


# The notebooks that take longest start first, so that the two workers of `make notebooks` finish close together
# (longest-first order, from the clean-clone CI of 2026-12-07 at one thread each: 11 218 s, 10 172, 07 133, 08 58,
# 09 50, 05 36; the rest 15-33 s).
LONGEST_NOTEBOOKS = ("11_layer_atlas", "10_paper", "07_stable_diffusion", "08_llava", "09_robustness", "05_evaluation")


def pytest_collection_modifyitems(config, items):
    last = len(LONGEST_NOTEBOOKS)
    items.sort(key=lambda item: LONGEST_NOTEBOOKS.index(item.path.stem)  # stable: the rest keep their order
               if item.path.suffix == ".ipynb" and item.path.stem in LONGEST_NOTEBOOKS else last)

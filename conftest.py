"""pytest set-up shared by the unit tests, the notebooks that ``make notebooks`` executes (nbmake, in runs/notebooks)
and the browser tests: kernel messages are awaited in slices (tests/kernel_poll.py says why)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))

import kernel_poll  # noqa: E402

kernel_poll.install()


# The notebooks that take longest start first, so that the two workers of `make notebooks` finish close together.
# pytest-xdist's default (load) scheduling hands each worker two consecutive items to begin with, so the longest and
# the third longest go to one worker, the second and fourth to the other. Times from the clean-clone CI of 2026-12-07
# at one thread each: 11 218-224 s, 10 172-179, 07 122-133, 08 55-58, 09 48-50, 05 36-39; the rest 14-33 s.
LONGEST_NOTEBOOKS = ("11_layer_atlas", "07_stable_diffusion", "10_paper", "08_llava", "09_robustness", "05_evaluation")


def pytest_collection_modifyitems(config, items):
    last = len(LONGEST_NOTEBOOKS)
    items.sort(key=lambda item: LONGEST_NOTEBOOKS.index(item.path.stem)  # stable: the rest keep their order
               if item.path.suffix == ".ipynb" and item.path.stem in LONGEST_NOTEBOOKS else last)

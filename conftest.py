"""pytest set-up shared by the unit tests, the notebooks that ``make notebooks`` executes (nbmake, in runs/notebooks)
and the browser tests: kernel messages are awaited in slices (tests/kernel_poll.py says why)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))

import kernel_poll  # noqa: E402

kernel_poll.install()

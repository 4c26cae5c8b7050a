"""heap_returned: blocks freed inside it go back to the operating system (glibc), instead of staying as heap holes."""
import gc
import sys

import pytest
import torch

from slugkit.profile import heap_returned


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc: Linux only")
def test_freed_blocks_leave_the_process():
    primer = torch.ones(4 << 20)  # 16 MB freed: glibc's adaptive threshold now keeps smaller blocks in the heap
    del primer
    with heap_returned() as ok:
        assert ok
        big, small = [], []
        for _ in range(64):  # 64 x 4 MB, with small long-lived tensors between them
            big.append(torch.ones(1 << 20))
            small.append(torch.ones(256))
        held = _rss_mb()
        del big
        gc.collect()
        freed = held - _rss_mb()
    assert freed > 200, f"only {freed:.0f} MB of 256 MB went back to the OS"

"""heap_returned: blocks freed inside it go back to the operating system (glibc), instead of staying as heap holes."""
import subprocess
import sys
import textwrap

import pytest

# in a fresh interpreter: glibc serves a request from the free heap blocks a process already has before it maps new
# memory, so the test's own process (after other tests) says nothing about blocks made inside heap_returned
CHURN = textwrap.dedent("""
    import gc, torch
    from slugkit.profile import heap_returned

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    primer = torch.ones(4 << 20)  # 16 MB freed: glibc's adaptive threshold now keeps smaller blocks in the heap
    del primer
    with {context} as ok:
        big, small = [], []
        for _ in range(64):  # 64 x 4 MB, with long-lived 0.5 MB tensors (in the heap either way) between them
            big.append(torch.ones(1 << 20))
            small.append(torch.ones(1 << 17))
        held = rss_mb()
        del big
        gc.collect()
        print(ok, held - rss_mb())
""")


def _freed_mb(context: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", CHURN.format(context=context)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc: Linux only")
def test_freed_blocks_leave_the_process():
    ok, freed = _freed_mb("heap_returned()")
    assert ok == "True" and freed > 200, f"only {freed:.0f} MB of 256 MB went back to the OS"
    _, kept = _freed_mb("__import__('contextlib').nullcontext(None)")  # without it the freed blocks stay
    assert kept < 100

"""How the test runs are set up (conftest.py): the notebook runs wait for kernel messages in slices
(tests/kernel_poll.py), so a missed socket wake-up costs at most a slice, not the cell's whole timeout; and the
longest notebooks start first."""
import asyncio
from pathlib import Path
from queue import Empty

import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

import kernel_poll


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class DeafSocket:
    """A socket whose poll never wakes early: it sleeps its whole timeout (on the fake clock), then reports the
    message if it arrived meanwhile, like pyzmq's last non-blocking check after a missed wake-up."""

    def __init__(self, clock, arrives_at):
        self.clock, self.arrives_at, self.waits = clock, arrives_at, []

    async def poll(self, timeout_ms):
        self.waits.append(timeout_ms)
        self.clock.now += timeout_ms / 1000
        return int(self.arrives_at is not None and self.clock.now >= self.arrives_at)


class Channel:
    get_msg = kernel_poll._sliced_get_msg

    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"msg_type": "execute_reply"}


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(kernel_poll.time, "monotonic", clock)
    return clock


def test_the_test_session_waits_in_slices():
    assert AsyncZMQSocketChannel.get_msg is kernel_poll._sliced_get_msg


@pytest.mark.parametrize("timeout", [None, 900.0])
def test_a_missed_wake_up_costs_one_slice(clock, timeout):
    socket = DeafSocket(clock, arrives_at=0.2)  # the reply is there after 0.2 s; the first poll does not notice
    assert asyncio.run(Channel(socket).get_msg(timeout)) == {"msg_type": "execute_reply"}
    assert socket.waits == [1000] and clock.now == kernel_poll.SLICE  # not 900 s


def test_without_a_message_the_timeout_still_ends_the_wait(clock):
    socket = DeafSocket(clock, arrives_at=None)
    with pytest.raises(Empty):
        asyncio.run(Channel(socket).get_msg(2.5))
    assert socket.waits == [1000, 1000, 500] and clock.now == pytest.approx(2.5)


def test_the_longest_first_notebooks_exist_and_start_first():
    import conftest

    shipped = {p.stem for p in (Path(__file__).parents[1] / "notebooks").glob("*.ipynb")}
    assert set(conftest.LONGEST_NOTEBOOKS) <= shipped

    class Item:
        def __init__(self, name):
            self.path = Path("runs/notebooks") / name

    items = [Item(f"{stem}.ipynb") for stem in sorted(shipped)] + [Item("test_cli.py")]
    conftest.pytest_collection_modifyitems(None, items)
    order = [i.path.stem for i in items]
    assert order[:len(conftest.LONGEST_NOTEBOOKS)] == list(conftest.LONGEST_NOTEBOOKS)
    rest = [s for s in sorted(shipped) if s not in conftest.LONGEST_NOTEBOOKS] + ["test_cli"]
    assert order[len(conftest.LONGEST_NOTEBOOKS):] == rest

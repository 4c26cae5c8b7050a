"""A bounded wait for Jupyter kernel messages in the test runs (nbmake, the student copies, the wheel's notebook).

jupyter_client waits for a kernel's message with one ``await socket.poll(timeout)`` on a ``zmq.asyncio`` socket,
woken through the socket's file descriptor, which ZeroMQ signals on edges only. We caught that wake-up being missed
(2026-12-07, notebook 06 under nbmake; earlier the student-copy tests took 917 s instead of 20): the kernel had
answered and idled, the reply sat on the client's shell socket (``ZMQ_EVENTS`` said ``POLLIN``), and the client slept
until the cell's whole timeout ran out; pyzmq's last non-blocking check then found the reply, so the run passed,
15-20 minutes late. Polling in slices of :data:`SLICE` seconds bounds such a stall to one slice, and a timeout still
ends the wait at the same deadline.
"""
import time
from queue import Empty

SLICE = 1.0  # seconds


async def _sliced_get_msg(self, timeout: float | None = None) -> dict:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = SLICE if deadline is None else min(SLICE, max(0.0, deadline - time.monotonic()))
        if await self.socket.poll(int(wait * 1000)):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


def install() -> None:
    """Make every asyncio kernel channel of this process (nbclient's) wait in slices; idempotent."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    AsyncZMQSocketChannel.get_msg = _sliced_get_msg

"""What every checker returns: :class:`Feedback`, and the message for a learner's function that raised."""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field


@dataclass
class Feedback:
    """Outcome of a checker: ``passed`` and one message per finding (the first failure explains most)."""

    exercise: str
    passed: bool
    messages: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{'✔' if self.passed else '✘'} {self.exercise}: {'correct' if self.passed else 'not yet'}"
        return "\n".join([head] + [f"  - {m}" for m in self.messages])

    def __repr__(self) -> str:
        return str(self)

    def __bool__(self) -> bool:
        return self.passed


def raised(err: BaseException, case: str = "") -> str:
    """One line for an exception raised by the learner's code: what it was and on which line."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" (line {tb[-1].lineno})" if tb else ""
    on = f"on the case '{case}' " if case else ""
    return f"{on}your function raised {type(err).__name__}: {err}{where}"

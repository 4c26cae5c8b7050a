"""Notebook 04's exercise: stage 3 by hand — the step-size binary search (the λ values it tries)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..step_size_search import Target, search_step_size
from .feedback import Feedback, raised


def _forget_curves() -> list[tuple[str, Callable[[float], float], float, int]]:
    """(description, forget accuracy as a function of λ, λ0, max_evals)."""
    return [
        ("target reached at λ >= 3.3", lambda lam: 0.0 if lam >= 3.3 else max(0.0, 1 - lam / 4), 1.0, 10),
        ("target already reached at λ0", lambda lam: 0.0 if lam >= 0.05 else 0.8, 0.2, 10),
        ("target reached only at λ >= 200 (many doublings)", lambda lam: 0.0 if lam >= 200 else 0.6, 0.5, 10),
        ("target never reached", lambda lam: 0.5, 1.0, 6),
        ("a non-monotone curve (0 at [2, 3], 0.1 in (3, 5), 0 from 5)",
         lambda lam: 0.0 if 2 <= lam <= 3 or lam >= 5 else 0.1, 1.3, 10),
    ]


def _slugkit_trace(forget: Callable[[float], float], lambda0: float, max_evals: int, rtol: float) -> list[float]:
    """The λ values slugkit's own search tries, driving it with a one-number 'layer' that holds λ."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    grad = torch.ones(1, dtype=torch.float64)
    tried: list[float] = []

    def evaluate():
        lam = float(param.detach()[0])
        if tried or lam != 0.0:
            tried.append(lam)
        return {"forget_top1": forget(lam) if lam else 1.0}

    search_step_size(param, grad, evaluate, Target("forget_top1", score_metrics=()), max_evals=max_evals, lambda0=lambda0,
                     rtol=rtol, progress=False)
    return tried


def check_binary_search(fn: Callable, rtol: float = 0.05) -> Feedback:
    """Check ``fn(forget_acc, lambda0, max_evals, rtol) -> list of the λ values tried, in order``.

    ``forget_acc(lam)`` returns the forget accuracy after the step ``θ + λ g_f``; the target is
    reached when it is 0. Start at ``lambda0``; double λ until the target is reached; then bisect
    between the largest λ that missed (``lo``, starting at 0) and the smallest that reached (``hi``).
    Stop after ``max_evals`` evaluations or once ``hi - lo <= rtol * hi``.
    """
    fb = Feedback("binary search", True)
    for desc, forget, lam0, max_evals in _forget_curves():
        want = _slugkit_trace(forget, lam0, max_evals, rtol)
        calls: list[float] = []

        def counted(lam, forget=forget):
            calls.append(float(lam))
            return forget(float(lam))

        try:
            got = fn(counted, lam0, max_evals, rtol)
            got = [float(x) for x in got]
        except Exception as err:
            return Feedback("binary search", False, [raised(err, desc)])
        msg = _diagnose_search(desc, got, want, calls, lam0, max_evals, forget, rtol)
        if msg:
            return Feedback("binary search", False, [msg])
    fb.messages.append("your search tries exactly the λ values slugkit's search_step_size tries, on every case "
                       "(including one where the target is never reached and a non-monotone one)")
    return fb


def _diagnose_search(desc, got, want, calls, lam0, max_evals, forget, rtol) -> str | None:
    if len(calls) > max_evals:
        return f"on '{desc}' you evaluated {len(calls)} times: stop after max_evals={max_evals} evaluations"
    if not got:
        return f"on '{desc}' your function returned no λ: return the list of λ values you tried"
    if not math.isclose(got[0], lam0, rel_tol=1e-9):
        return f"on '{desc}' start at λ0 = {lam0:g} (you started at {got[0]:g})"
    if len(got) != len(calls) or not np.allclose(got, calls):
        return (f"on '{desc}' return the list of every λ you evaluated, in order (you evaluated {len(calls)} "
                f"and returned {len(got)})")
    lo, hi = 0.0, None
    for k in range(min(len(got), len(want))):
        if not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-12):
            prev = got[k - 1]
            if hi is None:
                why = (f"λ={prev:g} did not reach the target and no λ has yet: double it, expected {want[k]:g}")
            else:
                why = (f"the target is bracketed between lo={lo:g} (missed) and hi={hi:g} (reached): try the "
                       f"midpoint {want[k]:g}")
            return f"on '{desc}' step {k} tried λ={got[k]:g}; {why}"
        if forget(got[k]) <= 0:
            hi = got[k]
        else:
            lo = got[k]
    if len(got) < len(want):
        return (f"on '{desc}' you stopped after {len(got)} evaluations; continue until max_evals={max_evals} or "
                f"hi - lo <= rtol * hi (next λ would be {want[len(got)]:g})")
    if len(got) > len(want):
        return (f"on '{desc}' you went on after step {len(want) - 1}: stop once hi - lo <= rtol * hi "
                f"(rtol={rtol}) or after max_evals={max_evals} evaluations")
    return None

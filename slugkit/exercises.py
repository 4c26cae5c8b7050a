"""Checkers for the notebook exercises: write a SLUG step yourself, compare it with slugkit's.

- :func:`check_layer_metrics` — importance, alignment and the Pareto mask (notebook 03).
- :func:`check_binary_search` — the step-size binary search (notebook 04).

A checker runs your function on small cases with known answers and returns a :class:`Feedback`
(``passed`` plus messages that say what is wrong and how to fix it); it displays itself in a notebook.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .layer_identification import alignment as _alignment
from .layer_identification import importance as _importance
from .layer_identification import pareto_front
from .step_size_search import Target, search_step_size


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


# ------------------------------------------------------------------------------------------------
# Exercise 1: layer metrics
# ------------------------------------------------------------------------------------------------
def _metric_cases() -> list[dict]:
    """Small cases: per layer a forget gradient, a retain gradient and the weight, all 2-D."""
    g = torch.Generator().manual_seed(7)
    cases = []
    for n_layers, shape in ((6, (4, 3)), (9, (5, 2))):
        g_f = [torch.randn(*shape, generator=g) * (k + 1) for k in range(n_layers)]
        g_r = [torch.randn(*shape, generator=g) for _ in range(n_layers)]
        g_r[1] = -g_f[1] * 0.5 + 0.1 * g_r[1]  # a negatively aligned layer: |cos| matters
        theta = [torch.randn(*shape, generator=g) * (3 - 0.2 * k) for k in range(n_layers)]
        cases.append({"g_f": g_f, "g_r": g_r, "theta": theta})
    # ties: two identical layers must both stay on the front
    base = cases[0]
    cases.append({"g_f": base["g_f"][:3] + [base["g_f"][2].clone()], "g_r": base["g_r"][:3] + [base["g_r"][2].clone()],
                  "theta": base["theta"][:3] + [base["theta"][2].clone()]})
    return cases


def _expected_metrics(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    imp = np.array([_importance(a, t) for a, t in zip(case["g_f"], case["theta"])])
    ali = np.array([_alignment(a, b) for a, b in zip(case["g_f"], case["g_r"])])
    return imp, ali, pareto_front(imp, ali)


def _as_array(x, n: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=float if what != "pareto" else object).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{what} has {arr.size} values for {n} layers: return one value per layer")
    return arr


def check_layer_metrics(fn: Callable) -> Feedback:
    """Check ``fn(g_f, g_r, theta) -> (importance, alignment, pareto)``.

    Inputs are lists (one entry per layer) of 2-D tensors: forget gradients, retain gradients and
    weights. Return three sequences of one value per layer: importance ``‖g_f‖_F / ‖θ‖_F``, alignment
    ``|cos(vec g_f, vec g_r)|`` and a boolean Pareto mask (True = no other layer has strictly higher
    importance and strictly lower alignment).
    """
    fb = Feedback("layer metrics", True)
    for c, case in enumerate(_metric_cases()):
        n = len(case["g_f"])
        try:
            out = fn([t.clone() for t in case["g_f"]], [t.clone() for t in case["g_r"]],
                     [t.clone() for t in case["theta"]])
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError("return a tuple (importance, alignment, pareto)")
            imp, ali = _as_array(out[0], n, "importance"), _as_array(out[1], n, "alignment")
            par = np.array([bool(v) for v in _as_array(out[2], n, "pareto")])
        except Exception as err:  # the learner's code raised: say where
            tb = traceback.extract_tb(err.__traceback__)
            where = f" (line {tb[-1].lineno})" if tb else ""
            return Feedback("layer metrics", False, [f"your function raised {type(err).__name__}: {err}{where}"])
        want_imp, want_ali, want_par = _expected_metrics(case)
        if not np.allclose(imp, want_imp, rtol=1e-4, atol=1e-8):
            fb.passed = False
            fb.messages.append(_diagnose_importance(case, imp, want_imp))
        if not np.allclose(ali, want_ali, rtol=1e-4, atol=1e-6):
            fb.passed = False
            fb.messages.append(_diagnose_alignment(case, ali, want_ali))
        if not np.array_equal(par, want_par):
            fb.passed = False
            fb.messages.append(_diagnose_pareto(want_imp, want_ali, par, want_par, c))
        if not fb.passed:
            break
    if fb.passed:
        fb.messages.append("importance, alignment and the Pareto mask match slugkit.layer_identification "
                           "on every test case (including a negatively aligned layer and tied layers)")
    return fb


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.double()))


def _diagnose_importance(case, got, want) -> str:
    tries = {
        "you returned ‖g_f‖ alone: importance is relative to the layer's size, divide by ‖θ‖_F":
            [_norm(a) for a in case["g_f"]],
        "you divided the wrong way round: importance is ‖g_f‖_F / ‖θ‖_F, not ‖θ‖ / ‖g_f‖":
            [_norm(t) / _norm(a) for a, t in zip(case["g_f"], case["theta"])],
        "you used squared norms: use the Frobenius norm itself, e.g. torch.linalg.norm(g) (no square)":
            [_norm(a) ** 2 / _norm(t) ** 2 for a, t in zip(case["g_f"], case["theta"])],
        "you used the retain gradient: importance measures the forget gradient g_f":
            [_norm(b) / _norm(t) for b, t in zip(case["g_r"], case["theta"])],
    }
    for msg, values in tries.items():
        if np.allclose(got, values, rtol=1e-4):
            return msg
    k = int(np.argmax(np.abs(got - want)))
    return (f"importance is wrong (layer {k}: got {got[k]:.4g}, expected {want[k]:.4g}); "
            "compute ‖g_f‖_F / ‖θ‖_F with the Frobenius norm of the whole matrix")


def _diagnose_alignment(case, got, want) -> str:
    signed = [float(torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()))
              for a, b in zip(case["g_f"], case["g_r"])]
    if np.allclose(got, signed, rtol=1e-4, atol=1e-6):
        return ("alignment must be the absolute cosine |cos(g_f, g_r)|: a layer whose gradients point in "
                "opposite directions is just as entangled")
    if np.allclose(got, 1 - np.abs(signed), rtol=1e-4, atol=1e-6):
        return "you returned 1 - |cos|: alignment is |cos(g_f, g_r)| itself (lower is better)"
    dots = [float((a.double() * b.double()).sum()) for a, b in zip(case["g_f"], case["g_r"])]
    if np.allclose(np.abs(got), np.abs(dots), rtol=1e-4):
        return "you returned the dot product: divide by ‖g_f‖ ‖g_r‖ to get a cosine"
    rowwise = [float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).abs().mean())
               for a, b in zip(case["g_f"], case["g_r"])]
    if np.allclose(got, rowwise, rtol=1e-4):
        return "you averaged row-wise cosines: flatten each matrix (vec g) and take one cosine"
    k = int(np.argmax(np.abs(got - want)))
    return f"alignment is wrong (layer {k}: got {got[k]:.4g}, expected {want[k]:.4g}); use |cos(vec g_f, vec g_r)|"


def _diagnose_pareto(imp, ali, got, want, case_no) -> str:
    n = len(imp)
    if np.array_equal(got, ~want):
        return "your Pareto mask is inverted: True should mark the layers that are NOT dominated"
    wrong_in = [i for i in range(n) if got[i] and not want[i]]
    wrong_out = [i for i in range(n) if want[i] and not got[i]]
    if wrong_in:
        i = wrong_in[0]
        j = next(j for j in range(n) if imp[j] > imp[i] and ali[j] < ali[i])
        return (f"layer {i} is dominated (layer {j} has higher importance {imp[j]:.3g} > {imp[i]:.3g} AND lower "
                f"alignment {ali[j]:.3g} < {ali[i]:.3g}) but your mask keeps it on the front")
    i = wrong_out[0]
    if case_no == len(_metric_cases()) - 1:
        return (f"layer {i} ties with another layer and your mask drops it: a layer is dominated only by one "
                "with STRICTLY higher importance and STRICTLY lower alignment, so ties both stay")
    return (f"layer {i} (importance {imp[i]:.3g}, alignment {ali[i]:.3g}) is not dominated by any layer but your "
            "mask drops it: dominated means another layer is better in BOTH (higher importance AND lower "
            "alignment), not in one of them")


# ------------------------------------------------------------------------------------------------
# Exercise 2: the binary search
# ------------------------------------------------------------------------------------------------
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
            tb = traceback.extract_tb(err.__traceback__)
            where = f" (line {tb[-1].lineno})" if tb else ""
            return Feedback("binary search", False,
                            [f"on the case '{desc}' your function raised {type(err).__name__}: {err}{where}"])
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


# ------------------------------------------------------------------------------------------------
# Reference answers (what the notebooks run when their REFERENCE flag is set, and the tests check)
# ------------------------------------------------------------------------------------------------
def reference_layer_metrics(g_f, g_r, theta):
    """A plain-torch answer to exercise 1 (written independently of ``layer_identification``)."""
    importance = [torch.linalg.norm(a).item() / torch.linalg.norm(t).item() for a, t in zip(g_f, theta)]
    alignment = [abs(torch.dot(a.flatten(), b.flatten()).item()) / (torch.linalg.norm(a).item()
                 * torch.linalg.norm(b).item()) for a, b in zip(g_f, g_r)]
    pareto = [not any(importance[j] > importance[i] and alignment[j] < alignment[i] for j in range(len(g_f)))
              for i in range(len(g_f))]
    return importance, alignment, pareto


def reference_binary_search(forget_acc, lambda0, max_evals=10, rtol=0.05):
    """A plain answer to exercise 2: the λ values tried, in order."""
    tried, lo, hi, lam = [], 0.0, None, lambda0
    for _ in range(max_evals):
        tried.append(lam)
        if forget_acc(lam) <= 0:
            hi = lam
        else:
            lo = lam
        if hi is None:
            lam = 2 * lam
        elif hi - lo <= rtol * hi:
            break
        else:
            lam = (lo + hi) / 2
    return tried

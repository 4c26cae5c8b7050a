"""Notebook 03's exercise: stage 2 by hand — importance, alignment and the Pareto mask of every layer."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..layer_identification import alignment as _alignment
from ..layer_identification import importance as _importance
from ..layer_identification import pareto_front
from .feedback import Feedback, raised

# How close a learner's float32 importance / alignment must come to slugkit's float64 ones (float32 sums differ from
# run to run by about 1e-5 relative, e.g. with the number of torch threads)
IMPORTANCE_TOL = {"rtol": 1e-4, "atol": 1e-8}
ALIGNMENT_TOL = {"rtol": 1e-4, "atol": 1e-6}


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
            return Feedback("layer metrics", False, [raised(err)])
        want_imp, want_ali, want_par = _expected_metrics(case)
        if not np.allclose(imp, want_imp, **IMPORTANCE_TOL):
            fb.passed = False
            fb.messages.append(_diagnose_importance(case, imp, want_imp))
        if not np.allclose(ali, want_ali, **ALIGNMENT_TOL):
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

"""Notebook 06's exercise: Integrated Gradients by hand (the midpoint rule, as Captum's ``riemann_middle``)."""
from __future__ import annotations

from typing import Callable

import torch

from .feedback import Feedback, raised

N_STEPS = 16


def _ig_cases() -> list[tuple[str, Callable, torch.Tensor, torch.Tensor]]:
    """(description, f: tensor -> scalar, x, baseline); float64 so rounding never hides a mistake."""
    g = torch.Generator().manual_seed(13)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.5
    return [
        ("linear f, zero baseline", lambda t: (w * t).sum(), x, torch.zeros_like(x)),
        ("curved f, non-zero baseline", lambda t: torch.sigmoid((w * t).sum()) * (t ** 2).sum(), x, b),
        ("curved f, zero baseline", lambda t: torch.tanh(t * w).pow(2).sum() + t[0].prod(), x, torch.zeros_like(x)),
    ]


def _grad(f: Callable, t: torch.Tensor) -> torch.Tensor:
    t = t.detach().requires_grad_(True)
    return torch.autograd.grad(f(t), t)[0]


def _path_mean(f: Callable, x: torch.Tensor, b: torch.Tensor, alphas) -> torch.Tensor:
    return sum(_grad(f, b + float(a) * (x - b)) for a in alphas) / len(alphas)


def _ig(f, x, b, n) -> torch.Tensor:
    return _path_mean(f, x, b, [(k + 0.5) / n for k in range(n)]) * (x - b)


def check_integrated_gradients(fn: Callable) -> Feedback:
    """Check ``fn(f, x, baseline, n_steps) -> attributions`` (a tensor shaped like ``x``).

    ``f`` maps a tensor shaped like ``x`` to a scalar tensor. Integrated Gradients averages the gradient of
    ``f`` at ``n_steps`` points on the straight path from ``baseline`` to ``x`` — the midpoints
    ``baseline + α (x − baseline)`` with ``α = (k + ½) / n_steps`` — and multiplies it by ``x − baseline``
    elementwise. The attributions then add up to about ``f(x) − f(baseline)`` (completeness).
    """
    for desc, f, x, b in _ig_cases():
        try:
            got = fn(f, x.clone(), b.clone(), N_STEPS)
            got = torch.as_tensor(got).detach().to(torch.float64)
            if got.shape != x.shape:
                raise ValueError(f"the attributions have shape {tuple(got.shape)}: return one per entry of x, "
                                 f"shape {tuple(x.shape)}")
        except Exception as err:
            return Feedback("integrated gradients", False, [raised(err, desc)])
        want = _ig(f, x, b, N_STEPS)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-6):
            return Feedback("integrated gradients", False, [_diagnose(desc, got, want, f, x, b)])
    return Feedback("integrated gradients", True, [
        f"the midpoint-rule Integrated Gradients on every case ({N_STEPS} steps), the same numbers as Captum's "
        "IntegratedGradients(method='riemann_middle')"])


def _diagnose(desc, got, want, f, x, b) -> str:
    n = N_STEPS
    mean_grad = _path_mean(f, x, b, [(k + 0.5) / n for k in range(n)])
    tries = [
        ("you returned the average gradient: multiply it by (x − baseline), elementwise", mean_grad),
        ("you multiplied by x: multiply by (x − baseline), the path's length in each entry", mean_grad * x),
        ("the sign is flipped: the path goes from the baseline to x, multiply by (x − baseline)", -want),
        (f"you summed the {n} gradients: average them (divide by n_steps)", want * n),
        ("you used only the gradient at x (gradient × input): average the gradients at points along the path from "
         "the baseline to x", _grad(f, x) * (x - b)),
        ("your points include both ends (torch.linspace(0, 1, n_steps)): use the midpoints α = (k + ½) / n_steps, "
         "k = 0 … n_steps − 1", _path_mean(f, x, b, torch.linspace(0, 1, n).tolist()) * (x - b)),
        ("your points are the left ends α = k / n_steps: use the midpoints α = (k + ½) / n_steps",
         _path_mean(f, x, b, [k / n for k in range(n)]) * (x - b)),
        ("your points are the right ends α = (k + 1) / n_steps: use the midpoints α = (k + ½) / n_steps",
         _path_mean(f, x, b, [(k + 1) / n for k in range(n)]) * (x - b)),
    ]
    for msg, values in tries:
        if torch.allclose(got, values, rtol=1e-4, atol=1e-6):
            return f"on '{desc}': {msg}"
    total, gap = float(got.sum()), float(f(x) - f(b))
    return (f"on '{desc}' your attributions add up to {total:.4g}, but f(x) − f(baseline) = {gap:.4g} (completeness; "
            f"the midpoint rule gives {float(want.sum()):.4g}): average the gradients at baseline + α (x − baseline), "
            "α = (k + ½) / n_steps, then multiply by (x − baseline)")

"""Reference answers to the notebook exercises, kept out of the notebooks so a student copy shows none.

Each function has the name and signature of the notebook's exercise; a notebook's ``solution`` cell imports it
when its ``REFERENCE`` switch is on. Each is written in plain torch / numpy, independently of the slugkit code
its checker compares with.
"""
from __future__ import annotations

import numpy as np
import torch


def average_gradients(model, loss_fn, batches):
    """Notebook 02: ``{parameter name: mean over batches of that batch's gradient}``."""
    sums = {}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for name, p in model.named_parameters():
            g = torch.zeros_like(p) if p.grad is None else p.grad.detach()
            sums[name] = sums[name] + g if name in sums else g.clone()
    model.zero_grad(set_to_none=True)
    return {name: s / len(batches) for name, s in sums.items()}


def layer_metrics(g_f, g_r, theta):
    """Notebook 03: importance ``‖g_f‖/‖θ‖``, alignment ``|cos(g_f, g_r)|`` and the Pareto mask, per layer."""
    importance = [torch.linalg.norm(a).item() / torch.linalg.norm(t).item() for a, t in zip(g_f, theta)]
    alignment = [abs(torch.dot(a.flatten(), b.flatten()).item()) / (torch.linalg.norm(a).item()
                 * torch.linalg.norm(b).item()) for a, b in zip(g_f, g_r)]
    pareto = [not any(importance[j] > importance[i] and alignment[j] < alignment[i] for j in range(len(g_f)))
              for i in range(len(g_f))]
    return importance, alignment, pareto


def binary_search(forget_acc, lambda0, max_evals=10, rtol=0.05):
    """Notebook 04: the λ values the step-size search tries, in order."""
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


def forget_retain_accuracy(scores, labels, concept):
    """Notebook 05: ``(forget_top1, forget_top5, retain_top1)`` from a ``(pictures, classes)`` score matrix."""
    labels = torch.as_tensor(np.array(labels))  # a copy: world.labels() may be read-only
    top5 = torch.as_tensor(scores).topk(5, dim=1).indices
    hit1, hit5 = top5[:, 0] == labels, (top5 == labels[:, None]).any(1)
    forget, retain = labels == concept, (labels >= 0) & (labels != concept)
    return hit1[forget].float().mean().item(), hit5[forget].float().mean().item(), hit1[retain].float().mean().item()


def integrated_gradients(f, x, baseline, n_steps=32):
    """Notebook 06: Integrated Gradients of the scalar ``f`` at ``x`` from ``baseline`` (midpoint rule)."""
    total = torch.zeros_like(x)
    for k in range(n_steps):
        point = (baseline + (k + 0.5) / n_steps * (x - baseline)).detach().requires_grad_(True)
        total += torch.autograd.grad(f(point), point)[0]
    return total / n_steps * (x - baseline)

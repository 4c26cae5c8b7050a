"""Notebook 02's exercise: stage 1 by hand — one gradient pass, averaged over batches."""
from __future__ import annotations

import copy
from typing import Callable

import torch

from .feedback import Feedback, raised

BATCH_SIZES = (5, 2, 7)  # unequal on purpose: a size-weighted average differs from the mean of batch gradients


def _mse(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _gradient_case(stale: bool) -> tuple[torch.nn.Module, list, dict[str, torch.Tensor] | None]:
    """A small MLP, three batches and (``stale``) gradients left in ``.grad`` by an earlier backward pass."""
    g = torch.Generator().manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    batches = [(torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)) for n in BATCH_SIZES]
    leftover = None
    if stale:
        leftover = {n: torch.randn(p.shape, generator=g) * 3 for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = leftover[n].clone()
    return model, batches, leftover


def _per_batch(model: torch.nn.Module, batches: list) -> list[dict[str, torch.Tensor]]:
    names, params = zip(*model.named_parameters())
    out = []
    for batch in batches:
        grads = torch.autograd.grad(_mse(model, batch), params)
        out.append({n: gr.detach() for n, gr in zip(names, grads)})
    return out


def check_average_gradients(fn: Callable) -> Feedback:
    """Check ``fn(model, loss_fn, batches) -> {parameter name: gradient}``.

    ``loss_fn(model, batch)`` is a scalar loss (a mean over the batch's samples). Return, for every parameter of
    ``model``, the mean over the batches of that batch's gradient: zero the gradients before each batch, call
    ``backward()``, add up ``p.grad``, divide by the number of batches — each batch counts once, whatever its
    size (``slugkit.gradients.compute_gradients`` does the same). Do not change the weights.
    """
    for stale in (False, True):
        model, batches, leftover = _gradient_case(stale)
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        per_batch = _per_batch(copy.deepcopy(model), batches)
        want = {n: sum(g[n] for g in per_batch) / len(batches) for n in weights}
        try:
            got = fn(model, _mse, batches)
            if not isinstance(got, dict):
                raise TypeError(f"return a dict {{parameter name: gradient tensor}}, not {type(got).__name__}")
            got = {n: torch.as_tensor(v).detach().float() for n, v in got.items()}
        except Exception as err:
            return Feedback("average gradients", False, [raised(err, "stale gradients" if stale else "fresh model")])
        changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), weights[n])]
        if changed:
            return Feedback("average gradients", False, [f"your function changed the weights of {changed[0]!r}: "
                                                         "compute gradients only, never step (no optimizer)"])
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            return Feedback("average gradients", False, [
                f"return one gradient per parameter of model.named_parameters(): missing {missing}" if missing else
                f"return one gradient per parameter of model.named_parameters(): unexpected keys {extra}"])
        bad = [n for n in want if got[n].shape != want[n].shape]
        if bad:
            return Feedback("average gradients", False, [f"gradient of {bad[0]!r} has shape {tuple(got[bad[0]].shape)}, "
                                                         f"expected the parameter's shape {tuple(want[bad[0]].shape)}"])
        if not all(torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-6) for n in want):
            return Feedback("average gradients", False, [_diagnose(got, per_batch, leftover)])
    return Feedback("average gradients", True, [
        "the mean of the per-batch gradients, for every parameter, on a fresh model and on one with gradients left "
        "over from an earlier pass (as slugkit.gradients.compute_gradients computes it)"])


def _diagnose(got: dict, per_batch: list[dict], leftover: dict | None) -> str:
    k = len(per_batch)
    names = list(got)
    total = {n: sum(g[n] for g in per_batch) for n in names}
    running = [{n: sum(g[n] for g in per_batch[:i + 1]) for n in names} for i in range(k)]
    sizes = BATCH_SIZES
    tries = [
        ("you summed the batch gradients: divide by the number of batches (the mean, not the sum)", total),
        ("you weighted each batch by its size: every batch's gradient counts once (the loss is already a mean "
         "over the batch's samples)", {n: sum(s * g[n] for s, g in zip(sizes, per_batch)) / sum(sizes) for n in names}),
        ("you kept only the last batch's gradient: add up every batch's gradient, then divide",
         per_batch[-1]),
        ("you kept only the first batch's gradient: add up every batch's gradient, then divide",
         per_batch[0]),
        ("p.grad keeps adding up across batches unless you zero it: call model.zero_grad() before each "
         "backward(), otherwise batch 2 reads the sum of batches 1 and 2", {n: sum(r[n] for r in running) / k for n in names}),
    ]
    if leftover is not None:  # never zeroed: read once at the end, or after every batch
        stale = ("the model came with gradients left over from an earlier backward pass and you counted them: zero "
                 "the gradients (model.zero_grad()) before each batch")
        tries += [(stale, {n: (leftover[n] + total[n]) / k for n in names}),
                  (stale, {n: sum(leftover[n] + r[n] for r in running) / k for n in names})]
    for msg, values in tries:
        if all(torch.allclose(got[n], values[n].float(), rtol=1e-4, atol=1e-6) for n in names):
            return msg
    n = max(names, key=lambda n: float((got[n] - total[n] / k).abs().max()))
    return (f"the gradient of {n!r} is wrong (largest difference {float((got[n] - total[n] / k).abs().max()):.3g}): "
            "for each batch zero the gradients, compute loss_fn(model, batch).backward(), add p.grad to a running "
            "sum (clone it), and divide the sums by the number of batches")

"""GA, FT, GA+FT, SalUn and SSD, each a few lines on the shared loop of :mod:`slugkit.baselines.loop`.

Losses are SLUG's own (:mod:`slugkit.gradients`): the forget loss ``L_f = mean(1 - cos(v, t))`` on
forget pairs and the CLIP contrastive loss ``L_r`` on retain pairs, so every method sees the same
objective and data and differs only in how it uses them. Every method updates all weights but the
temperature ``logit_scale``, with Adam (no weight decay).

=========  ==================================================================  ===========================
method     update per step                                                     grid (tried in order)
=========  ==================================================================  ===========================
GA         ascend ``L_f`` on a forget batch                                    lr in {3e-5, 1e-4}
FT         descend ``L_r`` on a retain batch (forgetting by fine-tuning only)  lr in {3e-4}
GA+FT      ascend ``L_f`` and descend ``L_r`` (``-L_f + L_r``)                 lr in {3e-5, 1e-4}
SalUn      GA+FT on the 50% of entries with the largest ``|g_f|`` (saliency)   lr in {3e-5, 1e-4}
SSD        dampen entries whose forget importance exceeds ``alpha`` times the  dampening lambda in {1};
           retain importance: ``theta *= min(lambda I_r / I_f, 1)``; one step  steps: alpha = 100, 30, 10,
           per alpha, strongest selection last                                 3, 1, 0.3
=========  ==================================================================  ===========================

Grid points run in order, gentlest first, each for at most ``max_steps`` steps (batches of 32 forget
and/or 32 retain pairs); the method stops at the first evaluation that meets the target. The rates
were calibrated on the toy CLIP: GA+FT at 1e-4 reaches forget top-5 = 0 for "Captain Zorp" in 8 steps.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ..gradients import forget_loss, retain_loss
from .loop import Baseline, Run


def _forget_term(run: Run) -> torch.Tensor:
    pixels, tokens = next(run.forget_batches)
    a = run.adapter
    return forget_loss(a.encode_image(pixels.to(a.device)), a.encode_text(tokens.to(a.device)))


def _retain_term(run: Run) -> torch.Tensor:
    pixels, tokens = next(run.retain_batches)
    a = run.adapter
    return retain_loss(a.encode_image(pixels.to(a.device)), a.encode_text(tokens.to(a.device)), a.logit_scale())


class GradientBaseline(Baseline):
    """Adam on ``-ascent * L_f + descent * L_r``, optionally on a mask of the weights."""

    ascent: float = 0.0   # weight of the forget loss, ascended
    descent: float = 0.0  # weight of the retain loss, descended

    def mask(self, run: Run) -> dict[str, torch.Tensor] | None:
        """Which entries may change (``{name: bool tensor}``); ``None``: all."""
        return None

    def steps(self, run: Run, lr: float) -> Iterator[None]:
        params = run.trainable()
        for p in run.adapter.model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        mask = self.mask(run)
        opt = torch.optim.Adam(params.values(), lr=lr)
        for _ in range(run.max_steps):
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = 0.0
                if self.ascent:
                    loss = loss - self.ascent * _forget_term(run)
                if self.descent:
                    loss = loss + self.descent * _retain_term(run)
                loss.backward()
            if mask is not None:
                for name, m in mask.items():
                    if params[name].grad is not None:
                        params[name].grad.mul_(m)
            opt.step()
            yield


class GA(GradientBaseline):
    """Gradient ascent on the forget loss: pushes forget images and captions apart."""

    name = "GA"
    ascent = 1.0
    grid = ({"lr": 3e-5}, {"lr": 1e-4})


class FT(GradientBaseline):
    """Fine-tuning on the retain set only, hoping the concept is forgotten along the way."""

    name = "FT"
    descent = 1.0
    grid = ({"lr": 3e-4},)  # a larger drift is FT's only way to forget; smaller rates never got there


class GAFT(GradientBaseline):
    """Gradient ascent on the forget set plus fine-tuning on the retain set, in one loss."""

    name = "GA+FT"
    ascent = descent = 1.0
    grid = ({"lr": 3e-5}, {"lr": 1e-4})


class SalUn(GAFT):
    """GA+FT restricted to the salient half of the weights: the entries with the top 50% ``|g_f|``.

    ``g_f`` is the forget-loss gradient over the forget set (SLUG's stage-1 accumulation); the
    threshold is the global median of ``|g_f|`` over all trained entries, as in the SalUn reference.
    """

    name = "SalUn"
    ratio = 0.5

    def setup(self, run: Run) -> None:
        from ..gradients import accumulate_gradients

        names = list(run.trainable())
        g = accumulate_gradients(run.adapter, run.forget_loader, "forget", names, progress=False)
        flat = torch.cat([v.abs().flatten() for v in g.values()])
        k = max(1, int(round(self.ratio * flat.numel())))
        threshold = flat.kthvalue(flat.numel() - k + 1).values
        run.state["saliency"] = {n: (v.abs() >= threshold).to(v.dtype) for n, v in g.items()}

    def mask(self, run: Run) -> dict[str, torch.Tensor]:
        return run.state["saliency"]


class SSD(Baseline):
    """Selective Synaptic Dampening (Foster et al., 2024): no training, one multiplicative edit.

    Importances are diagonal-Fisher estimates: the mean over batches of the squared per-batch gradient
    of the forget loss ``1 - cos(v, t)``, on forget pairs (``I_f``) and on retain pairs (``I_r``, for the
    training data SSD uses). Entries with ``I_f > alpha I_r`` are multiplied by
    ``min(lambda I_r / I_f, 1)``. Each step applies one ``alpha`` to the original weights, from the
    mildest selection (largest alpha) to the strongest.
    """

    name = "SSD"
    grid = ({"dampening": 1.0},)
    alphas = (100.0, 30.0, 10.0, 3.0, 1.0, 0.3)
    eval_every = 1

    def setup(self, run: Run) -> None:
        run.state["I_f"] = self._importance(run, run.forget_loader)
        run.state["I_r"] = self._importance(run, run.retain_loader)

    @staticmethod
    def _importance(run: Run, loader) -> dict[str, torch.Tensor]:
        params = run.trainable()
        a = run.adapter
        for p in a.model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        sums = {n: torch.zeros_like(p) for n, p in params.items()}
        n = 0
        for pixels, tokens in loader:
            a.model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                forget_loss(a.encode_image(pixels.to(a.device)), a.encode_text(tokens.to(a.device))).backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad.detach() ** 2
            n += 1
        a.model.zero_grad(set_to_none=True)
        return {name: s / max(n, 1) for name, s in sums.items()}

    def steps(self, run: Run, dampening: float) -> Iterator[None]:
        params = run.trainable()
        original = {n: p.detach().clone() for n, p in params.items()}
        i_f, i_r = run.state["I_f"], run.state["I_r"]
        for alpha in self.alphas:
            with torch.no_grad():
                for name, p in params.items():
                    select = i_f[name] > alpha * i_r[name]
                    beta = (dampening * i_r[name] / i_f[name].clamp_min(1e-30)).clamp(max=1.0)
                    p.copy_(torch.where(select, original[name] * beta, original[name]))
            yield


BASELINES: dict[str, type[Baseline]] = {"ga": GA, "ft": FT, "gaft": GAFT, "salun": SalUn, "ssd": SSD}


def make_baseline(name: str) -> Baseline:
    """A baseline by its short name: ga, ft, gaft, salun or ssd (case-insensitive, ``ga+ft`` too)."""
    key = name.lower().replace("+", "").replace("-", "").replace("_", "")
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    return BASELINES[key]()

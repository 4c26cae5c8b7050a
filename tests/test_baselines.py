"""Each baseline moves a tiny model the expected way, on the shared loop and its stop rule."""
import numpy as np
import pytest
import torch

from fakes import FakeAdapter
from slugkit.baselines import BASELINES, MatchTarget, make_baseline, match_baseline, run_baseline
from slugkit.data.pairs import InMemoryPairs, pair_loader
from slugkit.gradients import forget_loss, retain_loss
from slugkit.step_size_search import Target
from slugkit.tasks import Evaluator, Task


def _pairs(seed: int, n: int, word: str) -> InMemoryPairs:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(n)]
    return InMemoryPairs(images, [f"{word}{chr(97 + k % 26)}" for k in range(n)])


class LossEvaluator(Evaluator):
    """Search metrics of the fake model: forget cosine (as the 'forget' metric) and retain loss."""

    def __init__(self, adapter, forget, retain):
        self.adapter = adapter
        self.forget = next(iter(pair_loader(forget, adapter, batch_size=len(forget))))
        self.retain = next(iter(pair_loader(retain, adapter, batch_size=len(retain))))
        self.calls = 0

    @torch.no_grad()
    def __call__(self, edited_tower=None, block=None):
        self.calls += 1
        a = self.adapter
        fc = 1 - forget_loss(a.encode_image(self.forget[0]), a.encode_text(self.forget[1])).item()
        rl = retain_loss(a.encode_image(self.retain[0]), a.encode_text(self.retain[1]), a.logit_scale()).item()
        return {"forget_cos": fc, "retain_loss": rl, "retain_top1": -rl, "utility": -rl}


def _learn(adapter, evaluator, steps=25):
    """Train the fake on its forget and retain pairs, so that there is something to unlearn."""
    opt = torch.optim.Adam([p for n, p in adapter.model.named_parameters() if "logit_scale" not in n], lr=2e-2)
    (fp, ft), (rp, rt) = evaluator.forget, evaluator.retain
    for _ in range(steps):
        opt.zero_grad()
        loss = forget_loss(adapter.encode_image(fp), adapter.encode_text(ft)) + retain_loss(
            adapter.encode_image(rp), adapter.encode_text(rt), adapter.logit_scale())
        loss.backward()
        opt.step()
    adapter.model.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def learned():
    adapter = FakeAdapter(seed=0)
    _learn(adapter, LossEvaluator(adapter, _pairs(0, 16, "zq"), _pairs(1, 32, "ab")))
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


@pytest.fixture
def setup(learned):
    adapter = FakeAdapter(seed=0)
    adapter.model.load_state_dict(learned)
    forget, retain = _pairs(0, 16, "zq"), _pairs(1, 32, "ab")
    evaluator = LossEvaluator(adapter, forget, retain)
    assert evaluator()["forget_cos"] > 0.5
    return adapter, Task("zq", forget, retain, evaluator, evaluator), evaluator


def _never(metric="forget_cos"):
    return Target(forget_metric=metric, threshold=-10.0)  # unreachable: run the whole budget


@pytest.mark.parametrize("name", ["ga", "gaft", "salun"])
def test_ascent_methods_lower_the_forget_cosine(setup, name):
    adapter, task, ev = setup
    start = ev()
    result = run_baseline(adapter, make_baseline(name), task, _never(), grid=[{"lr": 3e-2}], max_steps=12,
                          eval_every=4, batch_size=8, progress=False)
    end = ev()
    assert result.status == "target-not-reached" and result.evaluations == 3
    assert end["forget_cos"] < start["forget_cos"] - 0.05  # the model holds the best point: lowest forget cosine
    assert result.metrics["forget_cos"] == pytest.approx(end["forget_cos"])
    result.restore(adapter.model)
    assert ev()["forget_cos"] == pytest.approx(start["forget_cos"])


def test_ft_lowers_the_retain_loss(setup):
    adapter, task, ev = setup
    start = ev()
    target = Target(forget_metric="retain_loss", threshold=start["retain_loss"] - 0.2)  # FT's own objective
    result = run_baseline(adapter, make_baseline("ft"), task, target, grid=[{"lr": 3e-2}], max_steps=30,
                          eval_every=2, batch_size=32, progress=False)
    assert result.status == "ok" and result.step < 30  # stopped at the first evaluation that met it
    assert ev()["retain_loss"] <= start["retain_loss"] - 0.2
    assert result.trace[-1]["met"] and not any(t["met"] for t in result.trace[:-1])


def test_salun_changes_only_the_salient_half(setup):
    adapter, task, _ = setup
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    run_baseline(adapter, make_baseline("salun"), task, _never(), grid=[{"lr": 1e-2}], max_steps=3, eval_every=3,
                 batch_size=8, progress=False)
    changed = sum(int((p != before[n]).sum()) for n, p in adapter.model.named_parameters())
    total = sum(p.numel() for n, p in adapter.model.named_parameters() if "logit_scale" not in n)
    assert 0.3 * total < changed <= 0.5 * total + 1
    assert torch.equal(adapter.model.logit_scale, before["logit_scale"])


def test_ssd_only_shrinks_weights_and_stops_at_the_first_alpha_that_meets_the_target(setup):
    adapter, task, ev = setup
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    start = ev()["forget_cos"]
    result = run_baseline(adapter, make_baseline("ssd"), task, _never(), max_steps=10, eval_every=5, batch_size=8,
                          progress=False)
    assert result.evaluations == len(BASELINES["ssd"].alphas)  # one evaluation per alpha
    shrunk = 0
    for n, p in adapter.model.named_parameters():
        assert (p.abs() <= before[n].abs() + 1e-7).all()  # dampening never grows a weight
        assert ((p == before[n]) | (torch.sign(p) == torch.sign(before[n])) | (p == 0)).all()
        shrunk += int((p != before[n]).sum())
    assert shrunk > 0 and ev()["forget_cos"] < start  # the best point forgets more than the original
    # a reachable target stops at the first alpha that reaches it
    first = result.trace[2]["metrics"]["forget_cos"]
    result.restore(adapter.model)
    again = run_baseline(adapter, make_baseline("ssd"), task, Target("forget_cos", threshold=first + 1e-9),
                         progress=False)
    assert again.status == "ok" and again.evaluations <= 3


def test_unknown_baseline_and_empty_grid_are_refused(setup):
    adapter, task, _ = setup
    with pytest.raises(ValueError, match="unknown baseline 'esd'"):
        make_baseline("esd")
    with pytest.raises(ValueError, match="grid is empty"):
        run_baseline(adapter, make_baseline("ga"), task, grid=[], progress=False)
    assert type(make_baseline("GA+FT")).__name__ == "GAFT"


# ----------------------------------------------------------------------------------------------------
# Equal quality: match_baseline stops only when the forget target AND the retain / utility bar are met
# ----------------------------------------------------------------------------------------------------
def test_match_target_needs_the_forget_target_and_every_quality_metric_within_the_tolerance():
    rule = MatchTarget(Target("forget_top5"), {"forget_top5": 0.0, "retain_top1": 0.95, "utility": 0.90})
    ok = {"forget_top5": 0.0, "retain_top1": 0.945, "utility": 0.89}  # 0.5 and 1.0 point below: within the bar
    assert rule.met(ok, {}) and rule.forget_metric == "forget_top5"
    assert not rule.met(ok | {"forget_top5": 0.02}, {})  # the forget target not reached
    assert not rule.met(ok | {"retain_top1": 0.93}, {})  # forgets, but retain 2 points below SLUG's
    assert not rule.met(ok | {"utility": 0.885}, {})  # forgets, but utility 1.5 points below
    assert "retain_top1 >= 0.9500 - 0.01" in rule.describe()
    with pytest.raises(ValueError, match="lack \\['utility'\\]"):
        MatchTarget(Target("forget_top5"), {"forget_top5": 0.0, "retain_top1": 0.95})


def _forget_target(ev, drop=0.05):
    return Target("forget_cos", threshold=ev()["forget_cos"] - drop)  # reached by GA+FT at lr 3e-2 within 12 steps


def test_match_reaching_the_forget_target_without_the_quality_is_not_matched_and_spends_the_budget(setup):
    adapter, task, ev = setup
    target = _forget_target(ev)
    unreachable = ev() | {"retain_top1": 100.0, "utility": 100.0}  # a quality no edit of the fake reaches
    m = match_baseline(adapter, make_baseline("gaft"), task, target, unreachable, budget=16, eval_every=4,
                       grid=[{"lr": 3e-2}, {"lr": 1e-2}], batch_size=8, progress=False)
    assert not m.matched and m.seconds is None and m.steps == m.budget == 16 and m.wall_seconds > 0
    assert m.result.evaluations == 4  # 8 steps per grid point, evaluated every 4: both ran their share
    assert any(target.reached(t["metrics"]) for t in m.result.trace)  # it forgot: the quality bar stopped it
    m.result.restore(adapter.model)
    plain = run_baseline(adapter, make_baseline("gaft"), task, target, grid=[{"lr": 3e-2}], max_steps=16,
                         eval_every=4, batch_size=8, progress=False)
    assert plain.status == "ok"  # the plain stop rule (forget target only) is met by the same run


def test_match_meeting_everything_is_matched_with_its_steps_and_seconds(setup):
    adapter, task, ev = setup
    target = _forget_target(ev)
    reference = ev() | {"retain_top1": ev()["retain_top1"] - 5.0, "utility": ev()["utility"] - 5.0}  # a low bar
    m = match_baseline(adapter, make_baseline("gaft"), task, target, reference, budget=40, eval_every=2,
                       grid=[{"lr": 3e-2}, {"lr": 1e-2}], batch_size=8, progress=False)
    assert m.matched and 0 < m.seconds == m.wall_seconds and m.cpu_seconds > 0 and m.result.status == "ok"
    assert m.steps == m.result.step < 20 and m.result.trace[-1]["met"]  # stopped at the first grid point's match
    assert not any(t["met"] for t in m.result.trace[:-1])
    assert ev()["forget_cos"] <= target.threshold  # the model holds the matched weights


def test_match_counts_the_steps_of_every_grid_point_tried(setup):
    adapter, task, ev = setup
    target = _forget_target(ev)
    reference = ev() | {"retain_top1": ev()["retain_top1"] - 5.0, "utility": ev()["utility"] - 5.0}
    # the first point (lr 0: no change) cannot forget; its whole share of the budget counts before the second
    m = match_baseline(adapter, make_baseline("gaft"), task, target, reference, budget=40, eval_every=2,
                       grid=[{"lr": 0.0}, {"lr": 3e-2}], batch_size=8, progress=False)
    assert m.matched and m.result.hparams == {"lr": 3e-2} and m.steps == 20 + m.result.step
    with pytest.raises(ValueError, match="at least one step"):
        match_baseline(adapter, make_baseline("gaft"), task, target, reference, budget=1,
                       grid=[{"lr": 0.0}, {"lr": 3e-2}], progress=False)

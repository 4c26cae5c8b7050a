import json
import random

import pytest
import torch

from slugkit.step_size_search import (
    SearchResult,
    Target,
    apply_step,
    search_step_size,
)


class Synthetic:
    """Evaluator whose forget accuracy drops to 0 exactly at ``lam >= lam_star``.

    It recovers the current lambda from the parameter, and checks every edit starts from a fresh copy.
    """

    def __init__(self, param, grad, lam_star=5.3, utility_slope=1 / 200, fail_at=None):
        self.param, self.grad = param, grad
        self.original = param.detach().clone()
        self.lam_star, self.slope, self.fail_at = lam_star, utility_slope, fail_at
        self.lams = []

    def current_lambda(self):
        return ((self.param.detach() - self.original) / self.grad).mean().item()

    def __call__(self):
        if self.fail_at is not None and len(self.lams) == self.fail_at:
            raise RuntimeError("evaluator crashed")
        lam = self.current_lambda()
        self.lams.append(lam)
        return {
            "forget_top5": 0.0 if lam >= self.lam_star - 1e-4 else 0.6,
            "retain_top1": 1.0 - lam / 100,
            "utility": 0.9 - self.slope * lam,
        }


def _setup(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    param = torch.nn.Parameter(torch.randn(6, 5, generator=g).to(dtype))
    grad = (torch.rand(6, 5, generator=g) + 0.5).to(dtype)  # strictly positive: lambda is recoverable
    return param, grad


def test_converges_to_threshold_with_exact_schedule():
    param, grad = _setup()
    ev = Synthetic(param, grad)
    res = search_step_size(param, grad, ev, lambda0=1.0, layer_name="w")
    lams = [s.lam for s in res.trace]
    assert lams == [1, 2, 4, 8, 6, 5, 5.5, 5.25, 5.375, 5.3125]
    assert [s.step for s in res.trace] == list(range(10))
    assert res.status == "ok" and res.layer == "w"
    assert res.best_lambda == 5.3125
    assert 0 <= res.best_lambda - ev.lam_star < 0.02
    assert res.best_metrics == res.trace[-1].metrics
    assert len(ev.lams) == 11  # baseline + 10 evaluations
    assert ev.lams[0] == 0.0 and res.baseline["forget_top5"] == 0.6


def test_each_step_uses_fresh_copy_and_restores_bit_exactly():
    param, grad = _setup(seed=3)
    original = param.detach().clone()
    snapshots = []

    def evaluate():
        snapshots.append(param.detach().clone())
        return {"forget_top5": 0.0 if len(snapshots) > 4 else 1.0, "retain_top1": 1.0, "utility": 1.0}

    res = search_step_size(param, grad, evaluate, lambda0=0.37)
    for step, snap in zip(res.trace, snapshots[1:]):
        assert torch.equal(snap, original + step.lam * grad)
    assert torch.equal(snapshots[0], original)
    assert torch.equal(param.detach(), original)


def test_restores_on_evaluator_error():
    param, grad = _setup(seed=4)
    original = param.detach().clone()
    with pytest.raises(RuntimeError, match="crashed"):
        search_step_size(param, grad, Synthetic(param, grad, fail_at=3), lambda0=1.0)
    assert torch.equal(param.detach(), original)


def test_restores_half_precision_bit_exactly():
    param, grad = _setup(seed=5, dtype=torch.float16)
    original = param.detach().clone()
    search_step_size(param, grad, Synthetic(param, grad, lam_star=0.5), lambda0=0.1, max_evals=4)
    assert torch.equal(param.detach(), original) and param.dtype == torch.float16


@pytest.mark.filterwarnings("ignore:the unedited model already")
def test_never_returns_a_lambda_that_did_not_meet_target():
    rng = random.Random(0)
    for trial in range(50):
        param, grad = _setup(seed=trial)

        def evaluate():
            return {"forget_top5": rng.choice([0.0, 0.0, 0.3]), "retain_top1": rng.random(), "utility": rng.random()}

        res = search_step_size(param, grad, evaluate, max_evals=rng.randint(1, 12))
        met = [s for s in res.trace if s.met]
        assert len(res.trace) <= 12
        if met:
            assert res.status == "ok"
            best = max(met, key=lambda s: ((s.metrics["retain_top1"] + s.metrics["utility"]) / 2, -s.lam))
            assert res.best_lambda == best.lam and res.best_metrics == best.metrics
        else:
            assert res.status == "target-not-reached" and res.best_lambda is None and res.best_metrics is None


def test_unreachable_target_doubles_only():
    param, grad = _setup()
    res = search_step_size(param, grad, Synthetic(param, grad, lam_star=1e9), lambda0=1.0, max_evals=7)
    assert res.status == "target-not-reached" and res.best_lambda is None and res.best_metrics is None
    assert [s.lam for s in res.trace] == [1, 2, 4, 8, 16, 32, 64]
    assert not any(s.reached for s in res.trace)


def test_reached_at_first_step_bisects_towards_zero():
    param, grad = _setup()
    res = search_step_size(param, grad, Synthetic(param, grad, lam_star=0.3), lambda0=8.0, max_evals=6)
    assert [s.lam for s in res.trace] == [8, 4, 2, 1, 0.5, 0.25]
    assert res.best_lambda == 0.5


def test_trace_length_and_early_stop():
    param, grad = _setup()
    for max_evals in (1, 3, 10, 40):
        res = search_step_size(param, grad, Synthetic(param, grad), lambda0=1.0, max_evals=max_evals)
        assert len(res.trace) <= max_evals
    assert len(res.trace) < 40  # stopped once hi - lo <= rtol * hi


def test_ties_prefer_smaller_lambda():
    param, grad = _setup()

    def evaluate():
        return {"forget_top5": 0.0, "retain_top1": 0.5, "utility": 0.5}

    with pytest.warns(UserWarning, match="already"):
        res = search_step_size(param, grad, evaluate, lambda0=1.0, max_evals=4)
    assert res.best_lambda == min(s.lam for s in res.trace) == 0.125


def test_utility_guard():
    param, grad = _setup()
    # utility = 0.9 - lam/20: within 0.31 of the baseline iff lam <= 6.2; forget reached iff lam >= 5.3
    loose = Target(guard_metric="utility", guard_tolerance=0.31)
    res = search_step_size(param, grad, Synthetic(param, grad, utility_slope=1 / 20), loose, lambda0=1.0)
    by_lam = {s.lam: s for s in res.trace}
    assert by_lam[8].reached and not by_lam[8].met
    assert by_lam[6].met
    assert res.status == "ok" and 5.3 <= res.best_lambda <= 6.2
    strict = Target(guard_metric="utility", guard_tolerance=0.1)  # needs lam <= 2
    res = search_step_size(param, grad, Synthetic(param, grad, utility_slope=1 / 20), strict, lambda0=1.0)
    assert any(s.reached for s in res.trace)
    assert res.status == "target-not-reached" and res.best_lambda is None
    with pytest.raises(ValueError, match="together"):
        Target(guard_metric="utility")


def test_custom_forget_metric_and_threshold():
    param, grad = _setup()

    def evaluate():
        return {"forget_top1": 0.04, "retain_top1": 1.0, "utility": 1.0}

    target = Target(forget_metric="forget_top1", threshold=0.05)
    assert target.describe() == "forget_top1 <= 0.05"
    with pytest.warns(UserWarning):
        res = search_step_size(param, grad, evaluate, target, max_evals=2)
    assert res.status == "ok"
    with pytest.raises(KeyError, match="no 'forget_top5' metric"):  # the default rule is the authors' top-5
        search_step_size(param, grad, evaluate)


def test_default_target_is_top5_and_top1_is_weaker():
    assert Target().forget_metric == "forget_top5" and Target().describe() == "forget_top5 <= 0"
    guard = Target(guard_metric="utility", guard_tolerance=0.03)
    assert guard.describe() == "forget_top5 <= 0 and utility >= baseline - 0.03"
    # the name in second place: top-1 rule reached, top-5 rule not
    second_place = {"forget_top1": 0.0, "forget_top5": 0.88}
    assert Target("forget_top1").reached(second_place) and not Target().reached(second_place)


def test_default_lambda0():
    param, grad = _setup()
    res = search_step_size(param, grad, Synthetic(param, grad), max_evals=1)
    assert res.lambda0 == pytest.approx(0.1 * param.norm().item() / grad.norm().item(), rel=1e-6)
    assert res.trace[0].lam == res.lambda0


def test_bad_inputs_name_the_layer():
    param, grad = _setup()
    ev = Synthetic(param, grad)
    with pytest.raises(ValueError, match="shape.*'L'"):
        search_step_size(param, grad[:2], ev, layer_name="L")
    with pytest.raises(ValueError, match="'L' is all zero"):
        search_step_size(param, torch.zeros_like(grad), ev, layer_name="L")
    nan = grad.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match="'L' has non-finite"):
        search_step_size(param, nan, ev, layer_name="L")
    with pytest.raises(ValueError, match="max_evals"):
        search_step_size(param, grad, ev, max_evals=0)
    with pytest.raises(ValueError, match="lambda0"):
        search_step_size(param, grad, ev, lambda0=-1.0, layer_name="L")


def test_result_serialisation():
    param, grad = _setup()
    res = search_step_size(param, grad, Synthetic(param, grad), lambda0=1.0, max_evals=6, layer_name="w")
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    back = SearchResult.from_dict(json.loads(json.dumps(d)))
    assert back == res
    frame = res.to_frame()
    assert list(frame.columns[:5]) == ["step", "lam", "reached", "met", "best"]
    assert len(frame) == 6 and frame["best"].sum() == 1
    assert {"forget_top5", "retain_top1", "utility"} <= set(frame.columns)


def test_apply_step_context_manager():
    param, grad = _setup()
    original = param.detach().clone()
    with apply_step(param, grad, 0.5) as p:
        assert torch.equal(p.detach(), original + 0.5 * grad)
    assert torch.equal(param.detach(), original)
    with pytest.raises(RuntimeError):
        with apply_step(param, grad, 2.0):
            raise RuntimeError
    assert torch.equal(param.detach(), original)


class NonMonotone:
    """A deterministic fake whose forget metric is not monotone in lambda (a pseudo-random function of it),
    with a forget-only shortcut that counts its calls apart from the full ones."""

    def __init__(self, param, grad, seed):
        self.param, self.grad, self.original = param, grad, param.detach().clone()
        self.seed, self.full, self.forget_only = seed, 0, 0

    def _lam(self):
        return round(((self.param.detach() - self.original) / self.grad).mean().item(), 6)

    def _forget(self, lam):
        return random.Random(f"{self.seed}-{lam}").choice([0.0, 0.0, 0.2, 0.5]) if lam > 0 else 0.9

    def __call__(self):
        self.full += 1
        lam = self._lam()
        return {"forget_top5": self._forget(lam), "retain_top1": 1 / (1 + lam), "utility": 1 - lam / (50 + lam)}

    def forget_metrics(self):
        self.forget_only += 1
        return {"forget_top5": self._forget(self._lam())}


def test_forget_first_search_returns_the_same_best_point_as_the_full_search():
    """Measuring the forget metric first (and the rest only where the target is reached) changes no decision:
    the same step sizes are tried and the same best point returned; only unreached steps lack retain/utility."""
    saved = 0
    for trial in range(40):
        param, grad = _setup(seed=trial)
        full_ev, lazy_ev = NonMonotone(param, grad, trial), NonMonotone(param, grad, trial)
        kw = dict(max_evals=8, rtol=0.05 if trial % 2 else 0.0)
        full = search_step_size(param, grad, full_ev, **kw)
        base = full.baseline
        lazy = search_step_size(param, grad, lazy_ev, baseline=base, evaluate_forget=lazy_ev.forget_metrics, **kw)
        assert [s.lam for s in lazy.trace] == [s.lam for s in full.trace]
        assert [s.reached for s in lazy.trace] == [s.reached for s in full.trace]
        assert (lazy.status, lazy.best_lambda, lazy.best_metrics) == (full.status, full.best_lambda, full.best_metrics)
        for f, s in zip(full.trace, lazy.trace):
            assert s.metrics == (f.metrics if f.reached else {"forget_top5": f.metrics["forget_top5"]})
        assert lazy_ev.forget_only == len(lazy.trace)  # one forget-only call per step, no baseline call
        assert lazy_ev.full == sum(s.reached for s in lazy.trace)
        saved += full_ev.full - lazy_ev.full
    assert saved > 40  # the shortcut skipped many full evaluations


def test_a_costly_guard_is_measured_only_at_the_baseline_and_the_step_returned():
    param, grad = _setup()
    ev = Synthetic(param, grad)  # forget reached iff lam >= 5.3
    guard_lams = []

    def guard(damage_from):  # the neighbours' accuracy: 1 below lambda damage_from, 0.5 from there
        def evaluate():
            lam = ev.current_lambda()
            guard_lams.append(lam)
            return {"ira": 1.0 if lam < damage_from else 0.5, "cra": 1.0}
        return evaluate

    target = Target(guard_metric=("ira", "cra"), guard_tolerance=0.1)
    assert target.guards == ("ira", "cra") and target.describe() == (
        "forget_top5 <= 0 and ira >= baseline - 0.1 and cra >= baseline - 0.1")
    kept = search_step_size(param, grad, ev, target, lambda0=1.0, evaluate_guard=guard(10.0))
    assert kept.status == "ok" and kept.best_lambda == 5.3125  # the same step as without the guard
    assert guard_lams == pytest.approx([0.0, 5.3125]) and kept.baseline["ira"] == 1.0
    assert kept.best_metrics["ira"] == 1.0 and "ira" not in kept.trace[3].metrics  # lambda 8: not measured
    guard_lams.clear()
    # the neighbours break from lambda 5: the step the search would return is refused, the larger ones not measured
    refused = search_step_size(param, grad, ev, target, lambda0=1.0, evaluate_guard=guard(5.0))
    assert refused.status == "target-not-reached" and refused.best_lambda is None
    assert guard_lams == pytest.approx([0.0, 5.3125])
    step = next(s for s in refused.trace if s.lam == 5.3125)
    assert step.reached and not step.met and step.metrics["ira"] == 0.5
    assert torch.equal(param, ev.original)
    with pytest.raises(ValueError, match="needs a target with a guard"):
        search_step_size(param, grad, ev, Target(), lambda0=1.0, evaluate_guard=guard(5.0))


def test_stop_on_guard_ends_a_search_whose_unreached_step_is_far_past_the_guard():
    """The other names fall with lambda and the name goes only at lambda >= 0.75: with ``stop_on_guard=2`` the search
    goes on past a step 20 points down (lambda 0.2: over the tolerance, under twice it) and stops at the first
    unreached step more than 30 points down (lambda 0.4); without it the search goes on."""
    param, grad = torch.nn.Parameter(torch.ones(4)), torch.ones(4)

    def evaluate():
        lam = float(param[0]) - 1.0
        return {"forget_top1": 0.0 if lam >= 0.75 else 1.0, "retain_top1": 1.0 - lam, "utility": 1.0}

    target = Target("forget_top1", guard_metric="retain_top1", guard_tolerance=0.15)
    full = search_step_size(param, grad, evaluate, target, lambda0=0.1, progress=False)
    stopped = search_step_size(param, grad, evaluate, target, lambda0=0.1, progress=False, stop_on_guard=2.0)
    assert [round(s.lam, 6) for s in stopped.trace] == [0.1, 0.2, 0.4] and stopped.status == "target-not-reached"
    assert len(full.trace) > 3 and any(s.reached for s in full.trace) and full.status == "target-not-reached"
    assert torch.equal(param.detach(), torch.ones(4))
    with pytest.raises(ValueError, match="stop_on_guard needs a target with a guard"):
        search_step_size(param, grad, evaluate, Target("forget_top1"), progress=False, stop_on_guard=2.0)


class Batched:
    """A fake on a one-number parameter (``theta = 0``, ``g = 1``, so the weight is lambda itself) whose forget metric
    is a known function of lambda, with a forget-only shortcut and its batched form; it logs every lambda it
    measures, and how."""

    def __init__(self, param, forget):
        self.param, self.forget = param, forget
        self.single, self.batches, self.full = [], [], []

    def __call__(self):
        lam = self.param.item()
        self.full.append(lam)
        return {"forget_top5": self.forget(lam), "retain_top1": 1 / (1 + lam), "utility": 1 - lam / (50 + lam)}

    def forget_metrics(self):
        self.single.append(self.param.item())
        return {"forget_top5": self.forget(self.param.item())}

    def forget_many(self, weights):
        assert weights.shape[1:] == self.param.shape and self.param.item() == 0.0  # the original weights meanwhile
        lams = weights.reshape(len(weights)).tolist()
        self.batches.append(lams)
        return [{"forget_top5": self.forget(lam)} for lam in lams]


def _scalar():
    return torch.nn.Parameter(torch.zeros(1)), torch.ones(1)


FORGET = {
    "step at 5.3": lambda lam: 0.0 if lam >= 5.3 else 0.6,
    "never reached": lambda lam: 0.4,
    "reached at once": lambda lam: 0.0,
    # reached on [4, 6) and from 20 on, not between: doubling from 1 brackets [2, 4]; a batch of 4 also measures 8
    "non-monotone": lambda lam: 0.0 if 4 <= lam < 6 or lam >= 20 else 0.5,
}


@pytest.mark.parametrize("batch", [2, 4])
@pytest.mark.parametrize("name", list(FORGET))
def test_the_batched_search_returns_the_same_point_and_trace_as_the_sequential_one(name, batch):
    for max_evals in (1, 2, 3, 5, 8):
        for rtol in (0.0, 0.05):
            param, grad = _scalar()
            seq_ev, bat_ev = Batched(param, FORGET[name]), Batched(param, FORGET[name])
            kw = dict(lambda0=1.0, max_evals=max_evals, rtol=rtol, baseline={"forget_top5": 1.0, "retain_top1": 1.0,
                                                                              "utility": 1.0})
            seq = search_step_size(param, grad, seq_ev, evaluate_forget=seq_ev.forget_metrics, **kw)
            bat = search_step_size(param, grad, bat_ev, evaluate_forget=bat_ev.forget_metrics,
                                   evaluate_forget_many=bat_ev.forget_many, batch=batch, **kw)
            assert [s.lam for s in bat.trace] == [s.lam for s in seq.trace]
            assert [(s.step, s.metrics, s.reached, s.met) for s in bat.trace] == \
                [(s.step, s.metrics, s.reached, s.met) for s in seq.trace]
            assert (bat.status, bat.best_lambda, bat.best_metrics) == (seq.status, seq.best_lambda, seq.best_metrics)
            assert bat_ev.full == seq_ev.full  # the full evaluations: at the same reached steps
            assert seq.unused_lambdas == [] and param.item() == 0.0
            # every doubling step came from a batch of doubling points, none past max_evals; the rest were single
            measured = [lam for b in bat_ev.batches for lam in b]
            assert all(b == [b[0] * 2 ** i for i in range(len(b))] and len(b) <= batch for b in bat_ev.batches)
            assert len(measured) == len(set(measured)) and len(measured) <= max_evals
            first_reached = next((i for i, s in enumerate(seq.trace) if s.reached), len(seq.trace) - 1)
            doubling = [s.lam for s in seq.trace[:first_reached + 1]]
            assert measured[:len(doubling)] == doubling
            assert bat.unused_lambdas == measured[len(doubling):]
            assert all(lam > max(doubling) for lam in bat.unused_lambdas) and len(bat.unused_lambdas) < batch
            assert bat_ev.single == [s.lam for s in seq.trace[first_reached + 1:]]


def test_the_batched_search_on_a_non_monotone_fake_matches_the_sequential_one_on_many_seeds():
    for trial in range(30):
        for batch in (2, 4):
            param, grad = _setup(seed=trial)
            seq_ev, bat_ev = NonMonotone(param, grad, trial), NonMonotone(param, grad, trial)
            calls = []

            def many(weights):
                calls.append(len(weights))
                with torch.no_grad():
                    original = param.detach().clone()
                    out = []
                    for w in weights:  # the fake reads lambda from the parameter
                        param.copy_(w)
                        out.append(bat_ev.forget_metrics())
                    param.copy_(original)
                return out

            kw = dict(max_evals=8, rtol=0.05 if trial % 2 else 0.0)
            seq = search_step_size(param, grad, seq_ev, evaluate_forget=seq_ev.forget_metrics, **kw)
            bat = search_step_size(param, grad, bat_ev, baseline=seq.baseline, evaluate_forget=bat_ev.forget_metrics,
                                   evaluate_forget_many=many, batch=batch, **kw)
            assert [(s.lam, s.metrics, s.reached) for s in bat.trace] == [(s.lam, s.metrics, s.reached)
                                                                        for s in seq.trace]
            assert (bat.status, bat.best_lambda, bat.best_metrics) == (seq.status, seq.best_lambda, seq.best_metrics)
            assert calls and all(1 <= n <= batch for n in calls)


def test_batch_must_be_a_whole_number_of_at_least_one_and_needs_evaluate_forget():
    param, grad = _scalar()
    ev = Batched(param, FORGET["step at 5.3"])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="batch must be a whole number >= 1"):
            search_step_size(param, grad, ev, evaluate_forget=ev.forget_metrics, evaluate_forget_many=ev.forget_many,
                             batch=bad)
    with pytest.raises(ValueError, match="evaluate_forget_many needs evaluate_forget"):
        search_step_size(param, grad, ev, evaluate_forget_many=ev.forget_many, batch=2)

    def short(weights):
        return ev.forget_many(weights)[:-1]

    with pytest.raises(ValueError, match="returned 1 results for 2 step sizes"):
        search_step_size(param, grad, ev, evaluate_forget=ev.forget_metrics, evaluate_forget_many=short, batch=2,
                         lambda0=1.0)
    assert param.item() == 0.0

"""The paper-scale cost projection: its arithmetic and what its measurement times (fake clock, no timings)."""
import pytest
import torch

from slugkit.eval.projection import (PAPER_SCALE, PassTiming, ScaleInput, measure_pass_seconds, projection_summary,
                                     paper_scale_projection, project_costs, scale_table)
from tests.fakes import IMAGE_SIZE, FakeAdapter

SMALL = {"forget_pairs": ScaleInput(3, "test"), "retain_pairs": ScaleInput(7, "test"),
         "search_layers": ScaleInput(2, "test"), "evals_per_layer": ScaleInput(5, "test"),
         "eval_pictures": ScaleInput(11, "test"), "baseline_epochs": ScaleInput(4, "test")}
TIMING = PassTiming(fwd_bwd_seconds=0.5, fwd_seconds=0.125, batch_size=4, threads=1, repeats=2, model="fake")


def test_projection_multiplies_the_measured_seconds_by_each_methods_passes():
    table = project_costs(TIMING, SMALL)
    a, b = TIMING.fwd_bwd_seconds, TIMING.fwd_seconds
    expected = {  # forward+backward pairs x a + forward-only pictures x b
        "SLUG (cold)": (3 + 7) * a + 2 * 5 * 11 * b,
        "SLUG (warm retain gradient)": 3 * a + 2 * 5 * 11 * b,
        "GA": 4 * 3 * a,
        "FT": 4 * 7 * a,
        "GA+FT": 4 * (3 + 7) * a,
        "SalUn": 4 * (3 + 7) * a + 3 * a,  # + the forget gradient of its saliency mask
        "SSD": (3 + 7) * a,
    }
    assert list(table.index) == list(expected)
    for method, seconds in expected.items():
        assert table.loc[method, "seconds"] == pytest.approx(seconds)
        assert table.loc[method, "hours"] == pytest.approx(seconds / 3600)
    assert table.loc["SLUG (cold)", "fwd_pictures"] == 110 and table.loc["GA", "fwd_pictures"] == 0
    assert table.loc["GA+FT", "fwd_bwd_pairs"] == 40 and table.loc["GA+FT", "epochs"] == 4
    # every input is shown next to the result
    assert (table["fwd_bwd_s_per_pair"] == a).all() and (table["fwd_s_per_picture"] == b).all()
    assert (table["batch_size"] == 4).all() and (table["threads"] == 1).all()
    assert table["passes"].str.len().gt(0).all()


def test_projection_wants_every_input():
    with pytest.raises(ValueError, match="baseline_epochs"):
        project_costs(TIMING, {k: v for k, v in SMALL.items() if k != "baseline_epochs"})


def test_paper_scale_projection_measures_the_given_adapter_and_projects_that_timing():
    seen = {}

    def fake_measure(adapter, **kw):
        seen.update(adapter=adapter, kw=kw)
        return TIMING

    adapter = FakeAdapter()
    timing, table = paper_scale_projection(adapter, measure=fake_measure, batch_size=8)
    assert seen == {"adapter": adapter, "kw": {"batch_size": 8}} and timing is TIMING
    pairs = PAPER_SCALE["forget_pairs"].value + PAPER_SCALE["retain_pairs"].value
    assert table.loc["SSD", "seconds"] == pytest.approx(pairs * TIMING.fwd_bwd_seconds)


class FakeClock:
    """Each timed step lasts the next of ``durations`` seconds (the clock is read before and after)."""

    def __init__(self, durations):
        self.durations, self.t, self.running = list(durations), 0.0, False

    def __call__(self):
        if self.running:
            self.t += self.durations.pop(0)
        self.running = not self.running
        return self.t


def test_measurement_keeps_the_fastest_repeat_per_pair_and_backpropagates_only_when_asked():
    adapter = FakeAdapter()
    weight = adapter.model.vision.head.weight
    backward_calls = []
    weight.register_post_accumulate_grad_hook(lambda p: backward_calls.append(1))
    clock = FakeClock([0.8, 0.4, 0.2, 0.6])  # forward+backward repeats, then forward-only repeats
    timing = measure_pass_seconds(adapter, batch_size=4, repeats=2, image_size=IMAGE_SIZE, clock=clock)
    assert timing.fwd_bwd_seconds == pytest.approx(0.4 / 4)
    assert timing.fwd_seconds == pytest.approx(0.2 / 4)
    assert (timing.batch_size, timing.repeats, timing.threads) == (4, 2, torch.get_num_threads())
    assert len(backward_calls) == 3  # one warm-up + two timed forward+backward passes, none in forward-only
    assert clock.durations == []
    assert all(p.grad is None for p in adapter.model.parameters())  # gradients released


def test_measurement_rejects_a_batch_that_is_not_contrastive():
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        measure_pass_seconds(FakeAdapter(), batch_size=1, image_size=IMAGE_SIZE)


def test_scale_table_names_a_source_for_every_input_and_marks_assumptions():
    table = scale_table()
    assert list(table.index) == list(PAPER_SCALE)
    assert table["source"].str.len().gt(10).all()
    assumed = set(table.index[table["source"].str.startswith("assumption")])
    assert assumed == {"forget_pairs", "search_layers"}


def test_summary_states_the_tables_numbers():
    table = project_costs(TIMING, SMALL)
    text = projection_summary(TIMING, table)
    cold = table.loc["SLUG (cold)", "hours"]
    search_share = 110 * TIMING.fwd_seconds / 3600 / cold
    assert f"SLUG {cold:.3g} h" in text and f"{search_share:.0%} of it the step-size search" in text
    assert f"GA+FT {table.loc['GA+FT', 'hours']:.3g} h ({table.loc['GA+FT', 'hours'] / cold:.2g}x)" in text
    assert "0.5 s per pair forward+backward, 0.125 s per picture forward" in text

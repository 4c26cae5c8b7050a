"""The exercise checkers accept the reference answers and reject typical mistakes with a helpful message."""
import torch

from slugkit import exercises as ex


def test_layer_metrics_reference_passes():
    fb = ex.check_layer_metrics(ex.reference_layer_metrics)
    assert fb.passed and "match slugkit" in str(fb)


def _with(importance=None, alignment=None, pareto=None):
    def fn(g_f, g_r, theta):
        i, a, p = ex.reference_layer_metrics(g_f, g_r, theta)
        n = len(i)
        if importance == "norm only":
            i = [torch.linalg.norm(g).item() for g in g_f]
        if alignment == "signed":
            a = [torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0).item() for x, y in zip(g_f, g_r)]
        if pareto == "inverted":
            p = [not v for v in p]
        if pareto == "non-strict":
            p = [not any(k != j and i[k] >= i[j] and a[k] <= a[j] for k in range(n)) for j in range(n)]
        if pareto == "either":
            p = [not any(i[k] > i[j] or a[k] < a[j] for k in range(n)) for j in range(n)]
        return i, a, p
    return fn


def test_layer_metrics_mistakes_get_specific_messages():
    cases = {
        ("norm only", None, None): "divide by ‖θ‖",
        (None, "signed", None): "absolute cosine",
        (None, None, "inverted"): "inverted",
        (None, None, "non-strict"): "STRICTLY",
        (None, None, "either"): "BOTH",
    }
    for (imp, ali, par), phrase in cases.items():
        fb = ex.check_layer_metrics(_with(imp, ali, par))
        assert not fb.passed and phrase in str(fb), (imp, ali, par, str(fb))


def test_layer_metrics_reports_exceptions_and_shapes():
    fb = ex.check_layer_metrics(lambda g_f, g_r, theta: (1 / 0, 0, 0))
    assert not fb.passed and "ZeroDivisionError" in str(fb)
    fb = ex.check_layer_metrics(lambda g_f, g_r, theta: ([1.0], [1.0], [True]))
    assert not fb.passed and "one value per layer" in str(fb)


def test_binary_search_reference_passes_and_mistakes_are_explained():
    assert ex.check_binary_search(ex.reference_binary_search).passed

    def never_stops(f, lam0, max_evals, rtol):  # bisects but ignores rtol
        tried, lo, hi, lam = [], 0.0, None, lam0
        for _ in range(max_evals):
            tried.append(lam)
            if f(lam) <= 0:
                hi = lam
            else:
                lo = lam
            lam = 2 * lam if hi is None else (lo + hi) / 2
        return tried

    def halves_down(f, lam0, max_evals, rtol):  # moves lam instead of keeping a bracket
        tried, lam = [], lam0
        for _ in range(max_evals):
            tried.append(lam)
            lam = lam / 2 if f(lam) <= 0 else lam * 2
        return tried

    def starts_at_zero(f, lam0, max_evals, rtol):
        return [0.0] + ex.reference_binary_search(f, lam0, max_evals - 1, rtol)

    for fn, phrase in ((never_stops, "hi - lo <= rtol * hi"), (halves_down, "midpoint"),
                       (starts_at_zero, "start at λ0")):
        fb = ex.check_binary_search(fn)
        assert not fb.passed and phrase in str(fb), (fn.__name__, str(fb))

"""The exercise checkers accept the reference answers and reject typical mistakes with a message that says what is wrong."""
import torch

from slugkit import exercises as ex
from slugkit.exercises import solutions as sol


def test_layer_metrics_reference_passes():
    fb = ex.check_layer_metrics(sol.layer_metrics)
    assert fb.passed and "match slugkit" in str(fb)


def _with(importance=None, alignment=None, pareto=None):
    def fn(g_f, g_r, theta):
        i, a, p = sol.layer_metrics(g_f, g_r, theta)
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
    assert ex.check_binary_search(sol.binary_search).passed

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
        return [0.0] + sol.binary_search(f, lam0, max_evals - 1, rtol)

    for fn, phrase in ((never_stops, "hi - lo <= rtol * hi"), (halves_down, "midpoint"),
                       (starts_at_zero, "start at λ0")):
        fb = ex.check_binary_search(fn)
        assert not fb.passed and phrase in str(fb), (fn.__name__, str(fb))


# ------------------------------------------------------------------------------------------------ notebook 02
def _averaging(zero="each", combine="mean", keep="all"):
    """An average_gradients with one chosen mistake."""
    def fn(model, loss_fn, batches):
        sums, sizes = {}, []
        if zero == "once":
            model.zero_grad()
        for batch in batches:
            if zero == "each":
                model.zero_grad()
            loss_fn(model, batch).backward()
            sizes.append(len(batch[0]))
            for n, p in model.named_parameters():
                g = p.grad.detach().clone() * (len(batch[0]) if combine == "size" else 1)
                sums[n] = g if keep == "last" or n not in sums else sums[n] + g
        div = {"mean": len(batches), "sum": 1, "size": sum(sizes)}[combine]
        return {n: s / (1 if keep == "last" else div) for n, s in sums.items()}
    return fn


def at_the_end(model, loss_fn, batches):  # never zeroes; reads the summed .grad once
    for batch in batches:
        loss_fn(model, batch).backward()
    return {n: p.grad / len(batches) for n, p in model.named_parameters()}


def test_average_gradients_reference_passes_and_mistakes_are_explained():
    fb = ex.check_average_gradients(sol.average_gradients)
    assert fb.passed and "left over" in str(fb)
    cases = {
        _averaging(combine="sum"): "summed",
        _averaging(combine="size"): "weighted each batch by its size",
        _averaging(keep="last"): "only the last batch",
        _averaging(zero="once"): "zero it",            # p.grad adds up across batches
        _averaging(zero="never"): "zero it",
        at_the_end: "left over",                        # right on a fresh model, counts stale gradients
    }
    for fn, phrase in cases.items():
        fb = ex.check_average_gradients(fn)
        assert not fb.passed and phrase in str(fb), str(fb)

    def steps(model, loss_fn, batches):
        out = sol.average_gradients(model, loss_fn, batches)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= 0.1 * out[n]
        return out

    def drops_bias(model, loss_fn, batches):
        return {n: g for n, g in sol.average_gradients(model, loss_fn, batches).items() if "bias" not in n}

    assert "changed the weights" in str(ex.check_average_gradients(steps))
    assert "missing ['0.bias', '2.bias']" in str(ex.check_average_gradients(drops_bias))


# ------------------------------------------------------------------------------------------------ notebook 05
def _accuracy_with(mistake):
    def fn(scores, labels, concept):
        labels = torch.as_tensor(labels)
        order = scores.argsort(dim=1, descending=mistake != "ascending")[:, :5]
        hit1, hit5 = order[:, 0] == labels, (order == labels[:, None]).any(1)
        forget = labels == concept if mistake != "forget-all" else labels >= 0
        retain = {"with-concept": labels >= 0, "with-unlabelled": labels != concept}.get(
            mistake, (labels >= 0) & (labels != concept))
        out = [hit1[forget].float().mean().item(), hit5[forget].float().mean().item(), hit1[retain].float().mean().item()]
        if mistake == "top5-is-top1":
            out[1] = out[0]
        if mistake == "percent":
            out = [100 * v for v in out]
        if mistake == "order":
            out = out[::-1]
        return tuple(out)
    return fn


def test_forget_retain_accuracy_reference_passes_and_mistakes_are_explained():
    assert ex.check_forget_retain_accuracy(sol.forget_retain_accuracy).passed
    assert ex.check_forget_retain_accuracy(_accuracy_with(None)).passed  # the test's own correct variant
    cases = {"percent": "fractions", "forget-all": "pictures OF the concept", "ascending": "LOWEST",
             "top5-is-top1": "anywhere among the five", "with-concept": "OTHER classes",
             "with-unlabelled": "labelled -1", "order": "wrong order"}
    for mistake, phrase in cases.items():
        fb = ex.check_forget_retain_accuracy(_accuracy_with(mistake))
        assert not fb.passed and phrase in str(fb), (mistake, str(fb))


def test_forget_retain_accuracy_matches_slugkit_eval():
    """The checker's definitions are slugkit's: accuracy_from_embeddings on the same scores agrees."""
    import numpy as np

    from slugkit.eval.zeroshot import accuracy_from_embeddings
    from slugkit.exercises.evaluation import _accuracy_cases

    for case in _accuracy_cases():
        scores, labels, c = case["scores"], case["labels"], case["concept"]
        eye = torch.eye(scores.shape[1])  # image_emb @ eye.T == scores
        f = accuracy_from_embeddings(scores, eye, np.where(labels == c, labels, -1))
        r = accuracy_from_embeddings(scores, eye, np.where((labels >= 0) & (labels != c), labels, -1))
        assert np.allclose(sol.forget_retain_accuracy(scores, labels, c), (f["top1"], f["top5"], r["top1"]))


# ------------------------------------------------------------------------------------------------ notebook 06
def test_integrated_gradients_reference_passes_and_matches_captum():
    from captum.attr import IntegratedGradients

    assert ex.check_integrated_gradients(sol.integrated_gradients).passed
    x, base = torch.rand(1, 3, 5, 5, dtype=torch.float64), torch.rand(1, 3, 5, 5, dtype=torch.float64) * 0.1
    f = lambda t: torch.tanh(t * 2).pow(2).sum(dim=(1, 2, 3))  # noqa: E731
    theirs = IntegratedGradients(f).attribute(x, base, n_steps=16, method="riemann_middle")
    mine = sol.integrated_gradients(lambda t: f(t[None])[0], x[0], base[0], n_steps=16)
    assert torch.allclose(mine, theirs[0], rtol=1e-6)


def test_integrated_gradients_mistakes_are_explained():
    def path_mean(f, x, b, alphas):
        total = 0
        for a in alphas:
            p = (b + a * (x - b)).detach().requires_grad_(True)
            total = total + torch.autograd.grad(f(p), p)[0]
        return total / len(alphas)

    mid = lambda n: [(k + 0.5) / n for k in range(n)]  # noqa: E731
    mistakes = {
        "no (x - b)": (lambda f, x, b, n: path_mean(f, x, b, mid(n)), "multiply it by (x − baseline)"),
        "times x": (lambda f, x, b, n: path_mean(f, x, b, mid(n)) * x, "you multiplied by x"),
        "sum": (lambda f, x, b, n: path_mean(f, x, b, mid(n)) * n * (x - b), "average them"),
        "grad at x": (lambda f, x, b, n: path_mean(f, x, b, [1.0]) * (x - b), "only the gradient at x"),
        "linspace": (lambda f, x, b, n: path_mean(f, x, b, torch.linspace(0, 1, n).tolist()) * (x - b), "both ends"),
        "sign": (lambda f, x, b, n: path_mean(f, x, b, mid(n)) * (b - x), "sign is flipped"),
        "noise": (lambda f, x, b, n: path_mean(f, x, b, mid(n)) * (x - b) + 0.01, "completeness"),
    }
    for name, (fn, phrase) in mistakes.items():
        fb = ex.check_integrated_gradients(fn)
        assert not fb.passed and phrase in str(fb), (name, str(fb))
    assert "shape" in str(ex.check_integrated_gradients(lambda f, x, b, n: x.flatten()))

"""The user-data evaluator resumes towers from the edited block and reuses what an edit cannot change;
its numbers, and the search's choices, are those of recomputing everything (tiny random CLIPs, image folder)."""
import numpy as np
import pytest
import torch

from slugkit.adapters.openclip import OpenCLIPAdapter
from slugkit.data.pairs import forget_retain_sets
from slugkit.data.sources import open_pairs
from slugkit.eval.names import NameEvaluator
from slugkit.eval.zeroshot import accuracy_from_embeddings
from slugkit.models.hf_convert import clip_tokenizer_from_openclip, save_hf
from slugkit.models.loading import load_clip
from slugkit.slug import unlearn
from slugkit.step_size_search import Target, apply_step
from slugkit.tasks import Task

from fakes import FACE_NAMES, make_faces_folder, tiny_hf, tiny_openclip

NAMES = FACE_NAMES + ["Glimmer Queen", "Bolt Barker", "Nova Finch", "Pip Marlow"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_faces_folder(tmp_path_factory.mktemp("faces"), NAMES)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-hf") / "model"
    save_hf(tiny_hf(), clip_tokenizer_from_openclip(16), path)
    return load_clip(f"hf:{path}")


class FullRecompute(NameEvaluator):
    """The evaluator as it was before caching: every call embeds every image, prompt and caption from
    scratch, and retrieval runs over all retain captions (the same metric when captions are distinct)."""

    def prepare(self, tower, block):
        pass

    @torch.no_grad()
    def __call__(self, edited_tower=None, block=None):
        a = self.adapter
        img = torch.cat([a.encode_image(p) for p in self._pixel_batches()])
        names = a.encode_text(a.tokenize([self.template.format(c) for c in self.classes]))
        caps = a.encode_text(a.tokenize(self.captions))
        n = np.arange(len(self.labels))
        f = accuracy_from_embeddings(img, names, np.where(n < self.n_forget, self.labels, -1))
        r = accuracy_from_embeddings(img, names, np.where(n >= self.n_forget, self.labels, -1))
        u = accuracy_from_embeddings(img[self.n_forget:], caps, np.arange(len(self.captions)), k=1)
        return {"forget_top1": f["top1"], "forget_top5": f["top5"], "retain_top1": r["top1"], "utility": u["top1"]}

    def forget_metrics(self, edited_tower=None, block=None):
        got = self(edited_tower, block)
        return {"forget_top1": got["forget_top1"], "forget_top5": got["forget_top5"]}

    def cache(self):
        return self

    def baseline(self):
        return self()


def evaluators(adapter, folder, batch_size=10):
    forget, retain = forget_retain_sets(open_pairs(folder), "Captain Zorp")
    return (NameEvaluator(adapter, forget, retain, "Captain Zorp", NAMES[1:], batch_size=batch_size),
            FullRecompute(adapter, forget, retain, "Captain Zorp", NAMES[1:], batch_size=batch_size), forget, retain)


class Calls:
    """Counts the adapter's whole-tower and resumed encodings."""

    def __init__(self, adapter, monkeypatch):
        self.n = {}
        for method in ("encode_image", "encode_text", "encode_image_from", "encode_text_from"):
            original = getattr(adapter, method)
            monkeypatch.setattr(adapter, method, self._counted(method, original))

    def _counted(self, method, original):
        def counted(*args, **kw):
            self.n[method] = self.n.get(method, 0) + 1
            return original(*args, **kw)
        return counted


@pytest.mark.parametrize("family", ["open_clip", "hf-clip"])
def test_resumed_evaluations_equal_full_recompute(family, folder, hf, monkeypatch):
    adapter = OpenCLIPAdapter(tiny_openclip(), name="tiny-openclip") if family == "open_clip" else hf
    fast, full, _, _ = evaluators(adapter, folder)
    assert fast.baseline() == pytest.approx(full(), abs=1e-5)
    g = torch.Generator().manual_seed(0)
    changed = 0
    for info in adapter.candidate_layers():
        fast.prepare(info.tower, info.block)  # unedited model
        p = adapter.parameter(info.name)
        for lam in (0.3, 3.0):
            with apply_step(p, torch.randn(p.shape, generator=g), lam):
                calls = Calls(adapter, monkeypatch)
                got = fast(edited_tower=info.tower, block=info.block)
                batches = (-(-fast.n_forget // 10) - (-(len(fast.images) - fast.n_forget) // 10)  # forget ones apart
                           if info.tower == "vision" else -(-len(fast.texts) // 10))
                assert calls.n == {"encode_image_from" if info.tower == "vision" else "encode_text_from": batches}, info
                monkeypatch.undo()
                calls = Calls(adapter, monkeypatch)
                forget = fast.forget_metrics(edited_tower=info.tower, block=info.block)
                # the edited tower runs on the forget pictures' batches, or on the batch holding the name prompts
                assert calls.n == ({"encode_image_from": -(-fast.n_forget // 10)} if info.tower == "vision"
                                   else {"encode_text_from": 1}), info
                monkeypatch.undo()
                want = full(edited_tower=info.tower, block=info.block)
            assert got == pytest.approx(want, abs=1e-5), (info.name, lam)
            assert forget == pytest.approx({k: want[k] for k in ("forget_top1", "forget_top5")}, abs=1e-5)
            changed += got != fast.baseline()
    assert changed >= len(adapter.candidate_layers())  # the edits moved the metrics: nothing stale was reused


def test_repeated_captions_count_once_in_retrieval(hf, tmp_path):
    root = tmp_path / "dupes"
    root.mkdir()
    make_faces_folder(root, NAMES)
    for txt in root.glob("*.txt"):  # every picture of a name now has the same caption
        txt.write_text(next(f"a photo of {name}." for name in NAMES if name in txt.read_text()))
    fast, _, _, retain = evaluators(hf, root)
    assert len(set(retain.captions())) == len(NAMES) - 1 < len(retain)
    with torch.no_grad():
        img = torch.cat([hf.encode_image(p) for p in fast._pixel_batches()])[fast.n_forget:]
        caps = hf.encode_text(hf.tokenize(retain.captions()))
    own = np.array(retain.captions())
    nearest = own[(img @ caps.T).argmax(1).numpy()]  # any copy of the own caption is the own caption
    assert fast.baseline()["utility"] == pytest.approx(float((nearest == own).mean()))


def test_search_chooses_what_full_recompute_chooses(hf, folder):
    fast, full, forget, retain = evaluators(hf, folder)
    runs = [unlearn(hf, "Captain Zorp", task=Task("Captain Zorp", forget, retain, ev, ev), max_evals=4,
                    target=Target("forget_top5"), progress=False) for ev in (fast, full)]
    got, want = runs
    assert [s.layer for s in got.searches] == [s.layer for s in want.searches]
    for a, b in zip(got.searches, want.searches):
        assert [s.lam for s in a.trace] == pytest.approx([s.lam for s in b.trace], rel=1e-9)
        for sa, sb in zip(a.trace, b.trace):
            assert sa.metrics == pytest.approx(sb.metrics, abs=1e-5)
    assert (got.layer, got.step_size, got.status) == (want.layer, want.step_size, want.status) and got.status == "ok"
    steps = [s for search in got.searches for s in search.trace]  # both kinds of step were taken:
    assert any(set(s.metrics) == {"forget_top1", "forget_top5"} for s in steps)  # forget pictures alone
    assert any("utility" in s.metrics for s in steps)  # a step that reached the target, measured whole
    assert got.before == pytest.approx(want.before, abs=1e-5) and got.after == pytest.approx(want.after, abs=1e-5)


class Counted(NameEvaluator):
    """The caching evaluator, counting its whole evaluations (after ``cache``)."""

    calls = 0

    def __call__(self, edited_tower=None, block=None):
        self.calls += 1
        return super().__call__(edited_tower, block)


def test_report_reuses_the_search_measurements(hf, folder):
    _, full, forget, retain = evaluators(hf, folder)
    ev = Counted(hf, forget, retain, "Captain Zorp", NAMES[1:], batch_size=10)
    got = unlearn(hf, "Captain Zorp", task=Task("Captain Zorp", forget, retain, ev, ev), max_evals=4,
                  target=Target("forget_top5"), progress=False)
    assert got.status == "ok"
    whole = sum("utility" in s.metrics for search in got.searches for s in search.trace)
    assert ev.calls == whole  # one whole evaluation per step that reached the target, none for the report
    # ... and what it reports is what measuring the patched model from scratch gives
    assert got.before == pytest.approx(full(), abs=1e-5)
    got.patch.apply(hf.model)
    try:
        assert got.after == pytest.approx(full(), abs=1e-5)
    finally:
        got.patch.revert(hf.model)
    assert got.after != got.before


def test_real_size_user_data_runs_default_to_cheapest_first(hf, folder, monkeypatch):
    import slugkit.slug as slug
    from slugkit.layer_identification import select_layers

    assert slug.default_policy(hf, folder) == "pareto" == slug.default_policy(hf)  # tiny model: the authors' search
    monkeypatch.setattr(slug, "REAL_SIZE_PARAMETERS", 1)  # as if the tiny CLIP were real-size
    assert slug.default_policy(hf, folder) == "cheapest-first" and slug.default_policy(hf) == "pareto"
    options = dict(data=folder, classes=NAMES[1:], max_evals=4, target=Target("forget_top5"), progress=False)
    cheap = unlearn(hf, "Captain Zorp", **options)
    authors = unlearn(hf, "Captain Zorp", policy="pareto", **options)
    assert (cheap.policy, authors.policy) == ("cheapest-first", "pareto")
    assert cheap.report()["policy"] == "cheapest-first"
    order = select_layers(cheap.table, "cheapest-first")
    tried = [s.layer for s in cheap.searches]
    assert tried == order[:len(tried)] and tried[0].startswith("text_model")  # text tower first, in that order
    assert [s.status for s in cheap.searches] == ["target-not-reached"] * (len(tried) - 1) + ["ok"]
    assert (cheap.layer, cheap.status) == (tried[-1], "ok")
    assert sorted(s.layer for s in authors.searches) == sorted(order)  # the authors' search tries every Pareto layer
    same = next(s for s in authors.searches if s.layer == cheap.layer)  # and measures that layer the same way
    assert [s.lam for s in same.trace] == [s.lam for s in cheap.chosen_search.trace]
    assert cheap.step_size == same.best_lambda

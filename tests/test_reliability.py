"""Fault injection: every case of issue 12 ("fail well and lose nothing"), on tiny fakes.

Each test names its case. The CLI is driven in-process; models are the tiny dual encoder of
tests/fakes.py unless the case is about loading weights.
"""
import hashlib
import io
import struct
import sys
import json
import os
import tarfile
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import slugkit.bounds as bounds
from fakes import FakeAdapter, make_batches, tiny_openclip
from slugkit.cli import build_parser, main
from slugkit.data.minicanvas import MiniCanvas, find_concept
from slugkit.data.pairs import InMemoryPairs
from slugkit.data.sources import open_pairs
from slugkit.fingerprint import model_fingerprint, tensor_digest
from slugkit.gradients import GradientStore, Gradients, compute_gradients
from slugkit.patch import Patch, PatchMismatchError, compose
from slugkit.slug import UnlearnResult, unlearn
from slugkit.step_size_search import Target
from slugkit.tasks import Evaluator, Task


# ----------------------------------------------------------------------------------------- helpers
def cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors (bad flag values) exit from parse_args
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_fails_well(code, err, *needles):
    """Exit 2, exactly one line on stderr, no traceback, and the line says what went wrong."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def loads(monkeypatch):
    """Record every model load the CLI attempts; the loaded model is the tiny fake."""
    calls = []

    def load_clip(name, *args, **kwargs):
        calls.append(name)
        return FakeAdapter()

    monkeypatch.setattr("slugkit.models.loading.load_clip", load_clip)
    return calls


def fake_result(adapter, status="ok", with_patch=True, concept="Zorp"):
    layer = adapter.candidate_layers()[0].name
    param = adapter.parameter(layer)
    patch = Patch.from_step(adapter.name, concept, layer, 0.5, torch.ones_like(param), model_fingerprint(adapter.model),
                            base_digest=tensor_digest(param)) if with_patch else None
    return UnlearnResult(
        model=adapter.name, concept=concept, task="fake", gradients=Gradients({}, {}), table=pd.DataFrame({"shape": []}),
        searches=[], layer=layer if patch else None, tower="vision" if patch else None,
        step_size=0.5 if patch else None, status=status, patch=patch, before={"forget_top1": 1.0},
        after={"forget_top1": 0.0 if patch else 1.0}, seconds=1.0, peak_rss_mb=1.0, model_bytes=10_000)


def pictures(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(n)]


class StepEvaluator(Evaluator):
    """Forget accuracy 1 on the unedited model and 0 once any weight moved; retain accuracy unmeasurable (NaN)."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.original = {k: v.clone() for k, v in adapter.model.state_dict().items()}

    def __call__(self, edited_tower=None, block=None):
        moved = any(not torch.equal(v, self.original[k]) for k, v in self.adapter.model.state_dict().items())
        return {"forget_top1": 0.0 if moved else 1.0, "forget_top5": 0.0 if moved else 1.0,
                "retain_top1": float("nan"), "utility": 0.67 if moved else 1.0}

    def why_unmeasured(self, metric):
        return "no retain picture's caption names exactly one of the classes" if metric == "retain_top1" else None


def fake_task(adapter):
    forget = InMemoryPairs(pictures(6, 1), [f"Zorp {i}" for i in range(6)])
    retain = InMemoryPairs(pictures(6, 2), [f"cube {i}" for i in range(6)])
    ev = StepEvaluator(adapter)
    return Task("Zorp", forget, retain, ev, ev, description="fake")


def fake_run(adapter=None):
    adapter = adapter or FakeAdapter()
    return unlearn(adapter, "Zorp", task=fake_task(adapter), policy="deepest", max_evals=3, progress=False)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def write_shard(path, n=3):
    with tarfile.open(path, "w") as tf:
        for k in range(n):
            buf = io.BytesIO()
            Image.fromarray(pictures(1, k)[0]).save(buf, "PNG")
            for name, data in ((f"k{k}.png", buf.getvalue()), (f"k{k}.txt", f"Zorp number {k}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tf:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tf.getmembers()]


# ----------------------------------------------------------------- 1. a rerun into --out mixes runs
def test_1_rerun_into_a_previous_run_is_refused_before_any_work(tmp_path, capsys, loads, monkeypatch):
    monkeypatch.setattr("slugkit.slug.unlearn", lambda adapter, *a, **k: fake_result(adapter))
    out = tmp_path / "run"
    assert cli(capsys, "unlearn", "--model", "hf:fake", "--forget", "Zorp", "--out", out)[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"report.json", "patch.safetensors"} <= set(first)
    code, _, err = cli(capsys, "unlearn", "--model", "hf:fake", "--forget", "Zorp", "--out", out, "--max-evals", "1")
    assert_fails_well(code, err, "already holds files", "--overwrite")
    assert len(loads) == 1  # the second run stopped before loading anything
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_1_overwrite_replaces_the_whole_run(tmp_path, capsys, loads, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr("slugkit.slug.unlearn", lambda adapter, *a, **k: fake_result(adapter))
    assert cli(capsys, "unlearn", "--model", "hf:fake", "--forget", "Zorp", "--out", out)[0] == 0
    monkeypatch.setattr("slugkit.slug.unlearn",
                        lambda adapter, *a, **k: fake_result(adapter, "target-not-reached", with_patch=False))
    code, out_text, _ = cli(capsys, "unlearn", "--model", "hf:fake", "--forget", "Zorp", "--out", out, "--overwrite")
    assert code == 3
    assert not (out / "patch.safetensors").exists()  # the first run's patch went with its report
    assert json.loads((out / "report.json").read_text())["status"] == "target-not-reached"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


def test_1_an_interrupt_between_the_two_writes_keeps_the_previous_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fake_result(FakeAdapter()).save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(self, patch_bytes=None):  # patch.safetensors is written, report.json is next
        raise KeyboardInterrupt

    monkeypatch.setattr(UnlearnResult, "report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fake_result(FakeAdapter(seed=1), concept="Other").save(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_1_overwrite_never_wipes_a_folder_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a slugkit run"):
        fake_result(FakeAdapter()).save(tmp_path, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


# ----------------------------------------------------------------- 2. --out is checked only at the end
def test_2_out_that_is_a_file_fails_before_the_model_loads(tmp_path, capsys, loads):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", f)
    assert_fails_well(code, err, "is an existing file")
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", f / "sub")
    assert_fails_well(code, err, "is a file, not a folder")
    code, _, err = cli(capsys, "demo", "--out", f)
    assert_fails_well(code, err, "is an existing file")
    assert loads == []


def test_2_out_that_cannot_be_written_fails_before_the_model_loads(tmp_path, capsys, loads, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)  # as root, chmod cannot make a folder read-only
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", tmp_path / "run")
    assert_fails_well(code, err, "is not writable", "Permission denied")
    assert loads == []


# ----------------------------------------------------------------- 3. raw tracebacks
def test_3_truncated_tar_shard(tmp_path, capsys, loads):
    shard = tmp_path / "s.tar"
    members = write_shard(shard)
    data = shard.read_bytes()
    name, offset, offset_data, size = members[-2]  # the last picture
    cuts = {"inside data": offset_data + size // 2, "at a header": offset}
    for why, cut in cuts.items():
        bad = tmp_path / f"cut-{cut}.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="is truncated or corrupt"):
            open_pairs(bad)
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--data", bad, "--out", tmp_path / "run")
    assert_fails_well(code, err, "is truncated or corrupt", "download or copy it again")
    assert len(open_pairs(shard)) == 3  # the intact shard still reads


def test_3_corrupt_local_weights(tmp_path, capsys):
    from slugkit.models.loading import load_clip

    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a checkpoint " * 100)  # fixed bytes: random ones sometimes fail another way
    with pytest.raises(ValueError, match=r"cannot be read, it is corrupt .*UnpicklingError"):
        load_clip(f"openclip:toy-clip/{bad_pt}")
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(pictures(1)[0]).save(data / "a.png")
    (data / "a.txt").write_text("Zorp waves")
    code, _, err = cli(capsys, "unlearn", "--model", f"openclip:toy-clip/{bad_st}", "--forget", "Zorp",
                       "--data", data, "--out", tmp_path / "run")
    assert_fails_well(code, err, "cannot be read", "SafetensorError", "replace the file")


def test_3_nan_weights_are_named_before_any_gradient_work(capsys, monkeypatch):
    model = tiny_openclip()
    with torch.no_grad():
        model.transformer.resblocks[1].mlp.c_fc.weight[3, 2] = float("nan")
    monkeypatch.setattr("slugkit.models.toy_clip.load_toy_clip", lambda device="cpu", **kwargs: model)
    code, _, err = cli(capsys, "eval", "--model", "toy-clip")
    assert_fails_well(code, err, "layer 'transformer.resblocks.1.mlp.c_fc.weight'", "holds NaN values")

    adapter = FakeAdapter()
    with torch.no_grad():
        adapter.model.text.blocks[0].fc.weight[0, 0] = float("inf")

    def no_gradients(*args, **kwargs):
        raise AssertionError("gradients were computed on non-finite weights")

    monkeypatch.setattr("slugkit.slug.compute_gradients", no_gradients)
    with pytest.raises(ValueError, match=r"layer 'text.blocks.0.fc.weight' of model 'fake-0' holds infinite values"):
        unlearn(adapter, "Zorp", task=fake_task(adapter), progress=False)


def test_3_patch_load_on_a_folder(tmp_path, capsys):
    fake_result(FakeAdapter()).save(tmp_path / "run")
    with pytest.raises(ValueError, match="is a folder, not a patch file.*did you mean .*patch.safetensors"):
        Patch.load(tmp_path / "run")
    code, _, err = cli(capsys, "eval", "--patch", tmp_path / "run")
    assert_fails_well(code, err, "is a folder, not a patch file")
    with pytest.raises(ValueError, match="is a folder"):  # --debug shows the traceback instead
        main(["eval", "--patch", str(tmp_path / "run"), "--debug"])


# ----------------------------------------------------------------- 4. unbounded sizes and seeds
def test_4_sizes_are_bounded_by_memory(capsys, monkeypatch):
    code, _, err = cli(capsys, "eval", "--model", "toy-clip", "--n-test", "1000000000")
    assert_fails_well(code, err, "--n-test=1000000000 pictures would need", "available now", "32 KiB")
    monkeypatch.setattr(bounds, "available_memory", lambda: 2**30)  # 1 GiB free -> half of it / 32 KiB
    assert bounds.max_pictures() == 2**29 // (32 * 1024) == 16384
    assert bounds.check_pictures(16384) == 16384
    with pytest.raises(ValueError, match="n=16385 pictures would need"):
        MiniCanvas(n=16385, split="test")
    from slugkit.eval.zeroshot import toy_eval

    with pytest.raises(ValueError, match="n_test=100000 pictures"):
        toy_eval(None, n_test=100_000)


def test_4_seeds_batch_sizes_and_thresholds_are_bounded(capsys, loads):
    for bad in ("-1", "2147483648", "99999999999"):
        code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", "unused", "--seed", bad)
        assert_fails_well(code, err, "--seed", "0..2147483647")
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", "unused", "--batch-size", "1")
    assert_fails_well(code, err, "2..4096", "2 pairs per batch")
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", "unused", "--max-evals", "0")
    assert_fails_well(code, err, "--max-evals", "1..100")
    assert loads == []
    with pytest.raises(ValueError, match="seed must be an integer in 0..2147483647"):
        MiniCanvas(n=4, seed=-5)
    adapter = FakeAdapter()
    for kwargs, match in (({"seed": 2**40}, "seed"), ({"batch_size": 1}, "batch_size"), ({"max_evals": 0}, "max_evals"),
                          ({"rtol": 2.0}, "rtol"), ({"target": Target(threshold=1.5)}, "target threshold")):
        with pytest.raises(ValueError, match=match):
            unlearn(adapter, "Zorp", task=fake_task(adapter), progress=False, **kwargs)


# ----------------------------------------------------------------- 5. the gradient cache
def _grads():
    return Gradients({"a": torch.arange(6.0)}, {"a": torch.ones(6)}, meta={"model": "m"})


def test_5_an_interrupted_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    store = GradientStore(tmp_path)
    real_save = Gradients.save

    def save_then_interrupt(self, path):
        real_save(self, path)  # the whole entry is on disk under its temporary name ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setattr(Gradients, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.put("k" * 64, _grads())
    assert list(tmp_path.iterdir()) == []


def test_5_stale_temp_files_are_swept(tmp_path):
    dead = 99_999_999  # above any pid_max: no such process
    gone_new, gone_old = tmp_path / f".tmp-{dead}-a.safetensors", tmp_path / f".b.safetensors.{dead}.tmp"
    live, aged = tmp_path / f".tmp-{os.getppid()}-c.safetensors", tmp_path / f".tmp-{os.getppid()}-d.safetensors"
    entry = tmp_path / ("e" * 64 + ".safetensors")
    for f in (gone_new, gone_old, live, aged, entry):
        f.write_bytes(b"x" * 100)
    hours_ago = time.time() - 2 * 3600
    os.utime(aged, (hours_ago, hours_ago))
    GradientStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, entry.name])


def test_5_a_truncated_entry_is_discarded_and_recomputed(tmp_path):
    adapter = FakeAdapter()
    forget, retain = make_batches(2, 4, seed=1), make_batches(2, 4, seed=2)
    store = GradientStore(tmp_path)
    first = compute_gradients(adapter, forget, retain, store=store, progress=False)
    paths = sorted(tmp_path.glob("*.safetensors"))
    assert len(paths) == 2  # the forget and the retain gradient are stored apart
    path = next(p for p in paths if Gradients.load(p).forget)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=r"discarding unreadable gradient cache entry .*; recomputing it"):
        again = compute_gradients(adapter, forget, retain, store=store, progress=False)
    for name in first.forget:
        assert torch.equal(first.forget[name], again.forget[name])
    assert set(Gradients.load(path).layers) == set(first.layers)  # the entry is whole again


def test_5_the_cli_warning_is_one_line(capsys, monkeypatch):
    import warnings

    def warn_once(args):
        warnings.warn("discarding unreadable gradient cache entry x.safetensors (bad header); recomputing it",
                      RuntimeWarning)
        return 0

    monkeypatch.setattr("slugkit.cli.cmd_concepts", warn_once)
    code, _, err = cli(capsys, "concepts")
    assert code == 0 and err == ("slugkit: warning: discarding unreadable gradient cache entry x.safetensors "
                                 "(bad header); recomputing it\n")


# ----------------------------------------------------------------- 6. a small retain set
def test_6_a_one_pair_retain_set_is_explained(monkeypatch):
    adapter = FakeAdapter()
    pairs = InMemoryPairs(pictures(2), ["Zorp waves", "a red cube"])
    monkeypatch.setattr("slugkit.slug.compute_gradients", lambda *a, **k: pytest.fail("gradients computed"))
    with pytest.raises(ValueError, match=r"retain set has 1 pair .* needs at least 2 pairs in a batch"):
        unlearn(adapter, "Zorp", data=pairs, classes=["cube"], retain="per-concept", progress=False)


def test_6_one_forget_caption_still_gets_two_retain_pairs():
    from slugkit.data.pairs import forget_retain_sets

    pairs = InMemoryPairs(pictures(5), ["Zorp waves", "a red cube", "a cat", "a dog", "a tree"])
    forget, retain = forget_retain_sets(pairs, "Zorp")
    assert len(forget) == 1 and len(retain) == 4  # every pair that does not name Zorp (capped at RETAIN_PAIRS)


# ----------------------------------------------------------------- 7. "ok" with retain accuracy nan
def test_7_an_unmeasurable_retain_metric_makes_the_run_incomplete(tmp_path):
    result = fake_run()
    assert result.patch is not None and result.status == "incomplete"
    assert any("retain_top1 could not be measured before and after the edit (no retain picture" in w
               for w in result.warnings)
    assert "warning: retain_top1 could not be measured" in result.summary()
    assert "nan" not in result.summary()
    report = json.loads((result.save(tmp_path / "run") / "report.json").read_text())
    assert report["status"] == "incomplete" and report["retain_acc_after"] is None
    assert report["warnings"] == result.warnings


def test_7_lambda_ranking_ignores_an_unmeasurable_metric():
    target = Target()
    assert target.score({"retain_top1": float("nan"), "utility": 0.67}) == pytest.approx(0.67)
    assert target.score({"retain_top1": float("nan"), "utility": 1.0}) > target.score(
        {"retain_top1": float("nan"), "utility": 0.67})


# ----------------------------------------------------------------- 8. byte-reproducible patches
def test_8_identical_runs_give_identical_patch_files(tmp_path):
    a, b = fake_run(), fake_run()
    digests = {sha256(r.save(tmp_path / f"run{i}") / "patch.safetensors") for i, r in enumerate((a, b))}
    for k in range(6):  # the safetensors library orders its metadata map differently each time
        digests.add(sha256(a.patch.save(tmp_path / f"again{k}.safetensors")))
    assert len(digests) == 1
    with safe_open(str(tmp_path / "again0.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "slugkit.patch"
        assert torch.equal(f.get_tensor(a.layer), a.patch.deltas[a.layer])
    data = open(tmp_path / "again0.safetensors", "rb").read()
    header = data[8:8 + struct.unpack("<Q", data[:8])[0]]
    assert header.index(b'"format"') < header.index(b'"meta"') < header.index(b'"version"')


# ----------------------------------------------------------------- 9. the smaller ones
def test_9_every_flag_has_help_a_new_user_can_act_on():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{cmd} {opt.option_strings}" for cmd, p in sub.choices.items() for opt in p._actions
               if opt.option_strings and not opt.help]
    assert missing == []
    unlearn_help = sub.choices["unlearn"].format_help()
    for needle in ("openclip:ARCH/TAG", "hf:REPO", "toy-clip", "0..2147483647", "--max-evals N", "--cache-dir DIR"):
        assert needle in unlearn_help
    eval_help = sub.choices["eval"].format_help()
    assert "--patch FILE" in eval_help and "patch file written by `slugkit unlearn`" in eval_help
    assert "32 KiB per" in eval_help.replace("\n", " ").replace("  ", " ")


def test_9_the_offline_message_names_a_flag_that_exists(monkeypatch):
    import slugkit.models.loading as loading

    text = open(loading.__file__).read()
    assert "cache_dir=...)" not in text and text.count("--cache-dir DIR") == 3
    args = build_parser().parse_args(["unlearn", "--forget", "Zorp", "--out", "x", "--cache-dir", "/weights"])
    assert args.cache_dir == "/weights"


def test_9_classes_with_a_toy_model_is_an_error(capsys, loads):
    code, _, err = cli(capsys, "unlearn", "--forget", "Captain Zorp", "--classes", "Mira Quell", "--out", "unused")
    assert_fails_well(code, err, "--classes only applies with --data")
    assert loads == []


def test_9_an_unsampled_in_place_edit_is_caught_on_apply():
    adapter = FakeAdapter(width=256)  # 512 x 256 MLP weights: the fingerprint samples every other element
    layer = "vision.blocks.1.fc.weight"
    param = adapter.parameter(layer)
    patch = Patch.from_step(adapter.name, "Zorp", layer, 0.1, torch.ones_like(param), model_fingerprint(adapter.model),
                            base_digest=tensor_digest(param))
    fp = model_fingerprint(adapter.model)
    with torch.no_grad():
        param.view(-1)[1] += 1.0
    assert model_fingerprint(adapter.model) == fp  # the sample cannot see it ...
    before = param.detach().clone()
    with pytest.raises(PatchMismatchError, match="its full hash differs"):
        patch.apply(adapter.model)  # ... the full hash of the edited layer does
    assert torch.equal(param, before)
    assert fake_run().patch.base_digests  # patches made by unlearn carry the full hash


def test_9_non_finite_deltas_are_refused(tmp_path):
    adapter = FakeAdapter()
    layer = adapter.candidate_layers()[0].name
    bad = torch.ones_like(adapter.parameter(layer))
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"patch delta for layer '{layer}' holds NaN values"):
        Patch.from_step(adapter.name, "Zorp", layer, 1.0, bad, model_fingerprint(adapter.model))
    good = Patch.from_step(adapter.name, "Zorp", layer, 1.0, torch.ones_like(bad), model_fingerprint(adapter.model))
    path = good.save(tmp_path / "p.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors[layer][1, 1] = float("inf")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="refusing patch .* holds infinite values"):
        Patch.load(path)
    state = adapter.parameter(layer).detach().clone()
    good.deltas[layer][2, 2] = float("nan")  # edited after construction
    with pytest.raises(ValueError, match="holds NaN values"):
        good.apply(adapter.model)
    assert torch.equal(adapter.parameter(layer), state)


def test_9_compose_records_every_lambda(tmp_path):
    p = fake_result(FakeAdapter()).patch
    both = compose([p, p])
    assert sorted(both.step_sizes.values()) == [0.5, 0.5] and len(both.step_sizes) == 2
    assert both.concept == ["Zorp", "Zorp"]
    assert torch.equal(both.deltas[p.layers[0]], 2 * p.deltas[p.layers[0]])
    assert Patch.load(both.save(tmp_path / "pp.safetensors")).step_sizes == both.step_sizes


def test_9_names_ignore_runs_of_whitespace():
    assert find_concept("Captain  Zorp")["name"] == "Captain Zorp"
    assert find_concept("  captain\tzorp ")["name"] == "Captain Zorp"


def test_interrupt_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("slugkit.models.loading.load_clip", interrupted)
    code, _, err = cli(capsys, "unlearn", "--model", "hf:fake", "--forget", "Zorp", "--out", tmp_path / "run")
    assert code == 130 and err.strip().splitlines() == [
        "slugkit unlearn: interrupted; output folders were left as they were"]


def test_every_user_mistake_is_exit_2_not_1(capsys):
    code, _, err = cli(capsys, "concepts", "--model", "hf:openai/clip-vit-base-patch32")
    assert_fails_well(code, err, "has no built-in concept list")
    code, _, err = cli(capsys, "unlearn", "--forget", "Zorp", "--out", "x", "--no-such-flag")
    assert_fails_well(code, err, "unrecognized arguments: --no-such-flag", "see `slugkit --help`")


def test_2_demo_writes_its_folder_at_once(tmp_path, capsys, loads, monkeypatch):
    monkeypatch.setattr("slugkit.eval.zeroshot.toy_eval",
                        lambda adapter, **k: {"identity": {"top1": 1.0, "top5": 1.0, "per_concept": {"A": 1.0}}})
    monkeypatch.setattr("slugkit.slug.unlearn", lambda adapter, *a, **k: fake_result(adapter))
    figures = types.ModuleType("slugkit.viz.figures")  # no matplotlib: this test is about the folder
    figures.sample_sheet = lambda world: types.SimpleNamespace(savefig=lambda path, **kw: open(path, "wb").close())
    monkeypatch.setitem(sys.modules, "slugkit.viz.figures", figures)
    out = tmp_path / "demo"
    assert cli(capsys, "demo", "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [".slugkit-run", "sample_sheet.png", "unlearn"]
    assert (out / "unlearn" / "patch.safetensors").is_file()
    code, _, err = cli(capsys, "demo", "--out", out)
    assert_fails_well(code, err, "already holds files (e.g. 'sample_sheet.png')")
    assert cli(capsys, "demo", "--out", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

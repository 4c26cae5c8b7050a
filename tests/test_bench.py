"""`slugkit bench` on a tiny configuration writes its three outputs; the multi-concept task is a union."""
import json

import pandas as pd

from slugkit.bench import claim_checks, load_bench, markdown_report, toy_multi_task
from slugkit.cli import main
from slugkit.data.pairs import mentions
from slugkit.models.loading import load_clip

ROW_KEYS = {"method", "concept", "forget_top1", "forget_top5", "retain", "utility", "mia", "ua", "ira", "cra",
            "unlearn_seconds", "peak_rss_mb", "changed_bytes", "model_bytes", "target", "status"}


def test_bench_cli_writes_json_markdown_and_figure(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--model", "toy-clip", "--concepts", "Stripes", "--methods", "slug", "ga", "--multi",
                 "--slug-policy", "deepest", "--max-steps", "2", "--eval-every", "1", "--mia-pictures", "10",
                 "--n-test", "600", "--quiet", "--out", str(out)])
    assert code == 0
    rows, config = load_bench(out)
    assert list(rows["method"]) == ["Original", "SLUG", "GA"] and set(rows["concept"]) == {"Stripes"}
    assert ROW_KEYS <= set(rows.columns)
    assert config["command"].startswith("slugkit bench --model toy-clip --concepts Stripes")
    orig, slug, ga = (rows.iloc[i] for i in range(3))
    assert orig["changed_bytes"] == 0 and orig["forget_top5"] > 0.5 and orig["ua"] < 0.5
    for r in (slug, ga):
        assert r["status"] in ("ok", "target-not-reached") and r["unlearn_seconds"] > 0 and r["peak_rss_mb"] > 0
        assert 0 <= r["forget_top5"] <= 1 and 0 <= r["ua"] <= 1 and 0.3 <= r["mia"] <= 1
    assert slug["backward_passes"] >= 2 and slug["changed_bytes"] <= 0.02 * slug["model_bytes"]
    # warm: the same run with the per-model retain gradient already computed (16 of its 18 backward passes)
    assert 0 < slug["unlearn_seconds_warm"] < slug["unlearn_seconds"] and pd.isna(ga["unlearn_seconds_warm"])
    if slug["status"] == "ok":
        assert slug["ua"] > orig["ua"]  # the style is no longer recognised as often
    # GA never met the target in 2 steps: both grid points ran to the end, and it moved much of the model
    assert ga["status"] == "target-not-reached" and ga["backward_passes"] == 4
    assert ga["changed_bytes"] > 0.2 * ga["model_bytes"] and ga["detail"]["evaluations"] == 4
    md = (out / "bench.md").read_text()
    assert "## Styles and objects" in md and "| SLUG |" in md and "SLUG changes at most" in md
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_markdown_and_checks_flag_a_failed_claim():
    base = dict(kind="character", seed=0, forget_top1=0.0, forget_top5=0.0, retain=0.9, mia=0.5, mia_std=0.01,
                ua=None, ira=None, cra=None, peak_rss_mb=900.0, rss_increase_mb=10.0, backward_passes=1,
                model_bytes=1000)
    rows = [dict(base, method="Original", method_key="original", concept="A", status="unedited", utility=0.9,
                 unlearn_seconds=0.0, changed_bytes=0, changed_pct=0.0, forget_top1=1.0, forget_top5=1.0),
            dict(base, method="SLUG", method_key="slug", concept="A", status="ok", utility=0.85, unlearn_seconds=5.0,
                 changed_bytes=10, changed_pct=1.0),
            dict(base, method="GA+FT", method_key="gaft", concept="A", status="ok", utility=0.88,
                 unlearn_seconds=20.0, changed_bytes=1000, changed_pct=100.0)]
    checks = claim_checks(pd.DataFrame(rows))
    assert checks[0].startswith("HOLDS: SLUG meets the target on 1/1")
    assert any(c.startswith("FAILS: SLUG's utility drop 5.0 pts is within 2 points of GA+FT's 2.0") for c in checks)
    assert any(c.startswith("FAILS: GA+FT takes 4.0x SLUG's unlearning time (20.0 s vs 5.0 s") for c in checks)
    md = markdown_report(pd.DataFrame(rows), {"command": "slugkit bench", "target": "forget_top5"})
    assert "| SLUG | 1/1 | 0.0 | 0.0 | 90.0 | 85.0 | 5.0 |" in md


def test_multi_concept_task_unites_the_forget_sets():
    adapter = load_clip("toy-clip")
    names = ["Captain Zorp", "Mira Quell", "Rex Calloway"]
    task = toy_multi_task(adapter, names, n_test=600)
    captions = task.forget.captions()
    assert task.concept == names
    for n in names:
        assert any(mentions(c, n) for c in captions)
    assert all(any(mentions(c, n) for n in names) for c in captions)
    assert not any(mentions(c, n) for c in task.retain.captions() for n in names)
    m = task.search_evaluator.cache().baseline()
    assert m["forget_top5"] > 0.9 and json.dumps(task.description)

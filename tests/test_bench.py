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
                 "--slug-policy", "deepest", "--max-steps", "2", "--eval-every", "1", "--match", "ga", "--match-budget",
                 "4", "--mia-pictures", "10",
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
    assert 0 < slug["unlearn_cpu_seconds_warm"] < slug["unlearn_cpu_seconds"]
    if slug["status"] == "ok":
        assert slug["ua"] > orig["ua"]  # the style is no longer recognised as often
    # GA never met the target in 2 steps: both grid points ran to the end, and it moved much of the model
    assert ga["status"] == "target-not-reached" and ga["backward_passes"] == 4
    assert ga["changed_bytes"] > 0.2 * ga["model_bytes"] and ga["detail"]["evaluations"] == 4
    # GA's match run: the same 2 steps per learning rate cannot reach SLUG's forget target, so not matched
    assert pd.isna(slug["matched"]) and set(slug["detail"]["search_metrics"]) >= {"forget_top5", "retain_top1", "utility"}
    assert ga["matched"] is False and pd.isna(ga["match_seconds"]) and ga["match_steps"] == ga["match_budget"] == 4
    assert "--match ga --match-budget 4" in config["command"]
    md = (out / "bench.md").read_text()
    assert "## Cost at equal quality" in md and "GA on Stripes (seed 0): not matched in 4 steps" in md
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


def _equal_quality_rows(gaft_match_seconds):
    base = dict(kind="character", concept="A", seed=0, forget_top1=0.0, forget_top5=0.0, retain=0.9, utility=0.88,
                mia=0.5, mia_std=0.01, ua=None, ira=None, cra=None, peak_rss_mb=900.0, rss_increase_mb=10.0,
                backward_passes=1, model_bytes=1000, changed_bytes=10, changed_pct=1.0, status="ok",
                unlearn_seconds_warm=None, matched=None, match_seconds=None, match_steps=None, match_budget=None,
                detail={})
    return pd.DataFrame([
        dict(base, method="Original", method_key="original", status="unedited", unlearn_seconds=0.0),
        dict(base, method="SLUG", method_key="slug", unlearn_seconds=5.0, unlearn_seconds_warm=1.0,
             unlearn_cpu_seconds=4.0, unlearn_cpu_seconds_warm=0.8,
             detail={"search_metrics": {"retain_top1": 1.0, "utility": 0.995}}),
        dict(base, method="GA+FT", method_key="gaft", unlearn_seconds=4.0, matched=True,
             match_seconds=gaft_match_seconds, match_steps=40, match_budget=120, match_cpu_seconds=15.0,
             detail={"match": {"search_metrics": {"retain_top1": 0.992, "utility": 0.99},
                               "test_metrics": {"retain_top1": 0.85, "utility": 0.97}}}),
        dict(base, method="SalUn", method_key="salun", unlearn_seconds=4.0, matched=False, match_steps=120,
             match_budget=120)])


def test_equal_quality_section_and_check():
    rows = _equal_quality_rows(gaft_match_seconds=20.0)
    md = markdown_report(rows, {"command": "slugkit bench", "target": "forget_top5"})
    assert ("| A | 0 | 5.0 | 1.0 | 100.0 / 99.5; 90.0 / 88.0 | GA+FT | 20.0 | 40 | 99.2 / 99.0; 85.0 / 97.0 | 20.0x "
            "| 4.0x | 4.0, 0.8, 15.0 |") in md
    assert ("| A | 0 | 5.0 | 1.0 | 100.0 / 99.5; 90.0 / 88.0 | SalUn | not matched in 120 steps | 120 | –; – | – | – "
            "| 4.0, 0.8, – |") in md
    assert "SalUn on A (seed 0): not matched in 120 steps (budget 120 optimiser steps" in md
    assert "| GA+FT | A | 0 | ok |" in md and "| 20.0 (40 steps) |" in md
    checks = claim_checks(rows)
    assert any(c.startswith("HOLDS: at equal quality SLUG warm is >= 10x and cold >= 3x faster than GA+FT's")
               and "20.0x warm, 4.0x cold" in c for c in checks)
    assert any(c.startswith("HOLDS: at equal quality") and "SalUn's" in c and "A: not matched in 120 steps" in c
               for c in checks)
    # 8 s to match: only 8x SLUG's warm time (and 1.6x its cold time), so the claim fails
    checks = claim_checks(_equal_quality_rows(gaft_match_seconds=8.0))
    assert any(c.startswith("FAILS: at equal quality") and "GA+FT's" in c and "8.0x warm, 1.6x cold" in c
               for c in checks)
    # no match run at all: no section, no check
    none = _equal_quality_rows(20.0).assign(matched=None)
    assert "Cost at equal quality" not in markdown_report(none, {"command": "x", "target": "forget_top5"})
    assert not any("equal quality" in c for c in claim_checks(none))

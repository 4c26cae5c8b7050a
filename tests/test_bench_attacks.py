"""`slugkit bench --attacks` on a tiny budget: every character row gains the attack columns and a worst case."""
import pandas as pd

from slugkit.attacks import ATTACKS
from slugkit.bench import load_bench
from slugkit.cli import main


def test_bench_attacks_add_columns_and_the_reference_row(tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "--model", "toy-clip", "--concepts", "Captain Zorp", "--methods", "slug", "ga",
                 "--multi", "--match", "--slug-policy", "deepest", "--max-steps", "2", "--eval-every", "1",
                 "--mia-pictures", "10", "--n-test", "600", "--attacks", "--attack-budget", "quick", "--threads", "1",
                 "--quiet", "--out", str(out)])
    assert code == 0
    rows, config = load_bench(out)
    zorp = rows[rows["concept"] == "Captain Zorp"].set_index("method_key")
    # the shipped model retrained without Captain Zorp gets its own row, right after the original
    assert list(zorp.index) == ["original", "reference", "slug", "ga"]
    assert zorp.loc["reference", "status"] == "retrained" and zorp.loc["reference", "changed_pct"] > 30
    assert zorp.loc["reference", "forget_top1"] <= 0.2 and zorp.loc["original", "forget_top1"] >= 0.9
    assert 0.3 <= zorp.loc["reference", "mia"] <= 1
    for key, r in zorp.iterrows():
        scores = [r[f"attack_{n}"] for n in ATTACKS]
        assert all(0.0 <= x <= 1.0 for x in scores), (key, scores)
        assert r["attack_worst_kind"] == "recovery" and r["attack_budget"] == "quick"
        assert r["attack_budgets"]["pixel_pgd"]["steps"] == 3  # the quick budgets, recorded in the row
        assert r["detail"]["attacks"]["reference_model"] == "toy-clip-without:Captain Zorp"
        assert r["attack_worst"] is None or 0.0 <= r["attack_worst"] <= 1.0
    # the original is fully attacked by definition (recovery 1 wherever readable), the reference not at all
    orig, ref = zorp.loc["original"], zorp.loc["reference"]
    assert orig["attack_worst"] == 1.0 and ref["attack_worst"] == 0.0
    assert orig["attack_soft_prompt"] >= 0.9  # the sanity check: the attack finds the concept on the original
    ga = zorp.loc["ga"]
    worst = max(v["recovery"] for n, v in ga["detail"]["attacks"].items()
                if n in ATTACKS and v["recovery"] is not None)
    assert ga["attack_worst"] == worst and ga["detail"]["attacks"][ga["attack_worst_attack"]]["recovery"] == worst
    md = (out / "bench.md").read_text()
    assert "## Recovery attacks (characters)" in md and "| Reference (never saw it) | Captain Zorp | 0 |" in md
    assert "pixel_pgd (eps 0.01568627450980392, steps 3" in md
    assert "--attacks --attack-budget quick" in config["command"]
    import json

    total = json.loads((out / "bench.json").read_text())["attack_seconds"]
    assert total["wall"] >= sum(zorp["attack_seconds"]) > 0 and total["cpu"] >= sum(zorp["attack_cpu_seconds"]) > 0


def test_bench_worst_case_without_a_reference_is_the_highest_score(tmp_path):
    """Mira Quell has no shipped reference: the worst case is the highest score after an attack, the probe aside;
    a style is not attacked."""
    out = tmp_path / "bench"
    assert main(["bench", "--concepts", "Mira Quell", "Stripes", "--methods", "ga", "--multi", "--match", "--max-steps", "1",
                 "--eval-every", "1", "--mia-pictures", "10", "--n-test", "600", "--attacks", "--attack-budget",
                 "quick", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    rows, _ = load_bench(out)
    stripes = rows[rows["concept"] == "Stripes"]
    assert len(stripes) == 2 and stripes["attack_worst"].isna().all() and stripes["attack_worst_kind"].isna().all()
    rows = rows[rows["concept"] == "Mira Quell"]
    assert list(rows["method_key"]) == ["original", "ga"]
    for _, r in rows.iterrows():
        scores = {n: r[f"attack_{n}"] for n in ATTACKS if n != "linear_probe"}
        assert r["attack_worst_kind"] == "score" and r["attack_worst"] == max(scores.values())
        assert r["attack_worst_attack"] != "linear_probe" and pd.isna(r["detail"]["attacks"]["relearn"]["recovery"])
    assert rows.iloc[0]["attack_worst"] >= 0.9  # the original names Mira Quell under its worst attack


def test_robustness_table_merges_runs_and_rewrites_only_its_section(tmp_path):
    """scripts/robustness_table.py on the shipped Captain Zorp run and a second run (a copy relabelled Mira Quell,
    no reference row): one merged bench.json whose attack time is the runs' sum, and the doc's marked section
    rewritten from the rows, the text around it kept."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    zorp = json.loads((root / "data/bench/attacks-bench/bench.json").read_text())
    mira = {**zorp, "attack_seconds": {"wall": 10.0, "cpu": 5.0},
            "config": {**zorp["config"], "command": zorp["config"]["command"].replace("Captain Zorp", "Mira Quell")},
            "rows": [{**r, "concept": "Mira Quell", "attack_worst_kind": "score"} for r in zorp["rows"]
                     if r["method_key"] != "reference"]}
    (tmp_path / "mira").mkdir()
    (tmp_path / "mira" / "bench.json").write_text(json.dumps(mira))
    doc = tmp_path / "page.md"
    doc.write_text("before\n<!-- BEGIN robustness_table.py -->\nstale\n<!-- END robustness_table.py -->\nafter\n")
    script = [sys.executable, str(root / "scripts" / "robustness_table.py"), str(root / "data/bench/attacks-bench"),
              str(tmp_path / "mira"), "--out", str(tmp_path / "merged"), "--doc", str(doc)]
    env = {**os.environ, "PYTHONPATH": str(root)}  # the checkout's slugkit, installed or not
    done = subprocess.run(script, capture_output=True, text=True, cwd=root, env=env)
    assert done.returncode == 0, done.stderr
    merged = json.loads((tmp_path / "merged" / "bench.json").read_text())
    assert len(merged["rows"]) == len(zorp["rows"]) + len(mira["rows"])
    assert merged["attack_seconds"]["cpu"] == round(zorp["attack_seconds"]["cpu"] + 5.0, 2)
    page = doc.read_text()
    assert page.startswith("before\n") and page.endswith("\nafter\n") and "stale" not in page
    slug = next(r for r in zorp["rows"] if r["method_key"] == "slug")
    cell = f"recovery {slug['attack_worst']:.2f} ({slug['attack_worst_attack']})"
    assert "| SLUG | Captain Zorp | 0 | 0.00 |" in page and f"| SLUG | {cell} | score " in page
    assert "| Reference (never saw it) | recovery 0.00 | no reference |" in page
    assert f"{slug['attack_seconds']:.1f} / {slug['attack_cpu_seconds']:.1f} |" in page  # wall / CPU s
    assert "Mira Quell" in (tmp_path / "merged" / "bench.md").read_text()
    doc.write_text("no markers\n")
    done = subprocess.run(script, capture_output=True, text=True, cwd=root, env=env)
    assert done.returncode != 0 and "has no section marked" in done.stderr and doc.read_text() == "no markers\n"

"""bench.readme: a run's tables and verdict written into the README between its markers, nothing else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import readme

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "docs" / "results" / "quick" / "results.json"


def test_the_block_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\n\nbefore\n{readme.BEGIN}\nold\n{readme.END}\nafter\n")
    readme.write_block(doc, "new")
    assert doc.read_text() == f"# Title\n\nbefore\n{readme.BEGIN}\nnew\n{readme.END}\nafter\n"
    readme.write_block(doc, "newer")  # again: still one block
    assert doc.read_text().count(readme.BEGIN) == 1 and "newer" in doc.read_text()


@pytest.mark.parametrize(
    "text",
    ["no markers\n", f"{readme.END}\n{readme.BEGIN}\n", f"{readme.BEGIN}\n{readme.END}\n{readme.BEGIN}\n"],
    ids=["missing", "out of order", "twice"],
)
def test_a_readme_without_one_pair_of_markers_is_left_untouched(tmp_path: Path, text: str) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(text)
    with pytest.raises(ValueError, match="expected one line"):
        readme.write_block(doc, "x")
    assert doc.read_text() == text


def test_cli_writes_the_reported_runs_tables_and_verdict(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n\n{readme.BEGIN}\n{readme.END}\n\noutro\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.readme", str(REPORTED), str(doc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\noutro\n")
    results = json.loads(REPORTED.read_text())
    pct = results["summary"]["arms"]["full"]["pct_of_full"][0]
    assert (
        f"**Headline: the full method reaches {pct:.1f} ± " in text
    )  # the run's own figure, not a typed one
    assert "| LSM + correction (full method) |" in text and "Paired per-seed differences" in text
    assert "targets met." in text and results["meta"]["command"] in text


def test_cli_leaves_the_readme_as_it_was_on_bad_input(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text("no markers\n")
    bad = tmp_path / "results.json"
    bad.write_text("[]")
    for args, message in (
        ([str(REPORTED), str(doc)], "expected one line"),
        ([str(bad), str(doc)], "finished"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.readme", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and message in proc.stderr
        assert doc.read_text() == "no markers\n"


def test_the_readmes_blocks_are_what_the_committed_results_give() -> None:
    """A hand edit of a generated block, or a results.json changed without rewriting it, fails.

    Each block names the results it was generated from in its first line. Every block must be there: each is
    written by a publishing target of the Makefile at the end of a run of hours, and a README without that
    block's markers would fail the run at its last step.
    """
    text = (REPO / "README.md").read_text()
    checked = []
    for block in readme.BLOCKS:
        written = readme.written_block(text, block)
        if written is None:
            continue
        if block == "overview":
            named = re.search(r"python -m bench\.readme --block overview (.+?) README\.md`", written)
            assert named, "the overview block does not name its results.json files"
            paths = named[1].split()
            expected = readme.overview_block([(p, json.loads((REPO / p).read_text())) for p in paths])
            assert written == expected, (
                f"run: make readme-overview (python -m bench.readme --block overview {named[1]} README.md)"
            )
            published = sorted(
                str(p.relative_to(REPO)) for p in (REPO / "docs" / "results").glob("*/results.json")
            )
            assert sorted(paths) == published, (
                "the overview must list every published run: make readme-overview"
            )
            checked.append(block)
            continue
        source = re.search(r"python -m bench\.readme (?:--block [\w-]+ )?(\S+)`", written)
        assert source, f"the {block} block does not name its results.json"
        expected = readme.render(json.loads((REPO / source[1]).read_text()), source[1], block)
        flag = "" if block == "results" else f"--block {block} "
        assert written == expected, f"run: python -m bench.readme {flag}{source[1]} README.md"
        checked.append(block)
    missing = sorted(set(readme.BLOCKS) - set(checked))
    assert not missing, f"the README lacks the markers of block(s) {missing}"


def test_the_heldout_block_shows_each_seed_as_its_runs_give_it() -> None:
    results = json.loads(REPORTED.read_text())
    text = readme.seed_block(results, "r.json", "heldout")
    runs = results["runs"]
    rows = [line for line in text.splitlines() if re.match(r"\| (\d+|mean) \|", line)]
    assert [row.split(" | ")[0] for row in rows] == [f"| {r['seed']}" for r in runs] + ["| mean"]
    first = runs[0]["arms"]
    cells = rows[0].strip("| ").split(" | ")
    assert cells[1] == f"{first['full']['ap50'] * 100:.1f}"
    assert cells[2] == f"{100 * first['full']['ap50'] / first['full_expert']['ap50']:.1f} %"
    lsm = (first["full"]["ap50"] - first["finetune_lsm"]["ap50"]) * 100
    assert cells[4].startswith(f"{lsm:+.1f}".replace("-", "−") + " ± ")
    # The LSM loop's last cleaning model (the staged fine-tune), trained once: no standard error.
    staged = (first["full"]["ap50"] - runs[0]["rounds"]["discrepancy"][-1]["cleaning_ap50"]) * 100
    assert cells[5] == f"{staged:+.1f}".replace("-", "−")
    det = runs[0]["detection"]
    assert cells[9] == f"{det['lsm']['auroc'] - det['cleanlab']['auroc']:+.3f}".replace("-", "−")
    pct = results["summary"]["arms"]["full"]["pct_of_full"][0]
    assert rows[-1].strip("| ").split(" | ")[2] == f"{pct:.1f} %"
    assert "targets met." in text and results["meta"]["command"] in text


def test_a_difference_carries_the_standard_error_of_both_arms_trainings() -> None:
    # 90 and 92 against 80 twice: 11 points, se = sqrt(var(90, 92) / 2 + 0) = 1.
    diff, se = readme._difference(
        {"ap50": 0.91, "ap50_replicates": [0.90, 0.92]}, {"ap50": 0.8, "ap50_replicates": [0.8, 0.8]}
    )
    assert diff == pytest.approx(11.0) and se == pytest.approx(1.0)
    diff, se = readme._difference({"ap50": 0.91}, {"ap50": 0.8, "ap50_replicates": [0.8, 0.8]})
    assert diff == pytest.approx(11.0) and se != se  # one training: no error to give


def test_each_block_is_written_between_its_own_markers(tmp_path: Path) -> None:
    begin, end = readme.markers("heldout")
    doc = tmp_path / "README.md"
    doc.write_text(f"{readme.BEGIN}\nreported\n{readme.END}\n{begin}\nold\n{end}\n")
    readme.write_block(doc, "held out", block="heldout")
    assert doc.read_text() == f"{readme.BEGIN}\nreported\n{readme.END}\n{begin}\nheld out\n{end}\n"
    assert readme.written_block(doc.read_text(), "heldout") == "held out"
    with pytest.raises(ValueError, match="block"):
        readme.markers("other")


def test_a_run_trained_once_per_arm_shows_its_differences_without_an_error() -> None:
    results = json.loads(REPORTED.read_text())
    for run in results["runs"]:
        for arm in run["arms"].values():
            arm["ap50"] = (arm.get("ap50_replicates") or [arm["ap50"]])[0]
            arm["ap50_replicates"] = [arm["ap50"]]
    text = readme.seed_block(results, "docs/results/session/results.json", "session")
    assert text.startswith(
        "Generated by `python -m bench.readme --block session docs/results/session/results.json`"
    )
    row = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    first = results["runs"][0]["arms"]
    lsm = (first["full"]["ap50"] - first["finetune_lsm"]["ap50"]) * 100
    assert row.split(" | ")[4] == f"{lsm:+.1f}".replace("-", "−")  # no "±": one training has no spread
    with pytest.raises(ValueError, match="block"):
        readme.seed_block(results, "r.json", "results")


def _run(seed: int, full: float, lsm: float, rand: float, corr: float, lsm_auc: float = 0.9) -> dict:
    arms = {
        "full": {"ap50": full, "cost_fraction": 0.27, "expert_fraction": 0.1, "decision_fraction": 0.27},
        "full_expert": {"ap50": 0.85},
        "finetune_lsm": {"ap50": lsm},
        "finetune_random": {"ap50": rand},
        "random_corrected": {"ap50": corr},
    }
    grades = {"after": [{"noise_type": "missed", "precision_at_recall": 0.7}]}
    det = {"lsm": {"auroc": lsm_auc}, "cleanlab": {"auroc": 0.88}}
    return {"seed": seed, "arms": arms, "grades": grades, "detection": det}


def _results(
    seeds_figures: list[dict],
    noise: list[str] | None = None,
    purchase: str = "missed",
    compared: int | None = None,
) -> dict:
    meta = {
        "seeds": [r["seed"] for r in seeds_figures],
        "noise": noise or [],
        "settings": {"purchase": purchase, "replicates": 1, "compared_replicates": compared},
        "seconds": 3600.0,
    }
    return {"meta": meta, "runs": seeds_figures}


def test_the_overview_pools_only_unseen_seeds_of_the_reported_mix_and_purchase_each_once() -> None:
    reported = _results([_run(0, 0.90, 0.87, 0.85, 0.89), _run(1, 0.90, 0.87, 0.85, 0.89)])
    unseen = _results([_run(5, 0.88, 0.85, 0.84, 0.89), _run(6, 0.88, 0.87, 0.84, 0.87)])
    again = _results(
        [_run(6, 0.10, 0.10, 0.10, 0.10), _run(0, 0.10, 0.10, 0.10, 0.10), _run(7, 0.88, 0.85, 0.8, 0.87)]
    )
    other_mix = _results([_run(200, 0.5, 0.9, 0.9, 0.9)], noise=["missed_rate=0.35"])
    other_purchase = _results([_run(9, 0.5, 0.9, 0.9, 0.9)], purchase="discrepancy")
    text = readme.overview_block(
        [
            ("docs/results/quick/results.json", reported),
            ("docs/results/a/results.json", unseen),
            ("docs/results/b/results.json", again),
            ("docs/results/check-200-missed_rate-0.35-session/results.json", other_mix),
            ("docs/results/d/results.json", other_purchase),
        ]
    )
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert len(rows) == 6  # five runs and the pooled row
    pooled = rows[-1].strip("| ").split(" | ")
    assert pooled[0].startswith("**pooled") and "(a, b)" in pooled[0]
    assert pooled[2] == "5, 6, 7"  # seed 6 once (its first run), the reported seed 0 and other mixes left out
    # full - finetune_lsm on 5, 6, 7: +3, +1, +3 -> +2.3, by >= 2 on 2 of 3
    assert pooled[6] == "+2.3 (≥ 2 on 2 of 3)"
    # full - random + correction: -1, +1, +1 -> better on 2 of 3
    assert pooled[10] == "+0.3 (better on 2 of 3)"
    assert pooled[12] == "missed 0.70"
    first = rows[0].strip("| ").split(" | ")
    assert first[0] == "[quick](docs/results/quick/results.md)" and first[3] == "default"
    assert first[4] == f"{100 * 0.90 / 0.85:.1f} %" and first[11] == "+0.020 (≥ 0.05 on 0 of 2)"
    mix = rows[3].strip("| ").split(" | ")
    assert mix[3] == "`missed_rate=0.35`"  # the mix in its column, so the check's name leaves it out
    assert mix[0] == "[check-200-noise-session](docs/results/check-200-missed_rate-0.35-session/results.md)"


def test_the_overview_pools_a_seed_from_its_run_with_the_most_trainings() -> None:
    """Seed 5 run once per arm (listed first) and four times: the pooled row reads the four-training run,
    whatever order the runs come in (a folder's name decides the order a wildcard lists them in)."""
    reported = _results([_run(0, 0.90, 0.87, 0.85, 0.89)])
    once = _results([_run(5, 0.10, 0.10, 0.10, 0.10)], compared=1)
    four = _results([_run(5, 0.88, 0.85, 0.84, 0.89), _run(6, 0.88, 0.87, 0.84, 0.87)], compared=4)
    for listed in ([once, four], [four, once]):
        names = ["check-5-session" if r is once else "check-5" for r in listed]
        text = readme.overview_block(
            [("docs/results/quick/results.json", reported)]
            + [(f"docs/results/{n}/results.json", r) for n, r in zip(names, listed, strict=True)]
        )
        pooled = text.splitlines()[-1].strip("| ").split(" | ")
        assert pooled[2] == "5, 6" and pooled[1] == "4", pooled
        assert "(check-5)" in pooled[0]  # the once-trained run gave the pooled row nothing
        assert pooled[4] == f"{100 * 0.88 / 0.85:.1f} %"  # seed 5's full method from the four-training run


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.readme", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_the_overview_cli_takes_several_runs_and_only_the_overview_does(tmp_path: Path) -> None:
    begin, end = readme.markers("overview")
    doc = tmp_path / "README.md"
    doc.write_text(f"{begin}\n{end}\n")
    second = str(REPO / "docs" / "results" / "session" / "results.json")
    ok = _cli("--block", "overview", str(REPORTED), second, str(doc))
    assert ok.returncode == 0, ok.stderr
    assert "[quick]" in doc.read_text() and "[session]" in doc.read_text()
    before = doc.read_text()
    bad = _cli("--block", "session", str(REPORTED), second, str(doc))
    assert bad.returncode == 2 and "expected one results.json" in bad.stderr
    assert doc.read_text() == before


def test_the_weakest_grade_type_is_one_without_a_figure() -> None:
    """A type whose precision is nan on a seed has no mean: it is the weakest (the verdict fails it), n/a."""
    runs = [_run(0, 0.90, 0.87, 0.85, 0.89), _run(1, 0.90, 0.87, 0.85, 0.89)]
    for run, localization in zip(runs, (0.9, float("nan")), strict=True):
        run["grades"]["after"].append({"noise_type": "localization", "precision_at_recall": localization})
    for order in (runs, runs[::-1]):
        row = readme.overview_block([("docs/results/quick/results.json", _results(order))]).splitlines()[-1]
        assert row.strip("| ").split(" | ")[12] == "localization n/a"


def test_the_overview_pools_only_runs_with_every_setting_of_the_reported_run() -> None:
    """Another budget, cost limit, final recipe or preset is another experiment; the trainings per arm,
    --verdict-only, the FiftyOne peer and the threads are not."""
    reported = _results([_run(0, 0.90, 0.87, 0.85, 0.89)])
    reported["meta"].update(preset="quick", budget=0.1, threads=None, jobs=2)
    reported["meta"]["settings"].update(cost_limit=0.27, final_recipe="warm_cleaning", fiftyone="fo/python")

    def like(seed: int, **changes: object) -> dict:
        res = _results([_run(seed, 0.88, 0.85, 0.84, 0.89)], compared=1)
        res["meta"].update({k: v for k, v in reported["meta"].items() if k not in ("seeds", "settings")})
        res["meta"]["settings"] = {
            **reported["meta"]["settings"],
            "replicates": 1,
            "compared_replicates": None,
        }
        for key, value in changes.items():
            where = res["meta"] if key in ("preset", "budget", "threads", "jobs") else res["meta"]["settings"]
            where[key] = value
        return res

    runs = {
        "same": like(5, threads=1, jobs=3, fiftyone=None, verdict_only=True),
        "budget": like(6, budget=0.25),
        "limit": like(7, cost_limit=0.3),
        "recipe": like(8, final_recipe="scratch"),
        "preset": like(9, preset="small"),
    }
    text = readme.overview_block(
        [("docs/results/quick/results.json", reported)]
        + [(f"docs/results/{name}/results.json", res) for name, res in runs.items()]
    )
    pooled = text.splitlines()[-1].strip("| ").split(" | ")
    assert pooled[2] == "5" and "(same)" in pooled[0]
    assert "the reported run's settings" in pooled[0] and "every setting alike but `replicates`" in pooled[0]


def test_class_only_lsm_fields_pool_on_simulated_data_only() -> None:
    """``duplicate_iou`` (added after the reported run) cannot change a one-class simulated run: such runs
    pool; on a user's data (``data`` set) the field must be equal like every other."""
    old = {"data": None, "lsm": {"match_iou": 0.5}, "settings": {}}
    new = {"data": None, "lsm": {"match_iou": 0.5, "duplicate_iou": 0.7}, "settings": {}}
    assert readme.protocol(old) == readme.protocol(new)
    other = {"data": None, "lsm": {"match_iou": 0.4, "duplicate_iou": 0.7}, "settings": {}}
    assert readme.protocol(other) != readme.protocol(new)
    users = [{**m, "data": "/lab/data"} for m in (old, new)]
    assert readme.protocol(users[0]) != readme.protocol(users[1])


def test_runs_of_another_revision_of_the_lsm_rules_do_not_pool() -> None:
    """A run recording the rules' revision (``selection.RULES_REVISION``) pools with runs of that revision
    only: one recording none predates the first, and its figures came from other rules."""
    base = {"data": None, "lsm": {"match_iou": 0.5}, "settings": {}}
    now = {**base, "rules": "2026-12-01"}
    assert readme.protocol(base) != readme.protocol(now)
    assert readme.protocol(now) == readme.protocol({**now})
    assert readme.protocol(now) != readme.protocol({**now, "rules": "2027-01-01"})


def test_the_seed_table_and_overview_read_the_reference_trained_as_long_where_a_run_has_it() -> None:
    """The full method's share of full expert, seed by seed and in the overview, is taken of the reference
    target 1 reads; with the reference trained as long, the 30-epoch share follows it."""
    from bench import readme

    def run(seed: int, long: float | None) -> dict:
        arms = {
            "full": {"ap50": 0.81, "cost_fraction": 0.27},
            "full_expert": {"ap50": 0.80},
        }
        if long is not None:
            arms["full_expert_long"] = {"ap50": long}
        return {"seed": seed, "arms": arms, "detection": {}}

    table = "\n".join(readme.seed_table([run(0, 0.90), run(1, 0.90)]))
    assert "| 0 | 81.0 | 90.0 % of the reference trained as long (101.2 % of the 30-epoch one) |" in table
    assert "| mean | 81.0 | 90.0 % of the reference trained as long (101.2 % of the 30-epoch one) |" in table
    table = "\n".join(readme.seed_table([run(0, None)]))
    assert "| 0 | 81.0 | 101.2 % |" in table
    assert readme._row_figures([run(0, 0.90), run(1, None)])[0] == "101.2 %"

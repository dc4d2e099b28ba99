"""Review rules a user can trust (issue #19): every default rule stands on a column some stage or
command of this project writes and carries its measured AUC; every column the review engine looks
up exists; a rule on a column the dataset lacks is an error that names the column and the fixes."""

from __future__ import annotations

import json

import pytest

from engines.active import rules as R
from engines.active.rules import DEFAULT_RULES, FITTED_AUC, MissingRuleColumn, Rule, check_rules, load_rules, save_rules

# column groups written by a command rather than a registered stage
GROUP_STEPS = {"dup": "dedup", "rev": "review_apply"}


def _produced() -> dict[str, str]:
    """column -> what writes it: the registered stages' output schemas, the stages whose columns
    depend on their config (declared as a column group named after the stage), and the groups
    the dedup and review-apply steps write."""
    import pipelines
    from curation.registry import STAGES, STEPS
    from curation.schema import COLUMN_GROUPS

    pipelines.load_jobs()
    out = {c: f"stage {name}" for name, cls in STAGES.items() for c in cls.output_schema.names}
    for g in COLUMN_GROUPS.values():
        if g.name in STAGES:
            out.update({c: f"stage {g.name}" for c in g.columns if c not in out})
        elif g.name in GROUP_STEPS:
            assert GROUP_STEPS[g.name] in STEPS, g.name
            out.update({c: f"step {GROUP_STEPS[g.name]}" for c in g.columns if c not in out})
    return out


def test_every_default_rule_is_on_a_produced_column_with_a_measured_auc():
    produced = _produced()
    assert DEFAULT_RULES
    for r in DEFAULT_RULES:
        assert r.column in produced, f"{r.column}: no registered stage or step writes it"
        assert r.evidence, r.column
        if r.column in FITTED_AUC:  # measured at each fit, on the dataset's own labels
            assert "cross-validated" in r.evidence
        else:
            assert r.auc is not None and r.auc >= 0.75, (r.column, r.auc)  # a signal, not a hunch
    # the stroke heuristic (AUC 0.61-0.65) orders reviews at most
    assert "prof_watermark" not in {r.column for r in DEFAULT_RULES}


def test_every_column_the_review_engine_looks_up_is_produced():
    produced = _produced()
    for name in ("GOODNESS", "DISPLAY_SIGNALS", "EMBEDDING_COLUMNS", "DUP_SIM_COLUMNS"):
        for c in getattr(R, name):
            assert c in produced or c in ("width", "height"), f"{name}: {c} is written by nothing"


def test_a_rule_on_a_missing_column_is_an_error_naming_it_and_the_fix(tmp_path):
    _produced()  # the stage registry filled, as in the jobs that load rules
    columns = ["id", "prof_quality", "prof_sharpness"]
    typo = Rule(column="prof_sharpnes", op=">=", threshold=1.2, why="blurry")
    with pytest.raises(MissingRuleColumn) as e:
        check_rules([typo], columns, source="thresholds.json")
    msg = str(e.value)
    assert "needs column prof_sharpnes" in msg and "did you mean prof_sharpness" in msg and "optional" in msg
    assert "no stage or command of this project writes it" in msg
    # a real column the dataset has not computed yet: the stage that writes it is named
    with pytest.raises(MissingRuleColumn, match=r"needs column prof_nsfw.*compute it first \(stage prof_nsfw\)"):
        check_rules([Rule(column="prof_nsfw", op="<=", threshold=0.5)], columns)
    # optional rules (all the defaults) are skipped with a note instead
    notes = check_rules(DEFAULT_RULES, columns)
    assert [n.split(":")[0] for n in notes] == ["rule prof_watermark_score <= 0.5", "rule rev_reward >= 0.5"]
    # the loader checks what it loads when it is given the dataset's columns
    path = tmp_path / "review" / "thresholds.json"
    save_rules(path, [typo])
    assert load_rules(path)[0].column == "prof_sharpnes"  # no dataset: nothing to check against
    with pytest.raises(MissingRuleColumn, match=str(path)):
        load_rules(path, columns)
    assert [r.column for r in load_rules(tmp_path / "none.json", columns)] == [r.column for r in DEFAULT_RULES]


def test_old_threshold_files_load_and_the_fitted_rule_gets_the_last_fits_auc(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"rules": [{"column": "rev_reward", "op": ">=", "threshold": 0.55, "why": ""}]}))  # before auc/optional
    (tmp_path / "reward_head.json").write_text(json.dumps({"meta": {"n": 80, "keep": 30, "drop": 50, "cv_auc": 0.81}}))
    (r,) = load_rules(path)
    assert r.threshold == 0.55 and r.auc == 0.81 and "80 review labels" in r.evidence
    assert r.optional is True  # such a file holds recalibrated defaults, which skipped absent columns
    path.write_text(json.dumps({"rules": [{"column": "prof_quality", "op": ">=", "threshold": 0.5, "oops": 1}]}))
    with pytest.raises(ValueError, match="thresholds.json"):
        load_rules(path)

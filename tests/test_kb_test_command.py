"""``movement-cds kb test``: scenario runs with expected | actual tables, the explanation of
what actually came out, JUnit XML, selection, and room for other runners' cases."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cds import Evaluator, Fact, PatientFacts
from cds._explain import Explainer
from cds._scenarios import CaseOutcome, ExpectationRow, Scenario, check_expectations
from movement_cds import _cli_kb_check
from movement_cds._cli import app
from tests.patients import AS_OF


def kb_test(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["kb", "test", *args])
    return r.exit_code, r.stdout, r.stderr


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_good_kb_passes_and_writes_junit(kb_copy: Path, tmp_path: Path) -> None:
    junit = tmp_path / "out" / "junit.xml"
    code, out, _ = kb_test(str(kb_copy), "--junit", str(junit))
    assert code == 0
    assert "PASS  bladder-dysfunction-alone-is-an-emergency" in out
    assert out.strip().splitlines()[-1].startswith("20 passed, 0 failed, 0 error(s)")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "20" and suite.get("failures") == "0"
    cases = suite.findall("testcase")
    assert {c.get("classname") for c in cases} == {"scenarios/starter-rules.yaml"}
    assert all(c.find("failure") is None for c in cases)


def test_wrong_expectation_shows_expected_actual_and_the_explanation(
    kb_copy: Path, tmp_path: Path
) -> None:
    sc = kb_copy / "scenarios" / "starter-rules.yaml"
    edit(sc, "      referral: stat\n      exercise-held: true\n      fires: [RF-01-CES]",
         "      referral: urgent\n      exercise-held: true\n      fires: [RF-01-CES]")
    junit = tmp_path / "junit.xml"
    code, out, _ = kb_test(str(kb_copy), "--junit", str(junit), "-q")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "FAIL  bladder-dysfunction-alone-is-an-emergency  " \
                       "(scenarios/starter-rules.yaml:16)"
    row = next(x for x in lines if x.strip().startswith("most urgent referral"))
    assert [c.strip() for c in row.split("|")] == ["most urgent referral", "urgent", "stat"]
    # the explanation of the actual outcome: the stat referral's rule and the input behind it
    assert "ALERT suspected-cauda-equina" in out and "<- RF-01-CES" in out
    assert "rf-bladder-dysfunction = true" in out
    assert "PASS" not in out  # -q: failures only
    assert lines[-1].startswith("19 passed, 1 failed")
    case = next(c for c in ET.parse(junit).getroot().iter("testcase")
                if c.get("name") == "bladder-dysfunction-alone-is-an-emergency")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "most urgent referral: expected urgent, got stat"
    assert "RF-01-CES" in (failure.text or "")


def test_broken_rule_fails_its_scenarios_with_why_not(kb_copy: Path) -> None:
    """Break the rule, not the scenario: the scenario fails and the explanation says which
    condition stopped the rule, with the values it saw."""
    rules = kb_copy / "rules" / "red-flags.yaml"
    edit(rules, "        - fact: rf-bladder-dysfunction\n          is: true\n",
         "        - fact: rf-bladder-dysfunction\n          is: false\n")
    # the reference engine: this process already holds the unbroken rules under this version
    code, out, _ = kb_test(str(kb_copy), "-k", "bladder", "--engine", "reference")
    assert code == 1
    assert "FAIL  bladder-dysfunction-alone-is-an-emergency" in out
    assert "alert suspected-cauda-equina" in out
    assert "RF-01-CES (Suspected cauda equina syndrome): did not fire" in out
    assert "'rf-bladder-dysfunction is false' is false (saw rf-bladder-dysfunction = true)" in out


def test_missing_fact_is_explained_as_missing_not_false(kb_copy: Path) -> None:
    sc = kb_copy / "scenarios" / "starter-rules.yaml"
    edit(sc, "exercises-include: [controlled-pelvic-tilt]",
         "exercises-include: [controlled-pelvic-tilt, bird-dog-breathing]")
    code, out, _ = kb_test(str(kb_copy), "--only", "unanswered-core")
    assert code == 1
    assert "exercise bird-dog-breathing" in out
    assert ("'fms-rotary-stability <= 1 (parameter fms-deficit-max-score)' is UNKNOWN because "
            "fms-rotary-stability is missing") in out
    assert "fms-rotary-stability = false" not in out


def test_selection(kb_copy: Path) -> None:
    code, out, _ = kb_test(str(kb_copy), "-k", "emergency", "-k", "flexion")
    assert code == 0
    ran = [x.split()[1] for x in out.splitlines() if x.startswith("PASS")]
    assert ran and all("emergency" in r or "flexion" in r for r in ran)
    code, _, err = kb_test(str(kb_copy), "-k", "no-such-scenario")
    assert code == 2 and "no case id contains 'no-such-scenario'" in err


def test_scenario_that_cannot_run_is_an_error(kb_copy: Path) -> None:
    sc = kb_copy / "scenarios" / "starter-rules.yaml"
    edit(sc, "      fms-rotary-stability: 1\n", "      fms-rotary-stabilty: 1\n")
    code, out, _ = kb_test(str(kb_copy))
    assert code == 1
    assert "error: InvalidInputError: unknown fact 'fms-rotary-stabilty'" in out
    assert "1 error(s)" in out.splitlines()[-1]


def test_invalid_kb_fails_before_running(kb_copy: Path) -> None:
    edit(kb_copy / "rules" / "red-flags.yaml", "code: suspected-cauda-equina",
         "code: suspected-cauda-equine")
    code, out, err = kb_test(str(kb_copy))
    assert code == 1 and out == ""
    assert "unknown alert code 'suspected-cauda-equine'" in err


def test_both_engines(kb_copy: Path) -> None:
    code, out, _ = kb_test(str(kb_copy), "--engine", "reference", "-q")
    assert code == 0 and "reference engine" in out
    code, _, err = kb_test(str(kb_copy), "--engine", "rete")
    assert code == 2 and "--engine" in err


def test_other_runners_cases_join_the_report(
    kb_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second runner (e.g. multi-visit trajectories) appends its outcomes to the same report
    and JUnit file."""

    def trajectories(ev: Evaluator, root: Path, select: Callable[[str], bool],
                     explainer: Explainer) -> list[CaseOutcome]:
        row = ExpectationRow("visit 2 decision for dead-bug", "progress", "hold", False)
        return [CaseOutcome("trajectory", "two-good-visits-progress", "trajectories/a.yaml", 4,
                            False, (row,), None, "held: pain during was 4/10")]

    monkeypatch.setattr(_cli_kb_check, "CASE_RUNNERS",
                        [*_cli_kb_check.CASE_RUNNERS, ("trajectories", trajectories)])
    junit = tmp_path / "j.xml"
    code, out, _ = kb_test(str(kb_copy), "-q", "--junit", str(junit))
    assert code == 1
    assert "FAIL  two-good-visits-progress  (trajectories/a.yaml:4)" in out
    assert "held: pain during was 4/10" in out
    assert "20 passed, 1 failed" in out
    names = {c.get("classname") for c in ET.parse(junit).getroot().iter("testcase")}
    assert names == {"scenarios/starter-rules.yaml", "trajectories/a.yaml"}


def test_rows_are_structured_for_passed_and_failed(starter: Evaluator) -> None:
    sc = Scenario.model_validate({
        "id": "x", "facts": {"rf-bladder-dysfunction": True},
        "expect": {"referral": "stat", "exercise-held": False, "alerts-include": ["nope"]},
    })
    plan = starter.evaluate(PatientFacts.build("Patient/x", AS_OF,
                                               [Fact("rf-bladder-dysfunction", True)]))
    rows = {r.what: r for r in check_expectations(sc, plan)}
    assert rows["most urgent referral"].passed
    assert not rows["exercise held"].passed and rows["exercise held"].actual is True
    assert rows["exercise held"].subjects == ("@held",)
    assert rows["alert nope"].subjects == ("nope",)


def test_trajectories_run_and_a_wrong_visit_expectation_fails_with_the_visit_story(
    tmp_path: Path,
) -> None:
    """Multi-visit follow-up trajectories are cases of ``kb test`` too (bundled KB copy)."""
    import shutil

    from knowledge_base import bundled_path

    root = tmp_path / "kb"
    shutil.copytree(bundled_path(), root, ignore=shutil.ignore_patterns("__pycache__"))
    code, out, _ = kb_test(str(root), "-k", "good-responses-progress", "--engine", "reference")
    assert code == 0, out
    assert "PASS  good-responses-progress-one-variable-twice" in out
    edit(root / "trajectories" / "progression.yaml",
         "          changes: {glute-bridge: progressed, dead-bug-eccentric: progressed}\n"
         "          variables: {glute-bridge: repetitions",
         "          changes: {glute-bridge: regressed, dead-bug-eccentric: progressed}\n"
         "          variables: {glute-bridge: repetitions")
    junit = tmp_path / "junit.xml"
    code, out, _ = kb_test(str(root), "-k", "good-responses-progress", "--engine", "reference",
                           "--junit", str(junit))
    assert code == 1
    assert "FAIL  good-responses-progress-one-variable-twice  (trajectories/progression.yaml:" \
        in out
    row = next(x for x in out.splitlines() if "change of glute-bridge" in x)
    assert [c.strip() for c in row.split("|")] == [
        "visit 2: change of glute-bridge", "regressed", "progressed"]
    # the explanation: what each visit did to each exercise, and why
    assert "visit 2 (" in out and "glute-bridge: progressed, repetitions [DS-01-PROGRESS]" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    case = suite.find("testcase")
    assert case is not None and case.get("classname") == "trajectories/progression.yaml"

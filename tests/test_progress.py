"""Progress across visits (issue 17 part 2): the series of pain, ODI and adherence per
visit, in the plan, in the output Bundle (a DiagnosticReport valid for the R4B models and for
FHIR.js), in the summary, and drawn as SVG."""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds import MEASURES, KnowledgeBase, ProgressPoint, adherence_points, human_date
from movement_cds import (
    DecisionSupport,
    InvalidBundleError,
    handout_html,
    progress_chart_svg,
    read_progress,
)
from tests.test_fhir_js import validate

ROOT = Path(__file__).resolve().parent.parent
VISIT_3 = ROOT / "examples" / "follow-up" / "visit-3.json"
AS_OF_3 = "2026-11-30T11:00:00Z"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def support(kb: KnowledgeBase) -> DecisionSupport:
    return DecisionSupport(kb)


def report_of(bundle: dict[str, Any]) -> dict[str, Any] | None:
    found = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert len(found) <= 1
    return found[0]["resource"] if found else None


def with_earlier_pain(values: list[int]) -> dict[str, Any]:
    """Visit 3 with its pain answers replaced by ``values`` (oldest first, a week apart)."""
    data = json.loads(VISIT_3.read_text())
    data["entry"] = [e for e in data["entry"]
                     if not e["resource"].get("id", "").endswith("pain-now")]
    last = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)
    for n, v in enumerate(values):
        when = last - timedelta(weeks=len(values) - 1 - n)
        data["entry"].append({"resource": {
            "resourceType": "Observation", "id": f"pain-{n}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
            "subject": {"reference": "Patient/pat-fu"},
            "effectiveDateTime": when.isoformat(), "valueInteger": v}})
    return data


def test_visit_3_carries_the_series_and_what_was_superseded(support: DecisionSupport) -> None:
    result = support.evaluate(VISIT_3.read_bytes(), as_of=AS_OF_3)
    pain = [p for p in result.plan.progress if p.measure == "pain"]
    assert [(p.value, p.role) for p in pain] == [(5, "superseded"), (4, "superseded"),
                                                 (3, "used")]
    # the decision read the latest value only
    assert {f.name: f.value for f in result.plan.facts}["pain-now"] == 3
    assert all(p.superseded_by == "Observation/obs-v3-pain-now" for p in pain[:2])
    # ... and the input notes still say the earlier ones were superseded
    notes = {i.location: i.message for i in result.plan.issues}
    assert "superseded" in notes["Observation/obs-v1-pain-now"]
    adherence = [p for p in result.plan.progress if p.measure == "adherence"]
    assert [(p.value, p.role) for p in adherence] == [(100.0, "response")]


def test_the_report_is_fhir_the_ehr_can_store(support: DecisionSupport,
                                              tmp_path: Path) -> None:
    result = support.evaluate(VISIT_3.read_bytes(), as_of=AS_OF_3)
    report = report_of(result.bundle)
    assert report is not None
    assert report["code"]["coding"][0]["code"] == "progress"
    contained = {o["id"]: o for o in report["contained"]}
    assert [r["reference"] for r in report["result"]] == [f"#{i}" for i in contained]
    values = [(o["valueQuantity"]["value"], o["extension"][0]["valueCode"],
               o["derivedFrom"][0]["reference"]) for o in contained.values()
              if o["id"].startswith("pain")]
    assert values == [(5, "superseded", "Observation/obs-v1-pain-now"),
                      (4, "superseded", "Observation/obs-v2-pain-now"),
                      (3, "used", "Observation/obs-v3-pain-now")]
    assert "Superseded" in contained["pain-1"]["note"][0]["text"]
    careplan = result.bundle["entry"][0]["resource"]
    full_url = next(e["fullUrl"] for e in result.bundle["entry"]
                    if e["resource"] is report)
    assert {"reference": full_url, "display": "Progress across visits"} in (
        careplan["supportingInfo"])
    out = tmp_path / "visit-3.json"
    out.write_text(result.to_json())
    (verdict,) = validate([out])
    assert verdict["valid"], verdict
    # ... and FHIR.js does look into the contained values
    broken = json.loads(result.to_json())
    report_of(broken)["contained"][0]["valueQuantity"]["value"] = "five"  # type: ignore[index]
    out.write_text(json.dumps(broken))
    (verdict,) = validate([out])
    assert not verdict["valid"]


def test_first_visit_has_no_report(support: DecisionSupport) -> None:
    """One value per measure is no trend: first-visit outputs are unchanged."""
    result = support.evaluate((ROOT / "examples" / "example-patient.json").read_bytes(),
                              as_of="2026-11-02T09:00:00Z")
    assert report_of(result.bundle) is None
    assert "PROGRESS ACROSS VISITS" not in result.summary


def test_earlier_values_change_the_report_and_its_id(support: DecisionSupport) -> None:
    a = support.evaluate(with_earlier_pain([7, 3]), as_of=AS_OF_3).bundle
    b = support.evaluate(with_earlier_pain([6, 3]), as_of=AS_OF_3).bundle
    ra, rb = report_of(a), report_of(b)
    assert ra is not None and rb is not None
    assert ra["contained"][0]["valueQuantity"]["value"] == 7
    assert rb["contained"][0]["valueQuantity"]["value"] == 6
    assert ra["id"] != rb["id"]


def test_summary_shows_the_trend(support: DecisionSupport) -> None:
    summary = support.evaluate(with_earlier_pain([8, 6, 3]), as_of=AS_OF_3).summary
    table = summary.split("PROGRESS ACROSS VISITS", 1)[1].split("\n\n", 1)[0]
    row = next(line for line in table.splitlines() if "Pain now" in line)
    assert re.search(r"8 +6 +3\* +\S{3}$", row)
    assert "16 Nov 2026" in table and "23 Nov 2026" in table


def test_adherence_per_day_sums_over_exercises() -> None:
    day1 = datetime(2026, 11, 16, 9, tzinfo=UTC)
    day2 = datetime(2026, 11, 30, 9, tzinfo=UTC)
    reports = [(day1, "a", "done", 3, "d1a"), (day1, "a", "prescribed", 6, "p1a"),
               (day1, "b", "done", 6, "d1b"), (day1, "b", "prescribed", 6, "p1b"),
               (day1, "c", "done", 2, "d1c"),  # no sessions prescribed: not counted
               (day2, "a", "done", 5, "d2a"), (day2, "a", "prescribed", 5, "p2a")]
    points = adherence_points(reports, frozenset({"d2a", "p2a"}))
    assert [(p.value, p.role) for p in points] == [(75.0, "superseded"), (100.0, "response")]
    assert points[0].sources == ("d1a", "d1b", "p1a", "p1b")


def points_strategy() -> st.SearchStrategy[list[ProgressPoint]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    point = st.builds(
        lambda m, d, v, r: ProgressPoint(m, start + timedelta(days=d),
                                         round(v * MEASURES[m].high, 1), r, (f"Observation/{d}",)),
        st.sampled_from(list(MEASURES)), st.integers(0, 300), st.floats(0, 1),
        st.sampled_from(["used", "superseded", "stale", "response"]))
    return st.lists(point, max_size=12, unique_by=lambda p: (p.measure, p.when))


@settings(max_examples=40, deadline=None)
@given(points=points_strategy())
def test_the_svg_draws_exactly_the_data(points: list[ProgressPoint]) -> None:
    """No screenshot: the chart parses as SVG; one circle per value with its value, date
    and role; in each panel a higher value is drawn higher, later dates further right; the
    axes and their labels match the measure's scale."""
    root = ET.fromstring(progress_chart_svg(points))
    assert root.tag == f"{SVG}svg"
    panels = {g.get("data-measure"): g for g in root.iter(f"{SVG}g")}
    assert set(panels) == {p.measure for p in points}
    for measure, g in panels.items():
        mine = sorted((p for p in points if p.measure == measure), key=lambda p: p.when)
        circles = list(g.iter(f"{SVG}circle"))
        assert [(c.get("data-value"), c.get("data-date"), c.get("data-role"))
                for c in circles] == [(f"{p.value:g}", human_date(p.when), p.role)
                                      for p in mine]
        xs = [float(c.get("cx", "")) for c in circles]
        ys = [float(c.get("cy", "")) for c in circles]
        assert xs == sorted(xs)
        pairs = list(zip(mine, ys, strict=True))
        for (p, y), (q, z) in itertools.pairwise(pairs):
            assert (p.value < q.value) == (y > z) or p.value == q.value
        filled = [c.get("fill") != "#fff" for c in circles]
        assert filled == [p.used for p in mine]
        labels = [t.text for t in g.iter(f"{SVG}text") if t.get("class") == "y-label"]
        info = MEASURES[measure]  # type: ignore[index]
        assert labels == [f"{info.low:g}", f"{(info.low + info.high) / 2:g}", f"{info.high:g}"]
        assert {ln.get("class") for ln in g.iter(f"{SVG}line")} >= {"axis x-axis",
                                                                     "axis y-axis"}
        title = next(t.text for t in g.iter(f"{SVG}text") if t.get("class") == "title")
        assert title == info.label
        trend = list(g.iter(f"{SVG}polyline"))
        assert len(trend) == (1 if len(mine) > 1 else 0)
    assert not any(e.tag.endswith("image") for e in root.iter())  # no external images


def test_the_series_reads_back_from_the_output_bundle(support: DecisionSupport) -> None:
    """A stored output Bundle gives the same series (for the handout of a stored plan)."""
    result = support.evaluate(with_earlier_pain([8, 6, 3]), as_of=AS_OF_3)
    back = read_progress(json.loads(result.to_json()))
    assert [(p.measure, p.when, p.value, p.role, p.sources) for p in back] == sorted(
        (p.measure, p.when, p.value, p.role, p.sources) for p in result.plan.progress)
    assert progress_chart_svg(back) == progress_chart_svg(result.plan.progress)
    broken = json.loads(result.to_json())
    report = report_of(broken)
    assert report is not None
    del report["contained"][1]["effectiveDateTime"]
    with pytest.raises(InvalidBundleError) as err:
        read_progress(broken)
    assert "contained[1]" in str(err.value.operation_outcome)


def test_the_handout_shows_the_chart_of_a_stored_follow_up() -> None:
    """The handout of visit 3's output Bundle carries the chart, drawn from the Bundle's own
    series; a first visit's has none."""
    bundle = json.loads((ROOT / "examples" / "follow-up" / "visit-3-output.json").read_text())
    html = handout_html(bundle)
    svg = re.search(r'<svg[^>]*class="progress-chart".*?</svg>', html, re.S)
    assert svg is not None
    values = re.findall(r'data-measure="pain" data-value="([\d.]+)"', svg.group(0))
    assert values == ["5", "4", "3"]
    assert svg.group(0).strip() == progress_chart_svg(read_progress(bundle)).strip()
    first = json.loads((ROOT / "examples" / "follow-up" / "visit-1-output.json").read_text())
    assert 'class="progress-chart"' not in handout_html(first)

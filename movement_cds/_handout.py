"""The patient handout: one self-contained HTML page (and a PDF of it) in plain words.

Sections, each starting a new printed page: the plan (what it is for, the traffic-light pain
guide, the check-in); one page per exercise (a line drawing of the start and end position,
how to do it, how much and how often, what you should feel, when to stop); the week (a
schedule grid with a box per session); the log to fill in (its columns are the follow-up
response codes the next visit reads, see docs/handout.md); when to stop and get help
(safety-netting, emergency symptoms of cauda equina). When a safety rule holds exercise the
page says so plainly and gives no exercises.

Nothing on the page is clinician material: no rule ids, evidence ids or record ids (the
model it is made from, ``movement_cds._handout_model``, never reads them), and no patient
name or id. No script, no external image, font or style sheet: it works offline and prints.

``PROGRESS_CHART_SLOT`` is where the progress chart (pain, ODI and adherence across visits)
goes when the output carries a series: ``render_handout_html(..., progress_chart=svg)``.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from cds import exercise_figure_svg
from movement_cds._handout_model import HandoutDose, HandoutExercise, HandoutPlan

__all__ = ["LOG_COLUMNS", "PROGRESS_CHART_SLOT", "render_handout_html"]

PROGRESS_CHART_SLOT = "progress-chart"

#: The log's columns: (heading on the page, follow-up response code it is entered as).
LOG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Sessions done", "exercise-sessions-done"),
    ("Pain during (0 to 10)", "exercise-pain-during"),
    ("Next morning: better, same or worse?", "exercise-pain-next-morning"),
    ("Did pain spread down your leg? (yes or no)", "exercise-peripheralization"),
    ("Is it helping? (better, same or worse)", "exercise-perceived-effect"),
)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

_CSS = """
body{font:17px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#111;
 max-width:820px;margin:0 auto;padding:16px}
h1{font-size:1.7em;margin:.2em 0}h2{font-size:1.35em;margin:.8em 0 .3em;
 border-bottom:2px solid #ddd}h3{font-size:1.1em;margin:.6em 0 .2em}
section{margin-bottom:1.6em}.lead{font-size:1.1em}
.figure svg{width:100%;max-width:640px;height:auto;border:1px solid #ddd;
 border-radius:6px;background:#fff}
.dose{background:#f3f6fa;border-radius:6px;padding:.4em .8em}.dose li{margin:.1em 0}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #999;padding:.35em;
 text-align:left;vertical-align:top}th{background:#f0f0f0}
.grid td{text-align:center;font-size:1.2em}.log td{height:2.1em}
.light{display:flex;gap:.8em;align-items:flex-start;border-radius:8px;padding:.5em .8em;
 margin:.4em 0;border:2px solid}.light b{min-width:5.5em}
.green{background:#e8f5e9;border-color:#2e7d32}.amber{background:#fff4e0;border-color:#ef8f00}
.red{background:#fdecea;border-color:#c62828}
.held,.emergency{border:3px solid #c62828;background:#fdecea;padding:.6em 1em;border-radius:8px}
.note{color:#444;font-size:.95em}.wide{overflow-x:auto}
@media (max-width:600px){body{font-size:15px;padding:8px}table{font-size:.8em}
 th,td{padding:.2em}.grid td{font-size:1em}}
@media print{body{max-width:none;padding:0;font-size:13pt}
 section{break-before:page;page-break-before:always}section:first-of-type{break-before:auto;
 page-break-before:auto}.exercise,.light,tr{break-inside:avoid}a{color:inherit}}
@page{size:A4;margin:15mm}
"""


def _date(when: datetime | None) -> str:
    return f"{when.day} {when:%B %Y}" if when else ""


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _how_often(d: HandoutDose) -> str:
    unit = "day" if d.period_unit == "d" else "week"
    if d.period == 1:
        return f"{_times(d.frequency)} a {unit}"
    return f"{_times(d.frequency)} every {d.period} {unit}s"


def _dose_items(d: HandoutDose) -> list[str]:
    items = []
    if d.sets:
        items.append(f"<b>Sets:</b> {d.sets}")
    if d.repetitions:
        items.append(f"<b>Each set:</b> {d.repetitions} times")
    if d.hold_seconds:
        items.append(f"<b>Hold:</b> {d.hold_seconds} seconds")
    if d.tempo:
        items.append(f"<b>Pace:</b> {escape(d.tempo)}")
    if d.load:
        items.append(f"<b>Weight:</b> {escape(d.load)}")
    items.append(f"<b>How often:</b> {_how_often(d)}")
    return items


def _session_days(d: HandoutDose) -> dict[int, int]:
    """Sessions per weekday (0 = Monday) for one week, spread evenly."""
    if d.period_unit == "d":  # n times every p days: n sessions on every p-th day
        return dict.fromkeys(range(0, 7, d.period), d.frequency)
    n = max(1, min(7, round(d.frequency / max(1, d.period))))
    return {round(i * 7 / n): 1 for i in range(n)}


def _exercise_section(n: int, ex: HandoutExercise) -> str:
    svg = exercise_figure_svg(ex.exercise_id, ex.title)
    picture = f'<div class="figure">{svg}</div>' if svg else ""
    dose = ("<ul class=\"dose\">" + "".join(f"<li>{i}</li>" for i in _dose_items(ex.dose))
            + "</ul>") if ex.dose else ""
    change = (f'<p><b>What has changed:</b> {escape(ex.change)}</p>' if ex.change else "")
    feel = ex.feel or "You may feel your muscles working. That is normal."
    stop = ex.stop or "Stop if the pain goes into the red zone of the pain guide."
    return (
        f'<section class="exercise" id="exercise-{escape(ex.exercise_id)}">'
        f"<h2>Exercise {n}: {escape(ex.title)}</h2>{picture}{change}"
        f"<h3>How to do it</h3><p>{escape(ex.how)}</p>"
        f"<h3>How much</h3>{dose}"
        f"<h3>What you should feel</h3><p>{escape(feel)}</p>"
        f"<h3>When to stop</h3><p>{escape(stop)} Then use the pain guide on page 1.</p>"
        "</section>")


def _pain_guide(plan: HandoutPlan) -> str:
    safe, ok = plan.pain_safe_max, plan.pain_acceptable_max
    if safe is None or ok is None:  # a knowledge base without the thresholds: its own words
        return ("<h3>Pain guide: how much pain is OK?</h3>"
                f"<p>{escape(plan.pain_text or '')}</p>" if plan.pain_text else "")
    return (
        "<h3>Pain guide: how much pain is OK?</h3>"
        "<p>Score your pain from 0 (no pain) to 10 (the worst pain you can think of).</p>"
        f'<div class="light green"><b>Green<br>0 to {safe}</b><span>Safe. Carry on.'
        "</span></div>"
        f'<div class="light amber"><b>Amber<br>{safe + 1} to {ok}</b><span>OK. Finish the '
        "exercise, but do not make it harder yet.</span></div>"
        f'<div class="light red"><b>Red<br>{ok + 1} to 10</b><span>Stop the exercise. Next '
        "time, move less far, use less weight or do the easier version.</span></div>"
        "<p>Pain should settle by the next morning. If it is worse the next morning, do less "
        "next time. If pain spreads down your leg, stop and call your clinician.</p>")


def _intro(plan: HandoutPlan) -> str:
    made = f" made on {_date(plan.created)}" if plan.created else ""
    if plan.held:
        return ('<section id="plan"><h1>Your back: what to do now</h1>'
                '<div class="held"><p class="lead"><b>Do not start any exercises for now.</b>'
                "</p><p>Some of your answers mean a doctor needs to check your back first. "
                "This is to keep you safe.</p>"
                + ("<p><b>Go to an emergency department today.</b> Do not wait.</p>"
                   if plan.emergency else
                   "<p>Your clinician will arrange this with you.</p>")
                + "</div><p>Read the page about when to get help.</p></section>")
    what = "your new exercise plan" if plan.revised else "your exercise plan"
    check = (f"<p>We will check how it is going between {_date(plan.check_in[0])} and "
             f"{_date(plan.check_in[1])}. Bring your log.</p>" if plan.check_in else "")
    stopped = ("<p><b>Stop doing:</b> " + escape(", ".join(plan.stopped)) + ".</p>"
               if plan.stopped else "")
    avoid = ("<p><b>Do not do for now:</b> " + escape(", ".join(plan.avoid)) + ".</p>"
             if plan.avoid else "")
    names = "".join(f"<li>{escape(e.title)}</li>" for e in plan.exercises)
    return (f'<section id="plan"><h1>Your back exercises</h1>'
            f'<p class="lead">This is {what}{made}. There are {len(plan.exercises)} '
            f"exercises. Each one has its own page.</p><ol>{names}</ol>"
            "<p>Moving helps most back pain get better. Some pain while you exercise is "
            "normal and does not mean harm. Keep going with your normal day as much as you "
            f"can.</p>{stopped}{avoid}{check}{_pain_guide(plan)}</section>")


def _schedule(plan: HandoutPlan) -> str:
    head = "".join(f"<th>{d}</th>" for d in _DAYS)
    rows = []
    for ex in plan.exercises:
        days = _session_days(ex.dose) if ex.dose else {}
        cells = "".join(f"<td>{'&#9744; ' * days.get(i, 0) or '&ndash;'}</td>"
                        for i in range(7))
        rows.append(f"<tr><th>{escape(ex.title)}</th>{cells}</tr>")
    return ('<section id="week"><h2>Your week</h2><p>Tick a box each time you do the '
            "exercise. A dash means a rest day for that exercise.</p>"
            f'<div class="wide"><table class="grid"><tr><th>Exercise</th>{head}</tr>'
            f'{"".join(rows)}</table></div></section>')


def _log(plan: HandoutPlan) -> str:
    head = "".join(f'<th data-code="{code}">{escape(text)}</th>' for text, code in LOG_COLUMNS)
    blank = "<td></td>" * len(LOG_COLUMNS)
    rows = "".join(f"<tr><th>{escape(ex.title)}</th>{blank}</tr>" for ex in plan.exercises)
    return ('<section id="log"><h2>Your log</h2><p>Fill this in before your next visit, '
            "one line for each exercise. Your clinician will use it to change your plan.</p>"
            f'<div class="wide"><table class="log"><tr><th>Exercise</th>{head}</tr>{rows}'
            "</table></div></section>")


def _safety(held: bool) -> str:
    first = ("Call your clinician or doctor if:" if held else
             "Stop the exercises and call your clinician or doctor if:")
    return (
        '<section id="help"><h2>When to stop and get help</h2>'
        f"<h3>{first}</h3><ul>"
        "<li>pain spreads further down your leg;</li>"
        "<li>your leg feels weak or numb and this is new;</li>"
        "<li>pain is worse the next morning two times in a row;</li>"
        "<li>you feel ill, have a fever, or lose weight without trying;</li>"
        "<li>pain keeps you awake at night, however you lie.</li></ul>"
        '<div class="emergency"><h3>Call an ambulance or go to an emergency department '
        "now if:</h3><ul>"
        "<li>you cannot pee, or you pee or poo without meaning to;</li>"
        "<li>you feel numb around your bottom, between your legs or around your private "
        "parts;</li>"
        "<li>both legs feel weak, numb or heavy;</li>"
        "<li>you lose feeling during sex.</li></ul>"
        "<p>These can be signs that nerves in your back are being squeezed. This is rare, "
        "but it needs help the same day.</p></div></section>")


def _progress(chart: str | None) -> str:
    if not chart:
        return ""
    return (f'<section id="{PROGRESS_CHART_SLOT}" data-slot="{PROGRESS_CHART_SLOT}">'
            f"<h2>How you are doing</h2>{chart}</section>")


def render_handout_html(plan: HandoutPlan, *, progress_chart: str | None = None) -> str:
    """The handout as one HTML document. ``progress_chart``: an inline SVG of the series of
    pain, ODI and adherence across visits, shown after the plan page when given."""
    body = [_intro(plan), _progress(progress_chart)]
    if not plan.held:
        body += [_exercise_section(n, e) for n, e in enumerate(plan.exercises, 1)]
        if plan.exercises:
            body += [_schedule(plan), _log(plan)]
    body.append(_safety(plan.held))
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Your back exercises</title><style>{_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")

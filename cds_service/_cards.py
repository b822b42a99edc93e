"""An evaluation (plan + output Bundle) as CDS Hooks cards (C10-C15).

Order: one card per alert, as the plan orders them (most severe first): ``critical`` for an
``emergency`` alert or a ``stat``/``asap`` referral, ``warning`` for ``urgent`` and
``caution``, ``info`` for ``information``; then the exercise plan as an ``info`` card whose
one suggestion (``isRecommended``, ``selectionBehavior: at-most-one``) creates, together, the
draft CarePlan, its draft ServiceRequests and the DetectedIssues they reference, exactly as
the output contract's Bundle has them (so the references between them resolve).

A follow-up (the plan ``replaces`` an earlier one): the plan card's summary counts the
changes, its detail has a "Changes since the last plan" section (one line per exercise: what
changed and why) and the check-in window, and its suggestion creates the revised CarePlan,
which names the earlier one in ``CarePlan.replaces``.

Every card: ``summary`` under 140 characters, GitHub Markdown ``detail``, ``source.label``
the knowledge base (``{kb-id}@{version}``) and ``source.topic`` the alert code (or
``exercise-plan``), ``links`` to the evidence (PMID, PMCID, DOI, URL; guideline and ISBN ids
have no link), and ``overrideReasons``. A card's ``uuid`` is a UUID v5 of the service id,
the subject, the card's kind and its content (summary, detail, indicator, links), so the
same advice gives the same uuid whatever the call (``hookInstance``) or the time; a
suggestion's uuid derives from its card's. Nothing empty or null is ever emitted (C1).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Final

from cds import EvidenceRef, Plan, PlanAlert, evidence_url
from fhir_adapters import (
    ALERT_SYSTEM,
    CARD_SYSTEM,
    CHANGE_DISPLAY,
    EXERCISE_SYSTEM,
    OVERRIDE_SYSTEM,
)

__all__ = [
    "CARD_SYSTEM", "NO_RULE", "OVERRIDE_SYSTEM", "card_rules", "evidence_url", "plan_cards",
]

_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "http://movement-cds.org/cds-hooks/card")
_MAX_LINKS: Final = 12
_CHANGE_ORDER: Final = tuple(CHANGE_DISPLAY)

_ALERT_OVERRIDES: Final = (
    ("already-addressed", "Already assessed or referred"),
    ("not-applicable", "Not applicable to this patient"),
    ("data-incorrect", "The recorded answers are incorrect"),
    ("patient-declined", "Patient declined"),
)
_PLAN_OVERRIDES: Final = (
    ("clinical-judgement", "Clinical judgement: a different plan"),
    ("data-incorrect", "The recorded answers are incorrect"),
    ("patient-declined", "Patient declined"),
    ("plan-exists", "A current plan already exists"),
)


def _prune_card(v: Any) -> Any:
    """Drop None, "", [] and {} bottom up (C1), except inside the suggestions' FHIR
    resources (strings are kept as written: card text is not a FHIR string, which the
    output check strips): the output adapter
    already wrote them without empty elements and validated them, and they are most of a
    plan card's size, so walking them again on every call would be wasted work."""
    if isinstance(v, dict):
        pruned = ((k, x if k == "resource" else _prune_card(x)) for k, x in v.items())
        return {k: x for k, x in pruned if not _empty(x)}
    if isinstance(v, list):
        return [x for x in map(_prune_card, v) if not _empty(x)]
    return v


def _empty(x: Any) -> bool:
    """None, "", [] or {} (what C1 forbids), without comparing whole containers."""
    return x is None or (isinstance(x, str | list | dict) and not x)


def _short(text: str, limit: int = 139) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _links(evidence: list[EvidenceRef]) -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = []
    seen: set[str] = set()
    for e in evidence:
        url = evidence_url(e.id)
        if url is None or url in seen:
            continue
        seen.add(url)
        links.append({"label": _short(f"{e.id}: {e.citation}", 120), "url": url,
                      "type": "absolute"})
        if len(links) >= _MAX_LINKS:
            break
    return links


def _evidence_md(evidence: list[EvidenceRef]) -> str:
    if not evidence:
        return ""
    lines = ["**Evidence**", ""]
    lines += [f"- {e.id} ({e.tag}, {e.strength}{', ' + e.grade if e.grade else ''}): "
              f"{e.citation}" for e in evidence]
    return "\n".join(lines)


def _indicator(a: PlanAlert) -> str:
    if a.level == "emergency" or (a.referral is not None and a.referral.priority in
                                  ("stat", "asap")):
        return "critical"
    if a.level in ("urgent", "caution"):
        return "warning"
    return "info"


def _overrides(reasons: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    return [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in reasons]


class _Cards:
    def __init__(self, plan: Plan, bundle: dict[str, Any], service_id: str) -> None:
        self.plan = plan
        self.bundle = bundle
        self.service_id = service_id
        self.label = plan.knowledge_base
        self._titles: dict[str, str] | None = None

    def uuid(self, kind: str, card: dict[str, Any]) -> str:
        content = json.dumps(
            [card.get("summary"), card.get("detail"), card.get("indicator"),
             card.get("links")], sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        return str(uuid.uuid5(_NAMESPACE, "|".join(
            (self.service_id, self.plan.subject, self.label, kind, digest))))

    def source(self, code: str, display: str, system: str) -> dict[str, Any]:
        return {"label": self.label,
                "topic": {"system": system, "code": code, "display": display}}

    def alert_card(self, a: PlanAlert) -> dict[str, Any]:
        parts = [a.detail, f"**What to do:** {a.mitigation}"]
        if a.referral is not None:
            parts.append(f"**Referral proposed:** {a.referral.priority}, to {a.referral.to} "
                         "(a draft, for clinician review).")
        if a.holds_exercise or (a.referral is not None
                                and a.referral.priority in ("stat", "asap", "urgent")):
            parts.append("All exercise is on hold until a clinician has reviewed this.")
        if a.rule_ids:
            parts.append(f"Rules: {', '.join(a.rule_ids)} ({self.label}).")
        if a.sources:
            parts.append(f"Based on: {', '.join(a.sources)}.")
        parts.append(_evidence_md(list(a.evidence)))
        card: dict[str, Any] = {
            "summary": _short(a.display if a.referral is None
                              else f"{a.display}: {a.referral.priority} referral proposed"),
            "indicator": _indicator(a),
            "detail": "\n\n".join(p for p in parts if p),
            "source": self.source(a.code, a.display, ALERT_SYSTEM),
            "links": _links(list(a.evidence)),
            "overrideReasons": _overrides(_ALERT_OVERRIDES),
        }
        card["uuid"] = self.uuid(f"alert:{a.code}", card)
        return card

    def title(self, exercise_id: str) -> str:
        """An exercise's title: from the plan, else from the output CarePlan's codings (a
        stopped exercise is only there), else its id."""
        if self._titles is None:
            titles: dict[str, str] = {}
            for e in self.bundle.get("entry", []):
                if e["resource"].get("resourceType") != "CarePlan":
                    continue
                for act in e["resource"].get("activity", []):
                    for c in act.get("detail", {}).get("code", {}).get("coding", []):
                        if c.get("system") == EXERCISE_SYSTEM and c.get("display"):
                            titles.setdefault(c["code"], c["display"])
            titles.update({x.exercise_id: x.title for x in self.plan.exercises})
            self._titles = titles
        return self._titles.get(exercise_id, exercise_id)

    def change_lines(self) -> list[str]:
        """One Markdown line per exercise: what changed and why."""
        out = []
        for c in self.plan.changes:
            what = c.kind + (f" ({c.variable})" if c.variable else "")
            if c.previous_exercise_id and c.previous_exercise_id != c.exercise_id:
                what += f", replacing {self.title(c.previous_exercise_id)}"
            out.append(f"- **{self.title(c.exercise_id)}**: {what}. {c.clinician_text}")
        return out

    def plan_summary(self) -> str:
        p = self.plan
        if p.exercise_held:
            return "Exercise on hold: the referral is the plan (draft CarePlan for review)"
        n = len(p.exercises)
        if p.replaces is not None:
            counts = {k: sum(1 for c in p.changes if c.kind == k) for k in _CHANGE_ORDER}
            shown = ", ".join(f"{v} {k}" for k, v in counts.items()
                              if v and k != "continued")
            text = (f"Exercise plan revised: {n} exercise{'s' if n != 1 else ''}"
                    + (f" ({shown})" if shown else ", no changes"))
            if p.check_in is not None:
                text += "; check-in proposed"
            return text
        text = (f"Exercise plan proposed: {n} exercise{'s' if n != 1 else ''}"
                if n else "No exercise proposed yet (see details)")
        if p.avoid:
            text += f", {len(p.avoid)} to avoid"
        if p.data_gaps and any(g.missing for g in p.data_gaps):
            text += "; some answers missing"
        return text

    def plan_detail(self) -> str:
        p = self.plan
        out = [f"Draft proposal from {p.kb_title} ({self.label}) for clinician review; "
               "nothing is ordered until accepted."]
        if p.exercise_held:
            out.append("**All exercise is on hold**: "
                       + "; ".join(f"{a.display}" for a in p.alerts if a.holds_exercise
                                   or (a.referral is not None
                                       and a.referral.priority in ("stat", "asap", "urgent")))
                       + ".")
        if p.replaces is not None:
            out.append(f"**Changes since the last plan** ({p.replaces})\n\n"
                       + ("\n".join(self.change_lines()) or "- No exercise changes."))
        if p.exercises:
            out.append("**Exercises" + (" (on hold)" if p.exercise_held else "") + "**\n\n"
                       + "\n".join(f"- {x.title}: {x.dose.describe()}" for x in p.exercises))
        if p.check_in is not None and not p.exercise_held:
            # hours from now, not instants: the same advice keeps the same card uuid on
            # every call (the CarePlan in the suggestion carries the instants)
            ci = p.check_in
            start, end = ((t - p.as_of).total_seconds() / 3600 for t in (ci.start, ci.end))
            out.append(f"**Check-in**: {start:g}-{end:g} hours after this plan. {ci.reason}")
        if p.avoid:
            out.append("**Do not perform**\n\n"
                       + "\n".join(f"- {x.title}: {x.reason}" for x in p.avoid))
        missing = [m for g in p.data_gaps for m in g.missing]
        if missing:
            names = dict.fromkeys(p.fact_descriptions.get(m, m).split(" (")[0] for m in missing)
            out.append("**Missing answers** (not read as normal)\n\n"
                       + "\n".join(f"- {n}" for n in names))
        if p.safety_net:
            out.append("**Safety net**\n\n" + "\n".join(f"- {s}" for s in p.safety_net))
        rules = sorted({r for x in p.exercises for r in x.rule_ids}
                       | {r for x in p.avoid for r in x.rule_ids}
                       | {r for x in p.changes for r in x.rule_ids})
        if rules:
            out.append(f"Rules: {', '.join(rules)} ({self.label}).")
        out.append(_evidence_md(self.plan_evidence()))
        return "\n\n".join(o for o in out if o)

    def plan_evidence(self) -> list[EvidenceRef]:
        refs: dict[str, EvidenceRef] = {}
        for x in self.plan.exercises:
            for e in x.evidence:
                refs.setdefault(e.id, e)
        for av in self.plan.avoid:
            for e in av.evidence:
                refs.setdefault(e.id, e)
        return [refs[k] for k in sorted(refs)]

    def actions(self) -> list[dict[str, Any]]:
        careplan = ("Create the revised draft exercise CarePlan (proposal; it replaces "
                    f"{self.plan.replaces})" if self.plan.replaces is not None
                    else "Create the draft exercise CarePlan (proposal)")
        words = {"CarePlan": careplan,
                 "ServiceRequest": "Create the draft referral",
                 "DetectedIssue": "Record the alert the plan refers to",
                 "DiagnosticReport": "Record the progress across visits the plan refers to"}
        out = []
        for e in self.bundle.get("entry", []):
            res = e["resource"]
            rtype = res["resourceType"]
            if rtype not in words:
                continue
            desc = words[rtype]
            if rtype == "ServiceRequest":
                to = res.get("performerType", {}).get("text", "")
                desc += f" ({res.get('priority', '')}): {to}"
            elif rtype == "DetectedIssue":
                desc += f": {res.get('code', {}).get('text', '')}"
            out.append({"type": "create", "description": _short(desc, 200), "resource": res})
        return out

    def plan_card(self) -> dict[str, Any]:
        card: dict[str, Any] = {
            "summary": _short(self.plan_summary()),
            "indicator": "info",
            "detail": self.plan_detail(),
            "source": self.source("exercise-plan", "Exercise plan", CARD_SYSTEM),
            "links": _links(self.plan_evidence()),
            "overrideReasons": _overrides(_PLAN_OVERRIDES),
        }
        card["uuid"] = self.uuid("plan", card)
        n_ref = len(self.plan.referrals)
        label = ("Create the revised draft CarePlan" if self.plan.replaces is not None
                 else "Create the draft CarePlan") + (
            f" and {n_ref} referral{'s' if n_ref != 1 else ''}" if n_ref else "")
        card["suggestions"] = [{
            "label": label,
            "uuid": str(uuid.uuid5(uuid.UUID(card["uuid"]), "create-plan")),
            "isRecommended": True,
            "actions": self.actions(),
        }]
        card["selectionBehavior"] = "at-most-one"
        return card


def plan_cards(plan: Plan, bundle: dict[str, Any], service_id: str) -> list[dict[str, Any]]:
    """The cards for one evaluation: alerts (most severe first), then the plan."""
    c = _Cards(plan, bundle, service_id)
    cards = [c.alert_card(a) for a in plan.alerts]
    order = {"critical": 0, "warning": 1, "info": 2}
    cards.sort(key=lambda k: order[k["indicator"]])  # stable: keeps the plan's order
    cards.append(c.plan_card())
    return [_prune_card(k) for k in cards]


NO_RULE: Final = "(no rule fired)"


def _plan_card_rules(plan: Plan) -> list[str]:
    """The rules a plan card's feedback is about: those behind its exercises, "do not do"
    items and follow-up changes; when there are none, those that held exercise, then those
    that reported missing data; a plan that no rule shaped is still counted, under
    ``NO_RULE``."""
    groups: tuple[list[tuple[str, ...]], ...] = (
        [*(x.rule_ids for x in plan.exercises), *(x.rule_ids for x in plan.avoid),
         *(x.rule_ids for x in plan.changes)],
        [a.rule_ids for a in plan.alerts if a.holds_exercise or a.referral is not None])
    for group in groups:
        rules = sorted({r for ids in group for r in ids})
        if rules:
            return rules
    gaps = sorted({g.rule_id for g in plan.data_gaps})
    return gaps or [NO_RULE]


def card_rules(plan: Plan, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For the feedback store: which rules and alert code each card stands for."""
    by_code = {a.code: a for a in plan.alerts}
    out = []
    for k in cards:
        code = k["source"]["topic"]["code"]
        rules = list(by_code[code].rule_ids) if code in by_code else _plan_card_rules(plan)
        out.append({"card": k["uuid"], "code": code, "rule_ids": rules,
                    "knowledge_base": plan.knowledge_base})
    return out

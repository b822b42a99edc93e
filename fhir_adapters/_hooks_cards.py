"""An evaluation (plan + output Bundle) as CDS Hooks cards (C10-C15).

Order: one card per alert, as the plan orders them (most severe first): ``critical`` for an
``emergency`` alert or a ``stat``/``asap`` referral, ``warning`` for ``urgent`` and
``caution``, ``info`` for ``information``; then the exercise plan as an ``info`` card whose
one suggestion (``isRecommended``, ``selectionBehavior: at-most-one``) creates, together, the
draft CarePlan, its draft ServiceRequests and the DetectedIssues they reference, exactly as
the output contract's Bundle has them (so the references between them resolve).

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

from cds import EvidenceRef, Plan, PlanAlert
from fhir_adapters._outbound import ALERT_SYSTEM

__all__ = [
    "CARD_SYSTEM", "NO_RULE", "OVERRIDE_SYSTEM", "card_rules", "evidence_url", "plan_cards",
    "prune",
]

CARD_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/card"
OVERRIDE_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/override-reason"
_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "http://movement-cds.org/cds-hooks/card")
_MAX_LINKS: Final = 12

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


def prune(v: Any) -> Any:
    """Drop None, "", [] and {} bottom up (C1)."""
    if isinstance(v, dict):
        out = {k: prune(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in (None, "", [], {})}
    if isinstance(v, list):
        items = [prune(x) for x in v]
        return [x for x in items if x not in (None, "", [], {})]
    return v


def _prune_card(v: Any) -> Any:
    """``prune`` for a card, except the suggestions' FHIR resources: the output adapter
    already wrote them without empty elements and validated them, and they are most of a
    plan card's size, so walking them again on every call would be wasted work."""
    if isinstance(v, dict):
        out = {k: x if k == "resource" else _prune_card(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in (None, "", [], {})}
    if isinstance(v, list):
        items = [_prune_card(x) for x in v]
        return [x for x in items if x not in (None, "", [], {})]
    return v


def evidence_url(evidence_id: str) -> str | None:
    kind, _, value = evidence_id.partition(":")
    value = value.strip()
    if not value:
        return None
    if kind == "PMID":
        return f"https://pubmed.ncbi.nlm.nih.gov/{value}/"
    if kind == "PMCID":
        return f"https://www.ncbi.nlm.nih.gov/pmc/articles/{value}/"
    if kind == "DOI":
        return f"https://doi.org/{value}"
    if kind == "URL" and value.startswith(("http://", "https://")):
        return value
    return None  # GUIDELINE:, ISBN: have no link


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

    def plan_summary(self) -> str:
        p = self.plan
        if p.exercise_held:
            return "Exercise on hold: the referral is the plan (draft CarePlan for review)"
        n = len(p.exercises)
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
        if p.exercises:
            out.append("**Exercises" + (" (on hold)" if p.exercise_held else "") + "**\n\n"
                       + "\n".join(f"- {x.title}: {x.dose.describe()}" for x in p.exercises))
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
                       | {r for x in p.avoid for r in x.rule_ids})
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
        words = {"CarePlan": "Create the draft exercise CarePlan (proposal)",
                 "ServiceRequest": "Create the draft referral",
                 "DetectedIssue": "Record the alert the plan refers to"}
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
        label = "Create the draft CarePlan" + (
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
    """The rules a plan card's feedback is about: those behind its exercises and "do not do"
    items; when there are none, those that held exercise, then those that reported missing
    data; a plan that no rule shaped is still counted, under ``NO_RULE``."""
    for group in ([*plan.exercises, *plan.avoid],
                  [a for a in plan.alerts if a.holds_exercise or a.referral is not None]):
        rules = sorted({r for x in group for r in x.rule_ids})
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

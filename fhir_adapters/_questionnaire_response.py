"""QuestionnaireResponse in: each answered question becomes one Observation-shaped answer.

The reader (``_inbound``) then reads those answers with the very code that reads
Observations: the same statuses, dates, latest-wins and staleness, the same red-flag decision
table (``_red_flag_answers.read_red_flag``: a stale YES still counts, lifelong items, a NO
after a recent YES, undated and unreadable answers, clock skew) and the same value checks.
Nothing here decides what an answer means; it only says which question an item answers and
what was answered, in Observation form:

- Which question: the item's ``linkId``, when it is the name of a fact that an input code
  carries (``rf-fever``, ``startback-item-1``, ``pain-now``; the Questionnaires ``kb
  export-fhir`` publishes use exactly these), else when its last ``/``-separated part is a
  code of the fact catalog (LOINC forms name items by their LOINC code:
  ``/91349-1/91340-0`` is STarT Back item 1; ``rf-fever`` the screen code). R4 gives a
  QuestionnaireResponse item no ``code`` of its own (the code belongs to the Questionnaire),
  so none is read. Items are read at any depth (``item.item`` and ``answer.item``). An item
  with answers that answers no known question is reported (``not-supported``) and ignored;
  so is a leaf item without answers whose linkId is unknown. Groups are not reported.
- When: ``authored`` is the answer's date (``effectiveDateTime``); without it the answers
  are undated (an undated NO is unanswered, an undated YES escalates).
- Status: ``completed`` -> ``final``, ``amended`` -> ``amended``; ``in-progress`` and
  ``stopped`` are read as ``preliminary`` (with a note: the questionnaire was not finished);
  ``entered-in-error`` and any other or missing status: ignored and reported (by the
  reader, as for an Observation).
- What: ``answer.valueBoolean``, ``valueInteger`` and ``valueQuantity`` as they are;
  ``valueDecimal`` as a quantity in the fact's catalog unit; ``valueCoding`` as a
  ``valueCodeableConcept`` with that coding (so SNOMED and LOINC Yes/No codes are read as for
  an Observation); any other type keeps its key (``valueString``) and is read as what it is:
  an answer received that cannot be read. No answer is "no value". Several answers that
  differ are several values: the answer cannot be read (never a guess).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir_adapters._terminology import UCUM

__all__ = ["QR_STATUS", "ItemAnswer", "Question", "item_answers", "question_of"]

#: QuestionnaireResponse.status -> the Observation status its answers are read with.
QR_STATUS: Final[Mapping[str, str]] = {
    "completed": "final", "amended": "amended",
    "in-progress": "preliminary", "stopped": "preliminary",
}

Coded = tuple[str, str]


@dataclass(frozen=True)
class ItemAnswer:
    """One answered (or shown but unanswered) question of a QuestionnaireResponse."""

    link_id: str
    path: str  # FHIRPath-like position: item[0].item[2]
    observation: dict[str, Any]  # Observation-shaped, read by the Observation reader


@dataclass(frozen=True)
class Question:
    """What the fact catalog says about one question: its code and catalog unit."""

    coding: Coded
    unit: str | None


def _list(x: object) -> list[Any]:
    return x if isinstance(x, list) else []


def _walk(items: object, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(items, list):
        return
    for i, raw in enumerate(items):
        if not isinstance(raw, dict):
            continue
        here = f"{path}item[{i}]"
        yield here, raw
        yield from _walk(raw.get("item"), f"{here}.")
        for j, ans in enumerate(_list(raw.get("answer"))):
            if isinstance(ans, dict):
                yield from _walk(ans.get("item"), f"{here}.answer[{j}].")


def _value(answer: Mapping[str, Any], unit: str | None) -> dict[str, Any]:
    """One answer's value in Observation form (``{}`` when it has none)."""
    keys = [k for k in answer if isinstance(k, str) and k.startswith("value")]
    if len(keys) != 1:
        return {k: answer[k] for k in keys}  # none, or several: read (and refused) as sent
    key, raw = keys[0], answer[keys[0]]
    if key == "valueCoding":
        return {"valueCodeableConcept": {"coding": [raw]}}
    if key == "valueDecimal":
        quantity: dict[str, Any] = {"value": raw}
        if unit is not None:
            quantity.update(system=UCUM, code=unit, unit=unit)
        return {"valueQuantity": quantity}
    return {key: raw}


def _answer_value(item: Mapping[str, Any], unit: str | None) -> tuple[dict[str, Any], int]:
    """The item's answer in Observation form and the number of different answers."""
    answers = [a for a in _list(item.get("answer")) if isinstance(a, dict)]
    values: dict[str, dict[str, Any]] = {}
    for a in answers:
        v = _value(a, unit)
        if v:
            values.setdefault(json.dumps(v, sort_keys=True, default=repr), v)
    if not values:
        return {}, 0
    if len(values) == 1:
        return next(iter(values.values())), 1
    # several different answers: several value[x], which the reader cannot read
    return {f"valueAnswer{i + 1}": v for i, v in enumerate(values.values())}, len(values)


def question_of(link_id: str | None, by_link_id: Mapping[str, Question],
                by_code: Mapping[str, Question]) -> Question | None:
    """The question an item answers: its linkId as a fact name, else the linkId's last
    ``/``-separated part as a catalog code (``by_code``: codes that name one fact only)."""
    if link_id is None:
        return None
    return by_link_id.get(link_id) or by_code.get(link_id.rstrip("/").rsplit("/", 1)[-1])


def item_answers(
    resource: Mapping[str, Any],
    by_link_id: Mapping[str, Question],
    by_code: Mapping[str, Question],
    status: str,
    authored: str | None,
) -> tuple[list[ItemAnswer], list[tuple[str, str, str]]]:
    """Every question the QuestionnaireResponse answers, as Observation-shaped answers,
    and the problems found (severity, code, message)."""
    out: list[ItemAnswer] = []
    problems: list[tuple[str, str, str]] = []
    for path, item in _walk(resource.get("item"), ""):
        link_id = item.get("linkId") if isinstance(item.get("linkId"), str) else None
        shown = link_id if link_id is not None else "(no linkId)"
        question = question_of(link_id, by_link_id, by_code)
        has_answer = bool(_list(item.get("answer")))
        if question is None:
            if has_answer or not item.get("item"):
                problems.append((
                    "information", "not-supported",
                    f"item '{shown}' ({path}) answers no question of the knowledge base "
                    "(its linkId is no fact name or code); ignored"))
            continue
        value, different = _answer_value(item, question.unit)
        if different > 1:
            problems.append((
                "warning", "value",
                f"item '{shown}' ({path}) has {different} different answers; it could not "
                "be read"))
        system, code = question.coding
        observation: dict[str, Any] = {
            "resourceType": "Observation", "status": status,
            "code": {"coding": [{"system": system, "code": code}]},
            **({"id": resource["id"]} if isinstance(resource.get("id"), str) else {}),
            **({"subject": resource["subject"]} if "subject" in resource else {}),
            **({"effectiveDateTime": authored} if authored is not None else {}),
            **value,
        }
        out.append(ItemAnswer(shown, path, observation))
    return out, problems

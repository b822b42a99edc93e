"""JSON Schemas of the knowledge-base files, for editors (YAML language servers read them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from cds._kb_schema import (
    AlertDefinition,
    ExerciseDefinition,
    FactDefinition,
    Manifest,
    Rule,
    SynonymGroup,
)

__all__ = ["schemas"]


def _list_of(name: str, key: str, item: type[BaseModel]) -> type[BaseModel]:
    model = type(
        name,
        (BaseModel,),
        {
            "__annotations__": {key: list[item]},  # type: ignore[valid-type]
            "model_config": ConfigDict(extra="forbid"),
        },
    )
    return model


def schemas() -> dict[str, dict[str, Any]]:
    """One schema per file kind: manifest, facts, exercises, alerts, rules, search
    synonyms."""
    files: dict[str, type[BaseModel]] = {
        "manifest": Manifest,
        "facts": _list_of("FactsFile", "facts", FactDefinition),
        "exercises": _list_of("ExercisesFile", "exercises", ExerciseDefinition),
        "alerts": _list_of("AlertsFile", "alerts", AlertDefinition),
        "rules": _list_of("RulesFile", "rules", Rule),
        "search-synonyms": _list_of("SearchSynonymsFile", "synonyms", SynonymGroup),
    }
    out = {}
    for name, model in files.items():
        schema = model.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"movement-cds knowledge base: {name}"
        out[name] = schema
    return out

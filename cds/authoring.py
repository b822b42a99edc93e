"""The knowledge-base toolchain, public: what rule authors' commands are built from.

``movement-cds kb ...`` (validate, test, explain, docs, diff, profile, export-fhir, schema)
and the CDS Hooks service's release checks use these names, and so can a health system's
own tooling. Everything here works on a loaded ``cds.KnowledgeBase`` or a knowledge-base
folder; nothing here knows FHIR (scenarios read their FHIR input through a ``BundleReader``
that the caller passes in, the production reader in practice).

- **the file model** (``Rule``, ``Condition`` and its parts, ``FactTest``, ``ParamTest``,
  ``Param``, ``ExerciseDefinition``, ``DoseSpec``, ``Evidence``, ...): the validated form of
  the YAML files (docs/knowledge-base-format.md);
- **checks**: ``lint_knowledge_base`` and ``plain_problems`` (``kb validate``),
  ``check_changelog``/``parse_changelog`` (the release's CHANGELOG.md);
- **tests**: ``load_scenarios``/``run_scenarios``/``scenario_case`` (single-visit scenarios)
  and ``load_trajectories``/``run_trajectories`` (multi-visit);
- **explanations**: ``Explainer`` with ``render_target``/``render_plan_explanation``
  (``kb explain``: why, and why not);
- **documents**: ``render_catalog``/``write_catalog`` (the Markdown catalog),
  ``render_catalog_html`` (the one-page HTML catalog; ``ExercisePicture`` is the type of
  its exercise-picture hook), ``schemas`` (JSON Schemas of the files).
"""

from cds._catalog_docs import render_catalog, write_catalog
from cds._catalog_html import ExercisePicture, render_catalog_html
from cds._changelog import CHANGELOG_FILE, check_changelog, parse_changelog
from cds._explain import (
    Explainer,
    ExplainTargetError,
    render_item,
    render_plan_explanation,
    render_target,
)
from cds._kb_lint import lint_knowledge_base, plain_problems
from cds._kb_schema import (
    Action,
    AllOf,
    AnyOf,
    AtLeast,
    Condition,
    DoseSpec,
    Evidence,
    ExerciseDefinition,
    FactDefinition,
    FactTest,
    NoneOf,
    Param,
    ParamTest,
    Rule,
    SynonymGroup,
    evidence_url,
)
from cds._scenarios import (
    DEFAULT_AS_OF,
    BundleReader,
    CaseOutcome,
    ExpectationRow,
    Scenario,
    ScenarioOutcome,
    load_scenarios,
    run_scenarios,
    scenario_case,
)
from cds._schema_export import schemas
from cds._trajectories import TrajectoryOutcome, load_trajectories, run_trajectories

__all__ = [
    "CHANGELOG_FILE",
    "DEFAULT_AS_OF",
    "Action",
    "AllOf",
    "AnyOf",
    "AtLeast",
    "BundleReader",
    "CaseOutcome",
    "Condition",
    "DoseSpec",
    "Evidence",
    "ExerciseDefinition",
    "ExercisePicture",
    "ExpectationRow",
    "ExplainTargetError",
    "Explainer",
    "FactDefinition",
    "FactTest",
    "NoneOf",
    "Param",
    "ParamTest",
    "Rule",
    "Scenario",
    "ScenarioOutcome",
    "SynonymGroup",
    "TrajectoryOutcome",
    "check_changelog",
    "evidence_url",
    "lint_knowledge_base",
    "load_scenarios",
    "load_trajectories",
    "parse_changelog",
    "plain_problems",
    "render_catalog",
    "render_catalog_html",
    "render_item",
    "render_plan_explanation",
    "render_target",
    "run_scenarios",
    "run_trajectories",
    "scenario_case",
    "schemas",
    "write_catalog",
]

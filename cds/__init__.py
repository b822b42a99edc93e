"""The decision core of movement-cds: knowledge base, rule engine, plan.

It knows nothing of FHIR or HTTP; ``fhir_adapters`` turns FHIR into ``PatientFacts`` and a
``Plan`` back into FHIR.

Two knowledge-base helpers are public for the packages above (the CDS Hooks service):
``check_changelog`` (the versioning checks of ``kb validate``: semver manifest version, a
CHANGELOG section for it) and ``evidence_url`` (where a reader can look an evidence id up).
``exercise_figure_svg(id, title)`` draws an exercise's start and end position as an inline
SVG stick figure (for the patient handout and the catalog; ``cds/_poses.py`` has a pose for
every bundled exercise).
"""

from cds._changelog import check_changelog
from cds._compiler import CompiledKnowledgeBase, compile_knowledge_base
from cds._engine_result import EngineResult
from cds._errors import (
    EngineError,
    ExplainTargetError,
    InputIssue,
    InvalidInputError,
    KnowledgeBaseError,
    KnowledgeBaseProblem,
    MovementCDSError,
)
from cds._evaluator import Evaluator
from cds._facts import AnswerNote, Derivation, DerivedFact, Fact, PatientFacts
from cds._followup import (
    CheckIn,
    ExerciseChange,
    ExerciseResponse,
    FollowUp,
    PreviousExercise,
    PreviousPlan,
    Rating,
)
from cds._kb_cache import knowledge_base_files
from cds._kb_schema import evidence_url
from cds._knowledge_base import KnowledgeBase, load_knowledge_base
from cds._plan import (
    AvoidedExercise,
    DataGap,
    EvidenceRef,
    ExerciseDose,
    Plan,
    PlanAlert,
    PlannedExercise,
    Referral,
    alert_holds_exercise,
    resolve_plan,
)
from cds._poses import exercise_figure_svg
from cds._progress import (
    MEASURES,
    PROGRESS_FACTS,
    Measure,
    MeasureInfo,
    ProgressPoint,
    adherence_points,
    human_date,
    human_instant,
    progress_by_measure,
    show_number,
    trend_text,
)
from cds._progress import Role as ProgressRole
from cds._reference import evaluate_reference

__all__ = [
    "MEASURES",
    "PROGRESS_FACTS",
    "AnswerNote",
    "AvoidedExercise",
    "CheckIn",
    "CompiledKnowledgeBase",
    "DataGap",
    "Derivation",
    "DerivedFact",
    "EngineError",
    "EngineResult",
    "Evaluator",
    "EvidenceRef",
    "ExerciseChange",
    "ExerciseDose",
    "ExerciseResponse",
    "ExplainTargetError",
    "Fact",
    "FollowUp",
    "InputIssue",
    "InvalidInputError",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseProblem",
    "Measure",
    "MeasureInfo",
    "MovementCDSError",
    "PatientFacts",
    "Plan",
    "PlanAlert",
    "PlannedExercise",
    "PreviousExercise",
    "PreviousPlan",
    "ProgressPoint",
    "ProgressRole",
    "Rating",
    "Referral",
    "adherence_points",
    "alert_holds_exercise",
    "check_changelog",
    "compile_knowledge_base",
    "evaluate_reference",
    "evidence_url",
    "exercise_figure_svg",
    "human_date",
    "human_instant",
    "knowledge_base_files",
    "load_knowledge_base",
    "progress_by_measure",
    "resolve_plan",
    "show_number",
    "trend_text",
]

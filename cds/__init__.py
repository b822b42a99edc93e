"""The decision core of movement-cds: knowledge base, rule engine, plan.

It knows nothing of FHIR or HTTP; ``fhir_adapters`` turns FHIR into ``PatientFacts`` and a
``Plan`` back into FHIR.

Two knowledge-base helpers are public for the packages above (the CDS Hooks service):
``check_changelog`` (the versioning checks of ``kb validate``: semver manifest version, a
CHANGELOG section for it) and ``evidence_url`` (where a reader can look an evidence id up).
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
    resolve_plan,
)
from cds._reference import evaluate_reference

__all__ = [
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
    "MovementCDSError",
    "PatientFacts",
    "Plan",
    "PlanAlert",
    "PlannedExercise",
    "PreviousExercise",
    "PreviousPlan",
    "Rating",
    "Referral",
    "check_changelog",
    "compile_knowledge_base",
    "evaluate_reference",
    "evidence_url",
    "load_knowledge_base",
    "resolve_plan",
]

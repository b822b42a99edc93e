"""The output check: is a Bundle the writer built valid FHIR R4? (docs/integrators/output.md)

``checked_bundle(raw)`` prunes ``raw`` in place and returns it (no element is ever null,
``""``, ``[]`` or ``{}``; strings stripped) once it has been accepted by the
``fhir.resources.R4B`` models, with
the verdict of ``Bundle.model_validate(bundle)`` (which validates every entry's resource with
its own model), and passes the checks the models do not make: the codes of the required
bindings the writer fills, and the invariants cpl-3 (an activity has a reference or a
detail, not both; the writer always gives one), bdl-7 (fullUrls unique) and fullUrl =
``urn:uuid:`` + id. Any failure raises ``OutputValidationError``, a bug: the writer
(``fhir_adapters._outbound``) never returns unvalidated output. This module knows nothing
of plans; it imports no other module of this package but the errors and the JSON encoder.

Validating the whole Bundle with the models takes ~4 ms, nearly all of it per-element Python
work, while most of each output's *structure* is the same from call to call. So the Bundle is
validated node by node (a node: a JSON object an R4B model validates, from the Bundle down to
a Coding), each node as two parts:

* its **shape**: its keys in order, each primitive value replaced by a fixed stand-in that the
  field's type accepts, each element value by a stub instance of the field's model (a list of
  them by a one-stub list), each resource by a stub of the model its ``resourceType`` names,
  and anything else (a null, an empty list, a string where an element belongs, an unknown
  key, ...) kept verbatim as canonical JSON. The node's own model validates the shape, and the
  shape's encoding is remembered in a bounded cache (4096 shapes, first in first out). The
  encoding determines the shape exactly (the stand-ins are fixed per field), so a cache hit
  is the model's verdict on exactly that content;
* its **values**: every primitive value, on every call, by the validator the model compiled
  for that field (taken from the model's own core schema), in one batch per validator (all
  batches in one call), less the values that validator accepted before (remembered per
  validator, bounded: its verdict on a value never changes, as it sees only the value;
  strings as themselves, ints and bools with their type, as ``1 == 1.0 == True``; floats
  never). Fields whose schemas are equal but for their serializers (a dateTime in any
  model) share one validator: the same schema validates alike. And every child node, the
  same way, recursively.

Why the verdict is ``Bundle.model_validate``'s: for these models, validating a JSON object is
(1) each present field validated by its own validator, which never sees another field
(primitives by their core schema; elements by the child model, which accepts an instance of
itself as it is; resources by the model ``resourceType`` names), and (2) checks that look
only at which fields are present and non-null: unknown keys are refused, required elements
must be there, a choice element (``value[x]``, ``scheduled[x]``) has at most one type, a list
of elements holds no null, ``resourceType`` matches. Putting a valid stand-in for a valid
value, or a stub for a valid child (one stub for a list of valid children), changes nothing
in (2), so: node valid <=> shape valid and every value valid and every child valid, and by
induction the Bundle is valid exactly when every shape, value and node in it is. This holds
only for models whose validation is exactly (1) and (2): each model is checked for that on
first use (configuration, validators, no field constraints besides the type); a node of any
other model is validated whole, keyed by its canonical JSON. What varies per patient (ids,
references, statuses, dates, texts) is values, checked on every call; what repeats (shapes)
hits the cache, for a patient never seen before too. Pruning happens in the same walk, in
place (a key whose value prunes away is deleted, a string stripped, a list of elements
replaced by its kept items), so each shape and value is that of the pruned Bundle, the one
returned, byte for byte what ``_prune`` makes of ``raw``. The output must be JSON: a value of any
other Python type is refused. ``checked_bundle(raw, full_validation=True)``
(``write_bundle(..., full_validation=True)``) validates with ``Bundle.model_validate``
instead; the tests check that both accept the same Bundles.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections import defaultdict
from json.encoder import encode_basestring
from types import UnionType
from typing import Any, Final, Union, cast, get_args, get_origin

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension
from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import CoreConfig, CoreSchema, SchemaValidator, core_schema

from fhir_adapters._errors import OutputValidationError
from fhir_adapters._json_text import encoder

__all__ = ["checked_bundle"]

# required bindings the writer fills from data (R4 value sets)
_ACTIVITY_STATUS: Final = frozenset({
    "not-started", "scheduled", "in-progress", "on-hold", "completed", "cancelled", "stopped",
    "unknown", "entered-in-error",
})
_ACTIVITY_KIND: Final = frozenset({
    "Appointment", "CommunicationRequest", "DeviceRequest", "MedicationRequest",
    "NutritionOrder", "Task", "ServiceRequest", "VisionPrescription",
})
_REQUEST_PRIORITY: Final = frozenset({"routine", "urgent", "asap", "stat"})
_ISSUE_SEVERITY: Final = frozenset({"fatal", "error", "warning", "information"})
_ISSUE_TYPE: Final = frozenset({
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-lost", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
})
_DETECTED_ISSUE_SEVERITY: Final = frozenset({"high", "moderate", "low"})
_UNITS_OF_TIME: Final = frozenset({"s", "min", "h", "d", "wk", "mo", "a"})



# --- pruning --------------------------------------------------------------------------------


def _prune(v: Any) -> Any:
    """Drop null, blank strings, empty arrays and empty objects, bottom up; strip strings."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            t = type(x)
            if t is str:
                x = x.strip()
                if x:
                    out[k] = x
            elif t in _PLAIN:
                out[k] = x
            elif x is not None:
                x = _prune(x)
                if x or not isinstance(x, str | list | dict):
                    out[k] = x
        return out
    if isinstance(v, list):
        items = []
        for x in v:
            t = type(x)
            if t is str:
                x = x.strip()
                if x:
                    items.append(x)
            elif t in _PLAIN:
                items.append(x)
            elif x is not None:
                x = _prune(x)
                if x or not isinstance(x, str | list | dict):
                    items.append(x)
        return items
    if isinstance(v, str):
        return v.strip()
    return v


_PLAIN: Final = frozenset({bool, int, float})


_CANONICAL: Final = encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False)


# --- node by node ---------------------------------------------------------------------------
#
# Node by node, shape (cached) and values (every call): see "Validation" in the module
# docstring for why this gives the verdict of Bundle.model_validate.

_PRIM, _PRIM_LIST, _CPLX, _CPLX_LIST, _POLY, _POLY_LIST = range(6)
_SCALARS: Final = frozenset({str, int, float, bool})
# stand-ins tried, in order, for a primitive type; the first one its R4B type accepts is used
_STAND_INS: Final[tuple[Any, ...]] = (
    "x", "2000-01-01T00:00:00Z", "2000-01-01", "00:00:00", "http://example.org",
    "urn:oid:1.2", "AAAA", "00000000-0000-4000-8000-000000000000",
    '<div xmlns="http://www.w3.org/1999/xhtml">x</div>', 1, True,
)
_NO_STAND_IN: Final = object()
_SHAPE_CACHE_SIZE: Final = 4096

# What R4B model validation does besides validating each field by its own type: it is split
# soundly only for models that do exactly this (checked per model, see _decomposable).
_MODEL_CONFIG: Final = {"extra": "forbid", "validate_assignment": True, "populate_by_name": True}


def _function(f: Any) -> Any:
    """The function behind a (class) method."""
    return getattr(f, "__func__", f)


_PRESENCE_VALIDATORS: Final = {
    name: _function(dec.func)
    for owner in (FHIRAbstractModel, FHIRPrimitiveExtension)
    for name, dec in owner.__pydantic_decorators__.model_validators.items()
}
_BASE_METHODS: Final = ("_validate_one_of_many", "_validate_required_primitive_elements")

Model = type[FHIRAbstractModel]


class _Leaf:
    """The validator an R4B model compiled for one primitive field (for its items, if the
    field is a list), taken from the model's own core schema, run over a batch of values; and
    a stand-in value it accepts (preferably one it keeps as the same Python type).

    ``valid`` remembers values it accepted (bounded: emptied when full), so a value seen
    before (a code, a system, a display, a text, a dose of the knowledge base) is not
    validated again: the field's validator sees only the value, so its verdict on a value
    never changes. Strings are remembered as themselves (a string never equals an ``int``,
    ``float`` or ``bool``); ints and bools as ``(type, value)``, as those equal one another
    (``1 == 1.0 == True``); floats not at all (``0.0 == -0.0``). See ``_check_values``."""

    __slots__ = ("batch", "config", "index", "schema", "stand_in", "valid")

    def __init__(self, schema: CoreSchema, config: CoreConfig | None) -> None:
        self.schema, self.config, self.index = schema, config, -1
        self.batch = SchemaValidator(core_schema.list_schema(schema), config)
        self.valid: set[Any] = set()  # see _check_values
        accepted: list[Any] = []
        for candidate in _STAND_INS:
            try:
                (out,) = self.batch.validate_python([candidate])
            except ValidationError:
                continue
            if out is not None:
                accepted.append(candidate)
                if type(out) is type(candidate):
                    accepted.insert(0, candidate)
                    break
        self.stand_in: Any = accepted[0] if accepted else _NO_STAND_IN


class _AllFields:
    """Every field validator made so far (``_Leaf``), numbered, and one validator for all of
    them: a tuple of one batch per field, each validated by ``list_schema`` of the field's
    own schema, as ``_Leaf.batch`` does (so a Bundle's new values take one call). Rebuilt
    when a field validator is added; None if their configurations differ or their schemas
    do not combine (then each field's batch is validated on its own)."""

    def __init__(self) -> None:
        self.leaves: list[_Leaf] = []
        self.combined: tuple[SchemaValidator | None, int] = (None, 0)
        self._lock = threading.Lock()

    def add(self, leaf: _Leaf) -> None:
        with self._lock:
            leaf.index = len(self.leaves)
            self.leaves.append(leaf)

    def _validator(self, size: int) -> tuple[SchemaValidator | None, int]:
        combined = self.combined
        if combined[1] >= size:
            return combined
        with self._lock:
            leaves = list(self.leaves)
            validator = None
            if len({repr(leaf.config) for leaf in leaves}) == 1:
                try:
                    validator = SchemaValidator(core_schema.tuple_schema(
                        [core_schema.list_schema(leaf.schema) for leaf in leaves]),
                        leaves[0].config)
                except Exception:  # schemas that do not combine: each on its own
                    validator = None
            self.combined = (validator, len(leaves))
            return self.combined

    def validate(self, batches: list[tuple[_Leaf, list[Any]]]) -> None:
        """Raise unless each field's validator accepts every value of its batch."""
        validator, size = self._validator(1 + max(leaf.index for leaf, _ in batches))
        if validator is None:
            results: Any = [leaf.batch.validate_python(batch) for leaf, batch in batches]
        else:
            columns: list[list[Any]] = [[]] * size
            for leaf, batch in batches:
                columns[leaf.index] = batch
            results = validator.validate_python(columns)
        if any(None in r for r in results):
            raise ValueError("a primitive value validated to null")


_FIELDS: Final = _AllFields()


class _ShapeCache:
    """Shapes an R4B model has accepted, by exact encoding; bounded, first in first out.

    ``seen`` is read without the lock (a dict lookup is atomic); it is changed only under it.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.seen: dict[tuple[Model, tuple[Any, ...]], None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, key: tuple[Model, tuple[Any, ...]]) -> None:
        with self._lock:
            self.seen[key] = None
            while len(self.seen) > self.maxsize:
                del self.seen[next(iter(self.seen))]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()


_SHAPES: Final = _ShapeCache(_SHAPE_CACHE_SIZE)
_SPECS: dict[Model, dict[Any, tuple[int, Any] | None] | None] = {}
_UNSEEN: Final[Any] = object()  # not yet in _SPECS / a spec
_FIELD_NAMES: dict[Model, dict[str, str]] = {}
_STRING_LEAVES: dict[Model, dict[str, _Leaf]] = {}  # the _PRIM entries of _SPECS[model]
# per split model: its spec, its _STRING_LEAVES and the key tuples of the shapes it accepted
# with every value split off (bounded: emptied when full), looked up before _SHAPES
_WALKS: dict[Model, tuple[dict[Any, Any], dict[str, _Leaf], set[tuple[str, ...]]]] = {}
_LEAVES: dict[Any, _Leaf] = {}
_POLY_CLASSES: dict[tuple[str, str], Model] = {}
_STUBS: dict[Model, FHIRAbstractModel] = {}


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        args = tuple(a for a in get_args(annotation) if a is not type(None))
        return args[0] if len(args) == 1 else Union[args]  # noqa: UP007
    return annotation


def _is_fhir_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, FhirBase)


def _mentions_fhir_type(annotation: Any) -> bool:
    return _is_fhir_type(annotation) or any(_mentions_fhir_type(a) for a in get_args(annotation))


def _model_fields_schema(model: Model) -> tuple[dict[str, Any], CoreConfig | None] | None:
    """The compiled schema of each field of ``model`` (by field name), and the model's config
    (less its ``title``, which only names the model in error messages)."""
    s: Any = model.__pydantic_core_schema__
    config: CoreConfig | None = None
    while isinstance(s, dict) and s.get("type") != "model-fields":
        if s.get("type") == "model" and s.get("config") is not None:
            config = cast(CoreConfig, {k: v for k, v in s["config"].items() if k != "title"})
        s = s.get("schema")
    return (s["fields"], config) if isinstance(s, dict) else None


def _pure(schema: Any) -> bool:
    """True if ``schema`` is plain data (so equal schemas validate alike) and self-contained."""
    if isinstance(schema, dict):
        return (schema.get("type") != "definition-ref" and "ref" not in schema
                and all(_pure(v) for v in schema.values()))
    if isinstance(schema, list | tuple):
        return all(_pure(v) for v in schema)
    return schema is None or type(schema) in (str, int, float, bool)


def _validating(schema: Any) -> Any:
    """``schema`` without its serialization schemas (which validating never uses)."""
    if isinstance(schema, dict):
        return {k: _validating(v) for k, v in schema.items() if k != "serialization"}
    if isinstance(schema, list | tuple):
        return [_validating(v) for v in schema]
    return schema


def _unwrap(schema: Any, *kinds: str) -> Any:
    """``schema`` without outer wrappers of the given kinds that add nothing else."""
    while isinstance(schema, dict) and schema.get("type") in kinds and (
        set(schema) <= {"type", "schema", "default"}
        and (schema["type"] != "default" or schema.get("default") is None)
    ):
        schema = schema["schema"]
    return schema


def _leaf(model: Model, name: str, many: bool) -> _Leaf | None:
    """The batch validator of a primitive field of ``model`` (its items if ``many``)."""
    found = _model_fields_schema(model)
    if found is None:
        return None
    fields_schema, config = found
    schema = _unwrap(fields_schema[name]["schema"], "default", "nullable")
    if many:
        if not (isinstance(schema, dict) and schema.get("type") == "list"
                and set(schema) == {"type", "items_schema"}):
            return None  # a list with constraints of its own: kept verbatim
        schema = schema["items_schema"]
    key: Any = (repr(schema), repr(config)) if _pure(schema) and _pure(config) else (
        model, name)
    leaf = _LEAVES.get(key)
    if leaf is None:
        # an equal schema (the same functions, compared by identity) validates alike;
        # serializers (per field) play no part in validating
        wanted = _validating(schema)
        leaf = next((other for other in _FIELDS.leaves
                     if other.config == config and _validating(other.schema) == wanted), None)
    if leaf is None:
        try:
            leaf = _Leaf(schema, config)
        except Exception:  # a schema that does not stand alone: kept verbatim
            return None
        _FIELDS.add(leaf)
    _LEAVES[key] = leaf
    return leaf if leaf.stand_in is not _NO_STAND_IN else None


def _decomposable(model: Model) -> bool:
    """True if ``model`` validates a JSON object by validating each field with its own type
    (no field sees another) plus checks that look only at which fields are present: extra keys
    forbidden, required elements, one value per choice element, no null in a list of elements.
    """
    d = model.__pydantic_decorators__
    return (
        dict(model.model_config) == _MODEL_CONFIG
        and not (d.field_validators or d.validators or d.root_validators)
        and all(_PRESENCE_VALIDATORS.get(name) is _function(v.func)
                for name, v in d.model_validators.items())
        and model.__init__ is FHIRAbstractModel.__init__
        and model.model_post_init is BaseModel.model_post_init
        and all(getattr(model, m) is getattr(FHIRAbstractModel, m) for m in _BASE_METHODS)
        and all(not fi.metadata for fi in model.model_fields.values())
        and all(f.alias in (None, name) or f.alias not in model.model_fields
                for name, f in model.model_fields.items())  # a JSON key names one field
    )


def _field_spec(model: Model, name: str, field: FieldInfo) -> tuple[int, Any] | None:
    """How a field's value is split off its node, or None: kept in the shape verbatim."""
    annotation, many = _strip_none(field.annotation), False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        annotation, many = _strip_none(item), True
    if _is_fhir_type(annotation):
        if issubclass(annotation, FhirElementOrResourceBase):
            return (_POLY_LIST if many else _POLY, annotation._prefix)
        return (_CPLX_LIST if many else _CPLX, annotation.get_model_klass())
    if _mentions_fhir_type(annotation):
        return None
    leaf = _leaf(model, name, many)
    return None if leaf is None else (_PRIM_LIST if many else _PRIM, leaf)


def _spec(model: Model) -> dict[Any, tuple[int, Any] | None] | None:
    """How ``model``'s fields are split off, by JSON key (alias or field name; filled in on
    first use, see _entry), or None if ``model`` is validated whole."""
    if model in _SPECS:
        return _SPECS[model]
    spec: dict[Any, tuple[int, Any] | None] | None = None
    if _decomposable(model):
        spec = {}
        _STRING_LEAVES[model] = {}
        _FIELD_NAMES[model] = {
            **{name: name for name in model.model_fields},
            **{f.alias: name for name, f in model.model_fields.items() if f.alias},
        }
    _SPECS[model] = spec
    return spec


def _entry(model: Model, spec: dict[Any, tuple[int, Any] | None], key: Any) -> Any:
    """``spec[key]``, worked out on first use: None for a key kept verbatim. Only the model's
    own keys are remembered (so data cannot grow ``spec``)."""
    name = _FIELD_NAMES[model].get(key) if type(key) is str else None
    if name is None:
        return None
    entry = spec[key] = _field_spec(model, name, model.model_fields[name])
    if entry is not None and entry[0] == _PRIM:
        _STRING_LEAVES[model][key] = entry[1]
    return entry


def _poly_class(prefix: str, value: Any) -> Model | None:
    """The model a Resource-typed field validates ``value`` with (as fhir.resources picks it)."""
    if type(value) is not dict:
        return None
    rt = value.get("resourceType")
    if type(rt) is not str:
        return None
    cls = _POLY_CLASSES.get((prefix, rt))
    if cls is None:
        path = FHIR_TYPES_MAPS.get(prefix + rt + "Type")
        if path is None:
            return None
        module, _, name = path.rpartition(".")
        cls = _POLY_CLASSES[(prefix, rt)] = getattr(importlib.import_module(module), name)
    return cls


def _stub(model: Model) -> FHIRAbstractModel:
    """An instance of ``model``; a field of that element type accepts it as it is."""
    stub = _STUBS.get(model)
    if stub is None:
        stub = _STUBS[model] = model.model_construct()
    return stub


def _json_native(v: Any) -> bool:
    t = type(v)
    if t is dict:
        return all(type(k) is str and _json_native(x) for k, x in v.items())
    if t is list:
        return all(_json_native(x) for x in v)
    return v is None or t in _SCALARS


def _canonical(v: Any) -> str:
    """Exact canonical JSON of a JSON-native value (anything else is not output)."""
    if type(v) is str:
        return encode_basestring(v)  # what the encoder writes for a str
    if not _json_native(v):
        raise TypeError(f"not a JSON value: {type(v).__name__}")
    return _CANONICAL(v)


def _shape(model: Model, parts: tuple[Any, ...]) -> Any:
    """The JSON object a shape encoding stands for (see _split)."""
    spec = _spec(model)
    if spec is None:
        (whole,) = parts
        return json.loads(whole)
    out: dict[Any, Any] = {}
    for p in parts:
        if type(p) is str:
            kind, arg = cast(tuple[int, Any], spec[p])  # a split-off field
            out[p] = (arg.stand_in if kind == _PRIM else [arg.stand_in] if kind == _PRIM_LIST
                      else _stub(arg) if kind == _CPLX else [_stub(arg)])
        else:
            key, what = p
            out[key] = (json.loads(what) if type(what) is str
                        else [_stub(c) for c in what] if type(what) is tuple else _stub(what))
    return out


def _split(node: dict[str, Any], model: Model, leaves: defaultdict[_Leaf, list[Any]]) -> None:
    """Check ``node`` as ``model`` would: its shape against the cache (validated on a miss),
    its primitive values into ``leaves`` (validated by the caller), its children recursively.

    The shape encoding is a tuple with, per key in order: the key itself (a field whose value
    was split off: a primitive replaced by its type's stand-in, an element by a stub, a list
    of them by a one-item list), ``(key, model)`` / ``(key, (model, ...))`` (a Resource / list
    of Resources replaced by stubs of those models), or ``(key, canonical JSON)`` (verbatim).
    A model validated whole is encoded as ``(canonical JSON,)``.
    """
    spec = _SPECS[model] if model in _SPECS else _spec(model)
    parts: list[Any]
    if spec is None:
        parts = [_canonical(node)]
    else:
        parts = []
        for k, v in node.items():
            f = spec[k] if k in spec else _entry(model, spec, k)
            if f is not None:
                kind, arg = f
                t = type(v)
                if kind == _PRIM and t in _SCALARS:
                    parts.append(k)
                    if t is not str or v not in arg.valid:
                        leaves[arg].append(v)
                    continue
                if kind == _CPLX and t is dict:
                    parts.append(k)
                    _split(v, arg, leaves)
                    continue
                if kind == _CPLX_LIST and t is list and v and all(type(x) is dict for x in v):
                    parts.append(k)
                    for x in v:
                        _split(x, arg, leaves)
                    continue
                if kind == _PRIM_LIST and t is list and v and all(
                        type(x) in _SCALARS for x in v):
                    parts.append(k)
                    leaves[arg].extend(v)
                    continue
                if kind == _POLY:
                    cls = _poly_class(arg, v)
                    if cls is not None:
                        parts.append((k, cls))
                        _split(v, cls, leaves)
                        continue
                if kind == _POLY_LIST and t is list and v:
                    classes = [_poly_class(arg, x) for x in v]
                    if None not in classes:
                        parts.append((k, tuple(dict.fromkeys(classes))))
                        for x, cls in zip(v, classes, strict=True):
                            _split(x, cls, leaves)  # type: ignore[arg-type]
                        continue
            parts.append((k, _canonical(v)))  # anything else: verbatim
    key = (model, tuple(parts))
    if key not in _SHAPES.seen:
        model.model_validate(_shape(model, key[1]))
        _SHAPES.add(key)


def _poly_class_of(prefix: str, value: dict[str, Any]) -> Model | None:
    """``_poly_class`` of ``value`` as ``_prune`` will leave it (resourceType stripped)."""
    rt = value.get("resourceType")
    if type(rt) is not str:
        return None
    stripped = rt.strip()
    return _poly_class(prefix, value if stripped == rt else {"resourceType": stripped})


def _pruned_split(node: dict[str, Any], model: Model,
                  leaves: defaultdict[_Leaf, list[Any]]) -> dict[str, Any]:
    """``_prune(node)``, checked as ``_split`` checks it, in one walk (the write_bundle path):
    ``node`` pruned in place and returned (a model validated whole: a pruned copy); empty
    (nothing checked) if it prunes away. A child is pruned before its key is kept, so the
    shapes and leaves are those of the pruned tree. Strings, elements and lists of elements
    here (a string its field's validator accepted before is not collected: ``_Leaf.valid``);
    other lists and Resources by ``_pruned_many``; anything else kept verbatim."""
    walk = _WALKS.get(model)
    if walk is None:
        spec = _spec(model)
        if spec is None:
            return _pruned_whole(node, model)
        walk = _WALKS[model] = (spec, _STRING_LEAVES[model], set())
    spec, strings, known = walk
    parts: list[Any] | None = None  # the shape parts, once one is not just its key
    dead: list[str] = []  # keys whose values prune away
    for k, v in node.items():
        t = type(v)
        if t is str:
            s = v.strip()
            if not s:
                dead.append(k)
                continue
            if s is not v:
                node[k] = v = s  # a value replaced, no key added: iterating goes on
            leaf = strings.get(k)
            if leaf is not None:
                if parts is not None:
                    parts.append(k)
                if v not in leaf.valid:
                    leaves[leaf].append(v)
                continue
        elif v is None:
            dead.append(k)
            continue
        f = spec.get(k, _UNSEEN)
        if f is _UNSEEN:
            f = _entry(model, spec, k)
        if f is not None:
            kind = f[0]
            if kind == _CPLX:
                if t is dict:
                    child = _pruned_split(v, f[1], leaves)
                    if not child:
                        dead.append(k)
                        continue
                    if child is not v:
                        node[k] = child
                    if parts is not None:
                        parts.append(k)
                    continue
            elif kind == _CPLX_LIST:
                if t is list and _DICT_OR_NONE.issuperset(map(type, v)):
                    items = _pruned_elements(v, f[1], leaves)
                    if not items:
                        dead.append(k)
                        continue
                    node[k] = items
                    if parts is not None:
                        parts.append(k)
                    continue
            elif kind == _PRIM:
                if t in _SCALARS:
                    if parts is not None:
                        parts.append(k)
                    leaves[f[1]].append(v)
                    continue
        parts = _pruned_other(node, k, v, f, parts, dead, leaves)
    for k in dead:
        del node[k]
    if node:
        _check_node_shape(model, node, parts, known)
    return node


def _check_node_shape(model: Model, node: dict[str, Any], parts: list[Any] | None,
                      known: set[tuple[str, ...]]) -> None:
    """A pruned node's shape: its parts when one is more than its key, else its keys (the
    key tuples this model accepted before skip the shape cache)."""
    if parts is not None:
        _check_shape(model, tuple(parts))
        return
    keys = tuple(node)
    if keys not in known:
        _check_shape(model, keys)
        if len(known) >= _SHAPE_CACHE_SIZE:
            known.clear()
        known.add(keys)


def _pruned_other(node: dict[str, Any], k: str, v: Any, f: tuple[int, Any] | None,
                  parts: list[Any] | None, dead: list[str],
                  leaves: defaultdict[_Leaf, list[Any]]) -> list[Any] | None:
    """``_pruned_split`` for a value it does not handle itself: a list or Resource split off
    by ``_pruned_many``, or anything else kept verbatim. Returns the shape parts."""
    if f is not None and (type(v) is list or type(v) is dict):
        kept = _pruned_many(v, f[0], f[1], leaves)
        if kept is None:
            dead.append(k)
            return parts
        if kept is not _VERBATIM:
            node[k], part = kept
            if part is not None and parts is None:
                parts = _kept_before(node, k, dead)
            if parts is not None:
                parts.append(k if part is None else (k, part))
            return parts
    if parts is None:
        parts = _kept_before(node, k, dead)
    _verbatim(k, v, node, parts, dead)
    return parts


def _pruned_elements(v: list[dict[str, Any] | None], model: Model,
                     leaves: defaultdict[_Leaf, list[Any]]) -> list[dict[str, Any]]:
    """A list of elements (objects or nulls), each pruned and checked as ``model``: the
    ones kept."""
    items = []
    for x in v:
        if x is not None:
            child = _pruned_split(x, model, leaves)
            if child:
                items.append(child)
    return items


def _kept_before(node: dict[str, Any], key: str, dead: list[str]) -> list[Any]:
    """The keys of ``node`` before ``key`` not pruned away: the shape parts so far."""
    kept = []
    for k in node:
        if k == key:
            break
        if k not in dead:
            kept.append(k)
    return kept


_VERBATIM: Final[Any] = object()  # _pruned_many: not split off, kept verbatim
_DICT_OR_NONE: Final = frozenset({dict, type(None)})


def _pruned_many(v: Any, kind: int, arg: Any,
                 leaves: defaultdict[_Leaf, list[Any]]) -> Any:
    """A list value, or a Resource value, of a split-off field, pruned and checked: ``(pruned,
    shape part)`` (part None: the key itself), None if it prunes away, or ``_VERBATIM``
    (nothing checked) where ``_split`` keeps it verbatim: a list that is not all objects, a
    Resource type not known, a list of primitives not all scalars once pruned."""
    if kind == _CPLX_LIST:
        if type(v) is not list or not _DICT_OR_NONE.issuperset(map(type, v)):
            return _VERBATIM
        items = _pruned_elements(v, arg, leaves)
        return (items, None) if items else None
    if kind == _POLY or kind == _POLY_LIST:
        return _pruned_resources(v, kind, arg, leaves)
    if kind == _PRIM_LIST and type(v) is list:
        pv = _prune(v)
        if pv and all(type(x) in _SCALARS for x in pv):
            leaves[arg].extend(pv)
            return pv, None
    return _VERBATIM


def _pruned_resources(v: Any, kind: int, prefix: str,
                      leaves: defaultdict[_Leaf, list[Any]]) -> Any:
    """``_pruned_many`` for a Resource (``_POLY``: a dict) or a list of them: each checked
    with the model its ``resourceType`` names; the shape part names the models."""
    if kind == _POLY:
        if type(v) is not dict:
            return _VERBATIM
        cls = _poly_class_of(prefix, v)
        if cls is None:
            return _VERBATIM
        child = _pruned_split(v, cls, leaves)
        return (child, cls) if child else None
    if type(v) is not list or not set(map(type, v)) <= _DICT_OR_NONE:
        return _VERBATIM
    present = [x for x in v if x is not None]
    classes = [_poly_class_of(prefix, x) for x in present]
    if None in classes:
        return _VERBATIM
    items, kept = [], []
    for x, cls in zip(present, classes, strict=True):
        c = _pruned_split(x, cls, leaves)  # type: ignore[arg-type]
        if c:
            items.append(c)
            kept.append(cls)
    return (items, tuple(dict.fromkeys(kept))) if items else None


def _verbatim(k: str, v: Any, node: dict[str, Any], parts: list[Any], dead: list[str]) -> None:
    """Keep ``v`` under ``k`` as it is (pruned), its canonical JSON in the shape."""
    if type(v) is dict or type(v) is list:
        v = node[k] = _prune(v)
        if not v:
            dead.append(k)
            return
    parts.append((k, _canonical(v)))


def _pruned_whole(node: dict[str, Any], model: Model) -> dict[str, Any]:
    """A node of a model validated whole: pruned, its canonical JSON the shape."""
    whole = _prune(node)
    if whole:
        _check_shape(model, (_canonical(whole),))
    return cast(dict[str, Any], whole)


def _check_shape(model: Model, parts: tuple[Any, ...]) -> None:
    key = (model, parts)
    if key not in _SHAPES.seen:
        model.model_validate(_shape(model, parts))
        _SHAPES.add(key)


def _prune_check_fast(raw: dict[str, Any]) -> dict[str, Any]:
    """``_prune(raw)``, which ``_check_fast`` accepts (raises otherwise), in one walk."""
    leaves: defaultdict[_Leaf, list[Any]] = defaultdict(list)
    bundle = _pruned_split(raw, Bundle, leaves)
    _check_values(leaves)
    return bundle


def _check_fast(bundle: dict[str, Any]) -> None:
    """Raise (any exception) unless ``Bundle.model_validate(bundle)`` would accept the JSON
    value ``bundle``: every node's shape (cached) and every primitive value (each call)."""
    if type(bundle) is not dict:
        raise TypeError("the output Bundle is not a JSON object")
    leaves: defaultdict[_Leaf, list[Any]] = defaultdict(list)
    _split(bundle, Bundle, leaves)
    _check_values(leaves)


_VALID_STRINGS_PER_FIELD: Final = 4096


def _check_values(leaves: defaultdict[_Leaf, list[Any]]) -> None:
    """Raise unless every value is accepted by its field's validator: one batch per
    validator, all batches in one call (``_AllFields``). The walks collect a string only if
    its field's validator has not accepted it before; other values always.

    Remembered as valid (``_Leaf.valid``): strings as themselves, ints and bools as
    ``(type, value)``; floats never. Equal values of one type are the same value; across
    types they are not (``1 == 1.0 == True``, each validated on its own)."""
    batches = []
    for leaf, values in leaves.items():
        if _STR_ONLY.issuperset(map(type, values)):  # not known valid when collected
            new = set(values)
            batches.append((leaf, list(new), new))
        else:
            keys = {v if type(v) is str else (type(v), v) for v in values}
            if not leaf.valid.issuperset(keys):
                batches.append((leaf, values,
                                {k for k in keys if type(k) is not tuple or k[0] is not float}))
    if not batches:
        return
    _FIELDS.validate([(leaf, batch) for leaf, batch, _ in batches])
    for leaf, _, valid in batches:
        if len(leaf.valid) > _VALID_STRINGS_PER_FIELD:
            leaf.valid.clear()
        leaf.valid.update(valid)


_STR_ONLY: Final = frozenset({str})


def _validate_fast(bundle: dict[str, Any]) -> None:
    """Validate ``bundle`` as ``Bundle.model_validate`` would, node by node (see _split)."""
    try:
        _check_fast(bundle)
    except Exception as e:  # any failure rejects; the whole-Bundle models say where
        try:
            Bundle.model_validate(bundle)
        except Exception as full:
            raise OutputValidationError(f"output Bundle is not valid FHIR R4: {full}") from e
        raise OutputValidationError(f"output Bundle is not valid FHIR R4: {e!r}") from e
    _check_rules(bundle)


def _validate_full(bundle: dict[str, Any]) -> None:
    """Validate ``bundle`` with ``Bundle.model_validate`` (which validates every entry's
    resource with its own R4B model), as a whole."""
    try:
        Bundle.model_validate(bundle)
    except Exception as e:
        raise OutputValidationError(f"output Bundle is not valid FHIR R4: {e}") from e
    _check_rules(bundle)


def _check_rules(bundle: dict[str, Any]) -> None:
    bad = _check_bindings(bundle) + _check_invariants(bundle)
    if bad:
        raise OutputValidationError("output Bundle is not valid FHIR R4: " + "; ".join(bad))


def _check_bindings(bundle: dict[str, Any]) -> list[str]:
    """Codes of required bindings filled from data (the R4B models do not check them)."""
    bad: list[str] = []

    def need(ok: bool, where: str, value: Any) -> None:
        if not ok:
            bad.append(f"{where}: {value!r} is not in the required value set")

    for i, entry in enumerate(bundle.get("entry", [])):
        r = entry["resource"]
        at = f"Bundle.entry[{i}].resource({r.get('resourceType')})"
        kind = r.get("resourceType")
        if kind == "CarePlan":
            for j, act in enumerate(r.get("activity", [])):
                d = act.get("detail")
                if d is None:
                    continue
                need(d.get("status") in _ACTIVITY_STATUS, f"{at}.activity[{j}].detail.status",
                     d.get("status"))
                if "kind" in d:
                    need(d["kind"] in _ACTIVITY_KIND, f"{at}.activity[{j}].detail.kind",
                         d["kind"])
                unit = d.get("scheduledTiming", {}).get("repeat", {}).get("periodUnit")
                if unit is not None:
                    need(unit in _UNITS_OF_TIME, f"{at}.activity[{j}]...periodUnit", unit)
        elif kind == "ServiceRequest":
            need(r.get("priority") in _REQUEST_PRIORITY, f"{at}.priority", r.get("priority"))
        elif kind == "DetectedIssue":
            need(r.get("severity") in _DETECTED_ISSUE_SEVERITY, f"{at}.severity",
                 r.get("severity"))
        elif kind == "OperationOutcome":
            for j, issue in enumerate(r.get("issue", [])):
                need(issue.get("severity") in _ISSUE_SEVERITY, f"{at}.issue[{j}].severity",
                     issue.get("severity"))
                need(issue.get("code") in _ISSUE_TYPE, f"{at}.issue[{j}].code", issue.get("code"))
    return bad


def _check_invariants(bundle: dict[str, Any]) -> list[str]:
    """FHIR invariants the R4B models do not check, for what this module writes."""
    bad: list[str] = []
    urls: set[Any] = set()
    for i, entry in enumerate(bundle.get("entry", [])):
        r = entry.get("resource", {})
        at = f"Bundle.entry[{i}]"
        url = entry.get("fullUrl")
        if url in urls:  # bdl-7
            bad.append(f"{at}.fullUrl: {url!r} is not unique in the Bundle")
        urls.add(url)
        if url != f"urn:uuid:{r.get('id')}":
            bad.append(f"{at}.fullUrl: {url!r} is not urn:uuid: and the resource id")
        if r.get("resourceType") == "CarePlan":
            for j, act in enumerate(r.get("activity", [])):
                # cpl-3 (reference or detail, not both); this module always gives one
                if ("reference" in act) == ("detail" in act):
                    bad.append(f"{at}.resource.activity[{j}]: needs exactly one of reference "
                               "and detail")
    return bad


# --- public ---------------------------------------------------------------------------------


def checked_bundle(raw: dict[str, Any], *, full_validation: bool = False) -> dict[str, Any]:
    """``raw`` pruned, once valid FHIR R4 (see the module docstring); raises
    ``OutputValidationError`` otherwise. ``raw`` itself is pruned in place and returned, or
    (``full_validation``, or when the node-by-node walk fails and the check says why) a
    pruned copy: either way byte for byte ``_prune(raw)``. ``full_validation`` (for
    cross-checks) validates with ``Bundle.model_validate`` as a whole instead of node by
    node; both accept exactly the same Bundles."""
    if full_validation:
        bundle: dict[str, Any] = _prune(raw)
        _validate_full(bundle)
        return bundle
    try:
        bundle = _prune_check_fast(raw)
    except Exception:  # _validate_fast says why (or, if the fast check was wrong, accepts)
        bundle = _prune(raw)
        _validate_fast(bundle)
        return bundle
    _check_rules(bundle)
    return bundle

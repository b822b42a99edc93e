"""Strict JSON text in: the one parser the library and the CDS Hooks service share.

``parse_json`` accepts what ``json.loads`` accepts, except what cannot be used safely:

- text that is not valid UTF-8 (bytes; UTF-16/32 with their byte-order detection as
  ``json.loads`` does), named by byte offset;
- a lone surrogate (``"\\ud800"`` as an escape, or in a ``str`` given directly): it cannot
  be written back out as UTF-8, so no output could name it; named by its path;
- the same key twice in one object: which value counts would be a guess (``json`` and
  ``orjson`` keep the last); named by its path;
- ``NaN``, ``Infinity``, ``-Infinity`` (not JSON).

Both failures raise ``JSONTextError``, whose ``path`` (segments: keys and list indexes) says
where; ``where(root)`` writes it as a FHIRPath-like expression such as
``Bundle.entry[3].resource.subject``. Messages name keys and positions, never values.

``unusable_text_path`` checks an already-parsed value (a ``dict`` a caller built) for lone
surrogates: the fast path is one ``orjson.dumps`` (which refuses them); only when that fails
is the value walked to find where.

Cost: text that holds nothing to refuse (the usual case) is read by ``orjson.loads`` and
proved to give what ``json.loads`` gives (``_fast``: ~0.2 ms for the 55 kB example patient,
where the strict parse below takes ~0.35-0.5 ms). ``orjson`` alone would not do: it keeps
the last of duplicate keys silently, turns integers over 64 bits into floats and refuses
``1e400`` (``json`` reads it as infinity). Whenever the proof does not go through, the text
is parsed again by ``json.loads`` with an ``object_pairs_hook`` (~2x ``json.loads``), which
alone decides what is refused and with which message: the fast path never changes a result
or an error (tests/test_json_text.py checks both paths against each other).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
    encode_basestring_ascii,
)
from typing import Any

import orjson

from fhir_adapters._errors import JSONTextError, Path, _printable, format_path

__all__ = [
    "JSONTextError", "encoder", "format_path", "parse_json", "surrogate_error",
    "unusable_text_path",
]

def _first_repeated(keys: list[str]) -> str:
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            return k
        seen.add(k)
    raise AssertionError("no repeated key")


class _Duplicate(dict[str, Any]):
    """An object that had a key twice (``key``); found by ``_first`` after the parse."""

    key: str = ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(data: bytes | bytearray) -> str:
    encoding = json.detect_encoding(data)
    try:
        return bytes(data).decode(encoding)
    except UnicodeDecodeError as e:
        name = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        raise JSONTextError(f"the input is not valid {name} text (byte {e.start})") from None


def _may_hold_surrogate(text: str) -> bool:
    """Cheap: no ``\\uD8xx``-``\\uDFxx`` escape and no raw surrogate means none at all."""
    if "\\ud" in text or "\\uD" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SLOW: Any = object()  # ``_fast`` could not prove its value is the strict parse's


def _fast(text: str) -> Any:
    """``orjson.loads(text)`` when it is provably what the strict parse returns, else
    ``_SLOW``. The proof: orjson read it (so it is JSON: no ``NaN``, no lone surrogate, no
    control character, not nested 1024 deep) and wrote it back out (no lone surrogate); no
    float came from an integer over 64 bits (orjson writes every float that large with an
    ``e+`` exponent; ``e+`` anywhere, even in a text, takes the strict parse); and no key
    was lost to a duplicate: a ``:`` outside a JSON string separates a key from its value,
    so the text's colons are its keys plus the colons inside its strings, and the value
    written back compactly has as many only when no key and no string was dropped (an
    escaped colon, ``\\u003a``, would count in the value and not in the text: such text takes
    the strict parse)."""
    if "\\" in text and "\\u003" in text:
        return _SLOW
    try:
        value = orjson.loads(text)
        again = orjson.dumps(value)
    except (orjson.JSONDecodeError, TypeError):
        return _SLOW
    if b"+" in again and b"e+" in again:
        return _SLOW
    if text.count(":") != again.count(b":"):
        return _SLOW
    return value


def parse_json(data: str | bytes | bytearray) -> Any:
    """The value the JSON text holds; ``JSONTextError`` saying where it is unusable."""
    text = _decode(data) if isinstance(data, bytes | bytearray) else data
    value = _fast(text) if isinstance(text, str) else _SLOW
    if value is not _SLOW:
        return value
    return _strict(text)


def _strict(text: str) -> Any:
    """``parse_json`` without the fast path: what it returns or raises is the contract."""
    duplicates = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        duplicates = True
        dup = _Duplicate(obj)
        dup.key = _first_repeated([k for k, _ in items])
        return dup

    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise JSONTextError(f"the input is not JSON ({e.msg} at line {e.lineno} column "
                            f"{e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise JSONTextError(f"the input is not JSON ({e})"
                            if isinstance(e, ValueError) else
                            "the input is not JSON (nested too deeply)") from None
    if duplicates:
        found = _first(value, lambda v: isinstance(v, _Duplicate))
        assert found is not None
        path, obj = found
        key = obj.key
        raise JSONTextError(f"the key '{_printable(key)}' appears twice in one JSON object "
                            "({where}); keys must be unique (which value counts would be a "
                            "guess)", (*path, key), code="structure", at=path)
    if _may_hold_surrogate(text):
        where = unusable_text_path(value)
        if where is not None:
            raise surrogate_error(where)
    return value


def surrogate_error(path: Path) -> JSONTextError:
    """The error for a lone surrogate at ``path`` (what ``parse_json`` raises)."""
    return JSONTextError("a text is not valid Unicode (a lone surrogate) at {where}", path)


def _has_surrogate(v: Any) -> bool:
    if not isinstance(v, str) or v.isascii():
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unusable_text_path(value: Any) -> Path | None:
    """Where the first lone surrogate is (in a key or a text value), or None."""
    try:
        orjson.dumps(value)
        return None  # orjson refuses any str that is not valid Unicode
    except TypeError:
        pass  # a surrogate, or a value orjson does not write (not ours to judge here)
    found = _first(value, _has_surrogate, keys=True)
    return None if found is None else found[0]


def _walk(value: Any) -> Iterator[tuple[Path, Any, bool]]:
    """(path, item, is_key) in document order, iteratively (no recursion limit)."""
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack:
        path, v = stack.pop()
        yield path, v, False
        if isinstance(v, dict):
            items = list(v.items())
            for k, _ in items:
                yield (*path, k), k, True
            stack.extend(((*path, k), x) for k, x in reversed(items))
        elif isinstance(v, list):
            stack.extend(((*path, i), x) for i, x in reversed(list(enumerate(v))))


def _first(value: Any, test: Any, *, keys: bool = False) -> tuple[Path, Any] | None:
    for path, v, is_key in _walk(value):
        if (keys or not is_key) and test(v):
            return path, v
    return None


def encoder(**options: Any) -> Callable[[Any], str]:
    """``json.dumps(v, **options)`` for acyclic values, without building an encoder per call."""
    encoder = json.JSONEncoder(check_circular=False, **options)
    if c_make_encoder is None:  # no C accelerator
        return encoder.encode
    iterencode = c_make_encoder(
        None, encoder.default,
        encode_basestring_ascii if encoder.ensure_ascii else encode_basestring,
        None, encoder.key_separator, encoder.item_separator, encoder.sort_keys,
        encoder.skipkeys, encoder.allow_nan)

    def encode(v: Any) -> str:
        return "".join(iterencode(v, 0))

    return encode

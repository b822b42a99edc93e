"""Unusable JSON text (issue 13, findings 8 and 9): a lone surrogate, invalid UTF-8 and a key
twice in one object make the input invalid, named by where; the library raises
``InvalidBundleError``, the CLI exits 2 with the OperationOutcome; never a
``UnicodeEncodeError`` nor a silent "last key wins"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import movement_cds
from fhir_adapters._json_text import JSONTextError, format_path, parse_json

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "examples" / "example-patient.json").read_text()
AS_OF = "2026-11-02T09:00:00Z"


def _entry_with(resource_type: str) -> int:
    entries = json.loads(EXAMPLE)["entry"]
    return next(i for i, e in enumerate(entries) if e["resource"]["resourceType"] == resource_type)


def _issue(data: Any) -> dict[str, Any]:
    with pytest.raises(movement_cds.InvalidBundleError) as caught:
        movement_cds.evaluate(data, as_of=AS_OF)
    issues = caught.value.operation_outcome["issue"]
    assert len(issues) == 1, issues
    issue: dict[str, Any] = issues[0]
    json.dumps(issue).encode("utf-8")  # the outcome itself can always be written out
    return issue


def _with_surrogate_subject(text_form: bool) -> Any:
    """The first Observation's subject display holds a lone surrogate."""
    i = _entry_with("Observation")
    if text_form:
        b = json.loads(EXAMPLE)
        b["entry"][i]["resource"]["subject"]["display"] = "SURROGATE"
        return json.dumps(b).replace('"SURROGATE"', '"x\\ud800y"'), i
    b = json.loads(EXAMPLE)
    b["entry"][i]["resource"]["subject"]["display"] = "x\ud800y"
    return b, i


@pytest.mark.parametrize("form", ["str", "bytes", "dict"])
def test_lone_surrogate_is_invalid_input_naming_where(form: str) -> None:
    data, i = _with_surrogate_subject(text_form=form != "dict")
    if form == "bytes":
        data = data.encode("utf-8")
    issue = _issue(data)
    assert issue["code"] == "invalid"
    assert issue["expression"] == [f"Bundle.entry[{i}].resource.subject.display"]
    assert "lone surrogate" in issue["diagnostics"]


def test_surrogate_encoded_as_utf8_bytes_is_invalid_utf8() -> None:
    """``\\xed\\xa0\\x80`` (a surrogate written as UTF-8) is not UTF-8: named by byte."""
    text = EXAMPLE.replace('"gender"', '"note": "\udead", "gender"', 1)
    raw = text.encode("utf-8", "surrogatepass")
    at = raw.index(b"\xed")
    assert _issue(raw)["diagnostics"] == f"the input is not valid UTF-8 text (byte {at})"


def test_invalid_utf8_names_the_byte() -> None:
    raw = EXAMPLE.encode()
    at = raw.index(b'"female"') + 1 if b'"female"' in raw else raw.index(b'"male"') + 1
    bad = raw[:at] + b"\xff" + raw[at:]
    assert _issue(bad)["diagnostics"] == f"the input is not valid UTF-8 text (byte {at})"


@pytest.mark.parametrize("key", ["subject", "valueBoolean", "status"])
def test_duplicate_key_is_invalid_naming_where(key: str) -> None:
    b = json.loads(EXAMPLE)
    i = next(i for i, e in enumerate(b["entry"]) if key in e["resource"])
    res = b["entry"][i]["resource"]
    first = json.dumps({key: res[key]})[1:-1]
    text = json.dumps(b).replace(first, first + ", " + first, 1)
    assert text != json.dumps(b)
    issue = _issue(text)
    assert issue["code"] == "structure"
    assert issue["expression"] == [f"Bundle.entry[{i}].resource.{key}"]
    assert f"the key '{key}' appears twice" in issue["diagnostics"]
    assert f"(Bundle.entry[{i}].resource)" in issue["diagnostics"]


def test_a_valid_surrogate_pair_is_fine() -> None:
    b = json.loads(EXAMPLE)
    b["entry"][0]["resource"].setdefault("name", [{"text": "x"}])
    text = json.dumps(b).replace('"text": "x"', '"text": "\\ud83d\\ude00"', 1)
    assert movement_cds.evaluate(text, as_of=AS_OF).bundle["resourceType"] == "Bundle"


def _cli(data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "movement_cds", "evaluate", "-", "--as-of",
                           AS_OF], input=data, capture_output=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("case", ["surrogate", "duplicate", "utf8"])
def test_cli_exits_2_with_the_operation_outcome(case: str) -> None:
    if case == "surrogate":
        raw = _with_surrogate_subject(text_form=True)[0].encode()
    elif case == "duplicate":
        raw = EXAMPLE.replace('"resourceType": "Bundle"',
                              '"resourceType": "Bundle", "resourceType": "Bundle"', 1).encode()
    else:
        raw = EXAMPLE.encode().replace(b'"Bundle"', b'"Bun\xc3dle"', 1)
    assert raw != EXAMPLE.encode()
    r = _cli(raw)
    assert r.returncode == 2, r.stderr.decode()
    outcome = json.loads(r.stdout)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert b"Traceback" not in r.stderr


# --- the parser itself: properties ---------------------------------------------------------

keys = st.text(max_size=6)
texts = st.text(max_size=8)  # includes lone surrogates
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20)


def _lone_surrogate_paths(v: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    def bad(s: str) -> bool:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if isinstance(v, str):
        return [path] if bad(v) else []
    out: list[tuple[Any, ...]] = []
    if isinstance(v, dict):
        for k, x in v.items():
            out += [(*path, k)] if bad(k) else []
            out += _lone_surrogate_paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _lone_surrogate_paths(x, (*path, i))
    return out


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_parse_json_reads_json_text_or_names_the_first_lone_surrogate(
        value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    bad = _lone_surrogate_paths(value)
    if not bad:
        assert parse_json(text) == json.loads(text)
        assert parse_json(text.encode()) == json.loads(text)
        return
    with pytest.raises(JSONTextError) as caught:
        parse_json(text)
    assert caught.value.path == bad[0]
    assert caught.value.where("$") == format_path("$", bad[0])


@settings(max_examples=300, deadline=None)
@given(json_values, st.data())
def test_parse_json_refuses_any_duplicate_key(value: Any, data: st.DataObject) -> None:
    """Wrap the value in objects; repeat one key of one object: the error names it."""
    outer = {"outer-a1": [value], "outer-b1": {"c": value}}  # longer than any inner key
    text = json.dumps(outer, ensure_ascii=True)
    key = data.draw(st.sampled_from(["outer-a1", "outer-b1"]))
    doubled = text.replace(f'"{key}": ', f'"{key}": 0, "{key}": ', 1)
    with pytest.raises(JSONTextError) as caught:
        parse_json(doubled)
    assert caught.value.path == (key,)
    assert caught.value.code == "structure"


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_orjson_and_parse_json_agree_on_unicode(value: Any) -> None:
    """What the service's JSON library (orjson) refuses as invalid Unicode, parse_json
    refuses too, and the other way round: one reading of the same bytes everywhere."""
    text = json.dumps(value, ensure_ascii=True).encode()
    try:
        orjson.loads(text)
        orjson_ok = True
    except orjson.JSONDecodeError:
        orjson_ok = False
    try:
        parse_json(text)
        ours_ok = True
    except JSONTextError:
        ours_ok = False
    assert orjson_ok == ours_ok


# --- the fast path (issue 15): orjson when provably the same, else the strict parse ---------

_NUMBERS = st.sampled_from([
    "0", "-0", "1", "-1", "7", "1.0", "-0.0", "0.5", "1e5", "1E+5", "2.5e-3", "1e400",
    "-1e400", "1e16", "123456789.123456789", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551615",
    "18446744073709551616", "123456789012345678901234567890", "5e-324", "1.7976931348623157e308",
    "0.1", "3.141592653589793238462643383279", "01", "1.", "NaN", "Infinity", "-Infinity",
]) | st.integers().map(str) | st.floats(allow_nan=False, allow_infinity=False).map(repr)
_CHARS = st.sampled_from(["a", "b", ":", ": ", "\\\"", "\\\\", "\\u003a", "\\u003A", "\\n",
                          "\\ud800", "\\udc00", "\\ud83d\\ude00", "é", "\u2028", "+", "e+",
                          "\\/", "{", "}", "[", "]", ",", "\\u0041"])
_STRINGS = st.lists(_CHARS, max_size=5).map(lambda parts: '"' + "".join(parts) + '"')
_KEYS = st.sampled_from(['"a"', '"b"', '"a:b"', '"\\u0061"', '"é"', '"\\u003a"']) | _STRINGS


def _text(draw: Any, depth: int) -> str:
    kind = draw(st.integers(0, 5 if depth < 4 else 2))
    ws = draw(st.sampled_from(["", " ", "\n  "]))
    if kind == 0:
        return draw(_NUMBERS)
    if kind == 1:
        return draw(_STRINGS)
    if kind == 2:
        return draw(st.sampled_from(["true", "false", "null"]))
    if kind == 3:
        items = [_text(draw, depth + 1) for _ in range(draw(st.integers(0, 3)))]
        return "[" + f",{ws}".join(items) + "]"
    pairs = [f"{draw(_KEYS)}{ws}:{ws}{_text(draw, depth + 1)}"
             for _ in range(draw(st.integers(0, 4)))]
    return "{" + ws + f",{ws}".join(pairs) + ws + "}"


@st.composite
def json_texts(draw: Any) -> str:
    """JSON-like text: duplicate keys, escaped colons, big integers, surrogates, junk."""
    return _text(draw, 0)


def _result(parse: Any, text: str) -> tuple[str, str]:
    try:
        value = parse(text)
    except JSONTextError as e:
        return "error", f"{e.code} {e.describe('Bundle')} {e.path!r}"
    return "value", repr(value)  # repr tells 1 from 1.0 and True, -0.0 from 0.0, key order


@settings(max_examples=400, deadline=None)
@given(json_texts())
def test_the_fast_path_never_changes_a_value_or_an_error(text: str) -> None:
    from fhir_adapters._json_text import _strict

    assert _result(parse_json, text) == _result(_strict, text)
    assert _result(parse_json, text.encode("utf-8")) == _result(_strict, text)


@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2}', '{"a": 1, "a": "\\u003a"}', '{"a:b": 1, "a": {"c": 1, "c": 1}}',
    '{"\\u003a": 1, ":": 2}',
    '{"x": 18446744073709551616}', '{"x": -9223372036854775809}', '{"x": 1e400}',
    '{"x": "\\ud800"}', '{"x": "\ud800"}', '{"x": NaN}', '[' * 2000 + ']' * 2000,
])
def test_text_the_fast_path_cannot_prove_goes_the_strict_way(text: str) -> None:
    from fhir_adapters._json_text import _SLOW, _fast, _strict

    assert _fast(text) is _SLOW
    assert _result(parse_json, text) == _result(_strict, text)


def test_the_examples_take_the_fast_path() -> None:
    """Otherwise the speed-up would be lost without any test failing."""
    from fhir_adapters._json_text import _SLOW, _fast

    for path in sorted((ROOT / "examples").glob("*.json")):
        text = path.read_text()
        fast = _fast(text)
        assert fast is not _SLOW, path.name
        assert repr(fast) == repr(json.loads(text))

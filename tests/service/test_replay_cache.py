"""The jti replay cache (cds_service._replay) on real SQLite files: shared by
processes, kept across a restart, purged after expiry, and failing closed (issue 13,
finding 1); and the verifier's JOSE work done by PyJWT, not by hand (finding 7)."""

from __future__ import annotations

import ast
import multiprocessing
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service._auth import AuthError, TokenVerifier
from cds_service._config import IssuerConfig
from cds_service._replay import ReplayCache, ReplayStoreError
from tests.service.conftest import ROOT
from tests.service.jwt_keys import AUD, ISS, SigningKey, claims, jwks, serving, token

NOW = 1_800_000_000.0


def _use(path: str, start: float, results: multiprocessing.Queue[bool]) -> None:
    cache = ReplayCache(path)
    while time.time() < start:  # all processes try at (nearly) the same instant
        time.sleep(0.0005)
    results.put(cache.remember("iss", "one-jti", NOW + 60, NOW))
    cache.close()


def test_of_many_processes_exactly_one_may_use_a_jti(tmp_path: Path) -> None:
    path = str(tmp_path / "replay.sqlite3")
    ReplayCache(path).close()  # the schema exists before the race
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[bool] = ctx.Queue()
    start = time.time() + 2.0
    procs = [ctx.Process(target=_use, args=(path, start, results)) for _ in range(6)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    assert got == [False] * 5 + [True]


def test_a_used_jti_survives_a_restart_and_is_forgotten_after_expiry(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite3"
    first = ReplayCache(path)
    assert first.remember("iss", "j", NOW + 60, NOW)
    first.close()
    again = ReplayCache(path)  # the service restarted
    assert not again.remember("iss", "j", NOW + 60, NOW + 30)
    assert again.remember("other-iss", "j", NOW + 60, NOW + 30)  # per issuer
    assert again.remember("iss", "j", NOW + 200, NOW + 61)  # the first one has expired
    assert not again.remember("iss", "j", NOW + 200, NOW + 62)
    again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_expired_rows_are_purged(tmp_path: Path) -> None:
    cache = ReplayCache(tmp_path / "replay.sqlite3")
    for i in range(20):
        cache.remember("iss", f"j{i}", NOW + i, NOW)
    cache.remember("iss", "late", NOW + 100, NOW + 10.5)
    assert cache.entries() == {("iss", f"j{i}") for i in range(11, 20)} | {("iss", "late")}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 30)),
                max_size=40))
def test_a_jti_is_accepted_again_only_once_its_token_expired(
        uses: list[tuple[str, int]]) -> None:
    """Against a model: a use is accepted iff no earlier accepted use of that jti is
    still live (``until`` not passed), with time going forward."""
    cache = ReplayCache(":memory:")
    live_until: dict[str, float] = {}
    now = NOW
    for jti, step in uses:
        now += step
        expected = live_until.get(jti, -1.0) < now
        assert cache.remember("iss", jti, now + 20, now) == expected
        if expected:
            live_until[jti] = now + 20
    cache.close()


def test_a_replay_cache_that_cannot_be_written_refuses_the_token(tmp_path: Path) -> None:
    """Fail closed: a locked cache file refuses the token, it does not let it through."""
    key = SigningKey("ES384")
    path = tmp_path / "replay.sqlite3"
    with serving(jwks(key)) as server, httpx.Client(trust_env=False) as http:
        v = TokenVerifier([IssuerConfig(ISS, jwks_url=server.url)], True, http=http,
                          replay_cache=path, clock=lambda: NOW)
        assert v.verify(f"Bearer {token(key, claims(NOW))}", AUD)["iss"] == ISS
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            started = time.monotonic()
            with pytest.raises(AuthError, match="replay cache unavailable"):
                v.verify(f"Bearer {token(key, claims(NOW))}", AUD)
            assert time.monotonic() - started < 5  # the busy timeout, not a hang
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert v.verify(f"Bearer {token(key, claims(NOW))}", AUD)["iss"] == ISS
        v.close()


def test_an_unusable_replay_cache_path_stops_the_verifier(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot open the replay cache"):
        TokenVerifier([IssuerConfig(ISS, jwks_url="https://ehr.example.org/jwks")], True,
                      replay_cache=tmp_path / "no-such-dir" / "replay.sqlite3")
    with pytest.raises(ReplayStoreError):
        ReplayCache(tmp_path / "no-such-dir" / "replay.sqlite3")


def test_jose_work_is_pyjwt_not_hand_written() -> None:
    """Finding 7: signature checks, JWS decoding and JWK parsing come from PyJWT; the
    service's own code calls no signature primitive of ``cryptography``."""
    hand_made = {"InvalidSignature", "encode_dss_signature", "padding", "ECDSA",
                 "EllipticCurvePublicNumbers", "RSAPublicNumbers", "hashes"}
    imported_jwt = False
    for path in sorted((ROOT / "cds_service").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "cryptography"):
                names = {a.name for a in node.names}
                assert not names & hand_made, (path.name, names & hand_made)
            if isinstance(node, ast.Import) and path.name == "_auth.py":
                imported_jwt |= any(a.name == "jwt" for a in node.names)
            if isinstance(node, ast.Attribute) and node.attr in ("verify", "sign") and \
                    isinstance(node.value, ast.Name) and node.value.id == "key":
                pytest.fail(f"{path.name}: a hand-made key.{node.attr}() call")
    assert imported_jwt

"""CDS Hooks bearer-JWT checks (C17-C19) against real keys and a real JWKS HTTP server."""

from __future__ import annotations

import json
import random
import string
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from cds_service._auth import AuthError, TokenVerifier
from cds_service._config import IssuerConfig
from tests.service.jwt_keys import (
    AUD,
    ISS,
    JWKSServer,
    SigningKey,
    b64json,
    b64url,
    claims,
    hmac_token,
    jwks,
    serving,
    token,
    unsigned_token,
)

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return SigningKey("ES384")


@pytest.fixture(scope="module")
def rs_key() -> SigningKey:
    return SigningKey("RS384")


@pytest.fixture
def server(es_key: SigningKey, rs_key: SigningKey) -> Iterator[JWKSServer]:
    with serving(jwks(es_key, rs_key)) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        yield client


def make_verifier(server: JWKSServer, clock: Clock, http: httpx.Client,
                  tenants: tuple[str, ...] = (), **kw: Any) -> TokenVerifier:
    issuer = IssuerConfig(ISS, jwks_url=server.url, tenants=tenants)
    kw.setdefault("jwks_timeout_seconds", 2.0)
    return TokenVerifier([issuer], True, clock=clock, http=http, **kw)


@pytest.fixture
def verifier(server: JWKSServer, clock: Clock, http: httpx.Client) -> TokenVerifier:
    return make_verifier(server, clock, http)


def bearer(t: str) -> str:
    return f"Bearer {t}"


def refused(v: TokenVerifier, header: str | None, *, aud: str = AUD,
            secret: str | None = None) -> str:
    """Assert ``verify`` raises AuthError (and nothing else); return its reason, after
    checking the reason does not leak the token."""
    with pytest.raises(AuthError) as info:
        v.verify(header, aud)
    reason = str(info.value)
    assert reason
    tok = secret if secret is not None else (header or "").removeprefix("Bearer ").strip()
    for part in tok.split("."):
        if len(part) > 12:
            assert part not in reason, "the reason leaks the token"
    assert info.value.__cause__ is None
    return reason


# -- accepted ------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_token_from_jwks_url(alg: str, es_key: SigningKey, rs_key: SigningKey,
                                   verifier: TokenVerifier, server: JWKSServer) -> None:
    key = es_key if alg == "ES384" else rs_key
    payload = claims(NOW, tenant="hospital-a")
    got = verifier.verify(bearer(token(key, payload)), AUD)
    assert got == payload
    assert server.requests == 1


def test_keys_are_cached(es_key: SigningKey, rs_key: SigningKey, verifier: TokenVerifier,
                         server: JWKSServer) -> None:
    for _ in range(5):
        verifier.verify(bearer(token(es_key, claims(NOW))), AUD)
        verifier.verify(bearer(token(rs_key, claims(NOW))), AUD)
    assert server.requests == 1


def test_valid_token_from_jwks_file(tmp_path: Path, es_key: SigningKey, clock: Clock) -> None:
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps(jwks(es_key)), encoding="utf-8")
    v = TokenVerifier([IssuerConfig(ISS, jwks_file=path)], True, clock=clock)
    try:
        payload = claims(NOW)
        assert v.verify(bearer(token(es_key, payload)), AUD) == payload
    finally:
        v.close()


def test_token_signed_by_pyjwt_is_accepted(rs_key: SigningKey, es_key: SigningKey,
                                           verifier: TokenVerifier) -> None:
    """Interoperability: tokens from a mainstream JWT library, not only our test signer."""
    for key in (rs_key, es_key):
        payload = claims(NOW)
        t = pyjwt.encode(payload, key.private, algorithm=key.alg,
                         headers={"kid": key.kid, "typ": "JWT"})
        assert verifier.verify(f"Bearer {t}", AUD) == payload


def test_bearer_scheme_is_case_insensitive(es_key: SigningKey,
                                           verifier: TokenVerifier) -> None:
    assert verifier.verify("bearer " + token(es_key, claims(NOW)), AUD)["iss"] == ISS


def test_expiry_leeway(es_key: SigningKey, server: JWKSServer, clock: Clock,
                       http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, leeway_seconds=5)
    v.verify(bearer(token(es_key, claims(NOW, exp=NOW - 4))), AUD)
    assert "expired" in refused(v, bearer(token(es_key, claims(NOW, exp=NOW - 6))))
    v.verify(bearer(token(es_key, claims(NOW, iat=NOW + 4))), AUD)
    assert "future" in refused(v, bearer(token(es_key, claims(NOW, iat=NOW + 6))))


def test_tenant_allowlisted(es_key: SigningKey, server: JWKSServer, clock: Clock,
                            http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, tenants=("hospital-a", "hospital-b"))
    assert v.verify(bearer(token(es_key, claims(NOW, tenant="hospital-b"))), AUD)
    assert "tenant" in refused(v, bearer(token(es_key, claims(NOW, tenant="hospital-c"))))
    assert "tenant" in refused(v, bearer(token(es_key, claims(NOW))))


# -- refused: the negative matrix -------------------------------------------------------------

Case = Callable[[SigningKey, SigningKey], str]

CASES: dict[str, tuple[Case, str]] = {
    "expired": (lambda es, rs: token(es, claims(NOW - 3600)), "expired"),
    "wrong audience": (
        lambda es, rs: token(es, claims(NOW, aud="https://cds.example.org/cds-services/other")),
        "aud"),
    "audience differs by a trailing slash": (
        lambda es, rs: token(es, claims(NOW, aud=AUD + "/")), "aud"),
    "audience as a list": (lambda es, rs: token(es, claims(NOW, aud=[AUD])), "aud"),
    "no audience": (lambda es, rs: token(es, claims(NOW, aud=None)), "aud"),
    "unknown issuer": (
        lambda es, rs: token(es, claims(NOW, iss="https://evil.example.org")), "issuer"),
    "no issuer": (lambda es, rs: token(es, claims(NOW, iss=None)), "issuer"),
    "alg none, empty signature": (lambda es, rs: unsigned_token(claims(NOW), es.kid), ""),
    "alg none, with a signature": (
        lambda es, rs: unsigned_token(claims(NOW), es.kid, b64url(b"x" * 96)), "alg"),
    "alg None spelled differently": (
        lambda es, rs: token(es, claims(NOW), alg="None"), "alg"),
    "HS256 keyed with the RSA public key PEM (key confusion)": (
        lambda es, rs: hmac_token(rs.public_pem(), claims(NOW), rs.kid), "alg"),
    "HS384 keyed with the RSA public key PEM": (
        lambda es, rs: hmac_token(rs.public_pem(), claims(NOW), rs.kid, "HS384"), "alg"),
    "HS256 keyed with the JWK JSON": (
        lambda es, rs: hmac_token(json.dumps(es.jwk()).encode(), claims(NOW), es.kid), "alg"),
    "RS256 (not an accepted algorithm)": (
        lambda es, rs: token(rs, claims(NOW), alg="RS256"), "alg"),
    "ES256": (lambda es, rs: token(es, claims(NOW), alg="ES256"), "alg"),
    "PS384": (lambda es, rs: token(rs, claims(NOW), alg="PS384"), "alg"),
    "alg says RS384 for the EC key": (
        lambda es, rs: token(es, claims(NOW), alg="RS384"), "not a RS384 key"),
    "alg says ES384 but signed by the RSA key under the EC kid": (
        lambda es, rs: token(rs, claims(NOW), alg="ES384", kid=es.kid), "signature"),
    "signed by a stranger's key with a known kid": (
        lambda es, rs: token(SigningKey("ES384", kid=es.kid), claims(NOW)), "signature"),
    "payload swapped after signing": (
        lambda es, rs: _swap_payload(token(es, claims(NOW)), claims(NOW, sub="admin")),
        "signature"),
    "wrong typ": (lambda es, rs: token(es, claims(NOW), typ="JOSE"), "typ"),
    "typ at+jwt": (lambda es, rs: token(es, claims(NOW), typ="at+jwt"), "typ"),
    "no typ": (lambda es, rs: token(es, claims(NOW), typ=None), "typ"),
    "no kid": (lambda es, rs: token(es, claims(NOW), kid=None), "kid"),
    "kid not a string": (lambda es, rs: token(es, claims(NOW), kid=7), "kid"),
    "crit header": (lambda es, rs: token(es, claims(NOW), crit=["exp"]), "crit"),
    "iat in the future": (lambda es, rs: token(es, claims(NOW, iat=NOW + 3600)), "future"),
    "no iat": (lambda es, rs: token(es, claims(NOW, iat=None)), "iat"),
    "iat not a number": (lambda es, rs: token(es, claims(NOW, iat="yesterday")), "iat"),
    "no exp": (lambda es, rs: token(es, claims(NOW, exp=None)), "exp"),
    "exp a boolean": (lambda es, rs: token(es, claims(NOW, exp=True)), "exp"),
    "exp a day ahead": (lambda es, rs: token(es, claims(NOW, exp=NOW + 86400)), "exp"),
    "nbf in the future": (lambda es, rs: token(es, claims(NOW, nbf=NOW + 600)), "nbf"),
    "no jti": (lambda es, rs: token(es, claims(NOW, jti=None)), "jti"),
    "empty jti": (lambda es, rs: token(es, claims(NOW, jti="")), "jti"),
    "jti not a string": (lambda es, rs: token(es, claims(NOW, jti=12)), "jti"),
    "unknown kid": (lambda es, rs: token(SigningKey("ES384"), claims(NOW)), "unknown kid"),
}


def _swap_payload(t: str, payload: dict[str, Any]) -> str:
    h, _, s = t.split(".")
    return f"{h}.{b64json(payload)}.{s}"


@pytest.mark.parametrize("name", list(CASES))
def test_refused(name: str, es_key: SigningKey, rs_key: SigningKey,
                 verifier: TokenVerifier) -> None:
    make, expected = CASES[name]
    reason = refused(verifier, bearer(make(es_key, rs_key)))
    assert expected.lower() in reason.lower(), reason


def test_refusals_follow_the_spec_order(es_key: SigningKey, verifier: TokenVerifier) -> None:
    """C19 order: iss, signature, aud, exp, tenant, jti: the first failing check is named."""
    stranger = SigningKey("ES384", kid=es_key.kid)
    everything_wrong = claims(NOW - 7200, iss="https://evil.example.org", aud="x")
    assert "issuer" in refused(verifier, bearer(token(stranger, everything_wrong)))
    bad_sig = claims(NOW - 7200, aud="x")
    assert "signature" in refused(verifier, bearer(token(stranger, bad_sig)))
    assert "aud" in refused(verifier, bearer(token(es_key, claims(NOW - 7200, aud="x"))))
    assert "expired" in refused(verifier, bearer(token(es_key, claims(NOW - 7200))))


def test_missing_or_foreign_authorization_header(es_key: SigningKey,
                                                 verifier: TokenVerifier) -> None:
    t = token(es_key, claims(NOW))
    assert "no Authorization" in refused(verifier, None)
    assert "no Authorization" in refused(verifier, "")
    assert "no Authorization" in refused(verifier, "   ")
    assert "Bearer" in refused(verifier, "Basic dXNlcjpwYXNz")
    assert "Bearer" in refused(verifier, "Bearer")
    assert "Bearer" in refused(verifier, t, secret=t)  # no scheme at all
    assert "Bearer" in refused(verifier, f"Bearer {t} extra", secret=t)
    assert "Bearer" in refused(verifier, f"Bearer\t{t}", secret=t)


@pytest.mark.parametrize("raw", [
    "abc",
    "a.b",
    "a.b.c.d",
    "..",
    "a..c",
    "!!!.???.***",
    "eyJhbGciOiJFUzM4NCJ9.e30",                                   # two parts
    "eyJhbGciOiJFUzM4NCJ9.e30.",                                  # empty signature
    b64url(b"not json") + "." + b64json({}) + ".c2ln",           # header not JSON
    b64url(b"\xff\xfe") + "." + b64json({}) + ".c2ln",           # header not UTF-8
    b64json([1, 2]) + "." + b64json({}) + ".c2ln",                # header not an object
    b64url(b'{"alg":"ES384","alg":"none"}') + "." + b64json({}) + ".c2ln",  # duplicate
    b64json({"alg": "ES384", "typ": "JWT", "kid": "k"}) + ".e30x.c2ln",  # bad base64 length
    b64json({"alg": "ES384", "typ": "JWT", "kid": "k"}) + "." + b64url(b"[]") + ".c2ln",
    b64json({"alg": "ES384", "typ": "JWT", "kid": "k"}) + "." + b64url(b"1e999") + ".c2ln",
    "A" * 20_000,
    b64url(b"[" * 5000) + "." + b64json({}) + ".c2ln",            # nesting too deep
])
def test_malformed_tokens(raw: str, verifier: TokenVerifier) -> None:
    refused(verifier, bearer(raw), secret="")


def test_random_garbage_is_always_an_auth_error(es_key: SigningKey,
                                                verifier: TokenVerifier) -> None:
    rng = random.Random(20261102)
    alphabet = string.ascii_letters + string.digits + "-_.=+/ "
    valid = token(es_key, claims(NOW))
    for _ in range(300):
        n = rng.randint(0, 200)
        candidates = [
            "".join(rng.choice(alphabet) for _ in range(n)),
            ".".join(b64url(rng.randbytes(rng.randint(0, 40))) for _ in range(3)),
        ]
        chars = list(valid)
        for _ in range(rng.randint(1, 4)):  # a valid token with a few bytes changed
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        candidates.append("".join(chars))
        for raw in candidates:
            if raw == valid:
                continue
            with pytest.raises(AuthError):
                verifier.verify(bearer(raw), AUD)


def test_replayed_jti_is_refused(es_key: SigningKey, rs_key: SigningKey,
                                 verifier: TokenVerifier) -> None:
    t = token(es_key, claims(NOW, jti="once"))
    verifier.verify(bearer(t), AUD)
    assert "replay" in refused(verifier, bearer(t))
    # the same jti in a freshly signed token is a replay too
    assert "replay" in refused(verifier, bearer(token(rs_key, claims(NOW, jti="once"))))


def test_replay_cache_forgets_only_after_expiry(es_key: SigningKey, server: JWKSServer,
                                                clock: Clock, http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, leeway_seconds=0)
    v.verify(bearer(token(es_key, claims(NOW, jti="j", exp=NOW + 60))), AUD)
    clock.now = NOW + 59
    assert "replay" in refused(v, bearer(token(es_key, claims(NOW, jti="j", exp=NOW + 60))))
    clock.now = NOW + 61  # the first token has expired: the entry may go
    v.verify(bearer(token(es_key, claims(NOW + 61, jti="other"))), AUD)
    assert ("https://ehr.example.org", "j") not in v._seen


def test_replay_cache_is_bounded(es_key: SigningKey, server: JWKSServer, clock: Clock,
                                 http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, jti_cache_size=3)
    for i in range(10):
        v.verify(bearer(token(es_key, claims(NOW, jti=f"j{i}", exp=NOW + 100 + i))), AUD)
    assert len(v._seen) == 3
    assert "replay" in refused(v, bearer(token(es_key, claims(NOW, jti="j9"))))


def test_replay_cache_is_thread_safe(es_key: SigningKey, verifier: TokenVerifier) -> None:
    verifier.verify(bearer(token(es_key, claims(NOW))), AUD)  # keys cached first
    t = bearer(token(es_key, claims(NOW, jti="race")))
    outcomes: list[bool] = []
    barrier = threading.Barrier(16, timeout=10)

    def attempt() -> None:
        barrier.wait()
        try:
            verifier.verify(t, AUD)
            outcomes.append(True)
        except AuthError:
            outcomes.append(False)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    assert sorted(outcomes) == [False] * 15 + [True]


# -- the JWK Set: refetch on unknown kid, but never hammered ------------------------------------

def test_unknown_kid_refetches_once_then_not_again_within_the_interval(
        es_key: SigningKey, server: JWKSServer, clock: Clock, http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, jwks_min_refetch_seconds=60)
    v.verify(bearer(token(es_key, claims(NOW))), AUD)
    assert server.requests == 1
    clock.now += 61
    unknown = SigningKey("ES384")
    assert "unknown kid" in refused(v, bearer(token(unknown, claims(clock.now))))
    assert server.requests == 2  # refetched once
    for _ in range(50):  # an attacker sending random kids gets no more fetches
        refused(v, bearer(token(SigningKey("ES384", kid=f"k{_}"), claims(clock.now))))
    assert server.requests == 2
    assert v.jwks_fetch_count(ISS) == 2
    clock.now += 61
    refused(v, bearer(token(unknown, claims(clock.now))))
    assert server.requests == 3


def test_rotated_key_is_picked_up(es_key: SigningKey, server: JWKSServer, clock: Clock,
                                  http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, jwks_min_refetch_seconds=60)
    v.verify(bearer(token(es_key, claims(NOW))), AUD)
    new = SigningKey("RS384")
    server.document = jwks(es_key, new)
    clock.now += 61
    payload = claims(clock.now)
    assert v.verify(bearer(token(new, payload)), AUD) == payload
    assert server.requests == 2


def test_jku_is_never_followed(es_key: SigningKey, verifier: TokenVerifier) -> None:
    """A token naming its own key URL must not get its keys from there."""
    attacker = SigningKey("ES384", kid="attacker-key")
    with serving(jwks(attacker)) as evil:
        forged = token(attacker, claims(NOW), jku=evil.url)
        assert "unknown kid" in refused(verifier, bearer(forged))
        assert evil.requests == 0
    # a legitimate token with a jku is judged on the configured keys only
    payload = claims(NOW)
    assert verifier.verify(bearer(token(es_key, payload, jku="https://x.invalid/k")),
                           AUD) == payload


def test_jwks_without_usable_keys_and_hmac_secrets_are_ignored(
        es_key: SigningKey, clock: Clock, http: httpx.Client) -> None:
    doc = {"keys": [
        {"kty": "oct", "kid": "shared", "k": b64url(b"secret"), "alg": "HS256"},
        {"kty": "EC", "kid": "bad", "crv": "P-384", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC", "kid": "p256", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {**es_key.jwk(), "use": "enc", "kid": "enc-key"},
        es_key.jwk(),
    ]}
    with serving(doc) as s:
        v = make_verifier(s, clock, http)
        assert v.verify(bearer(token(es_key, claims(NOW))), AUD)["iss"] == ISS
        forged = hmac_token(b"secret", claims(NOW), "shared")
        assert "alg" in refused(v, bearer(forged))
        assert "unknown kid" in refused(
            v, bearer(token(es_key, claims(NOW), kid="enc-key")))


def test_jwks_server_down_is_an_auth_error_not_a_hang(es_key: SigningKey, clock: Clock,
                                                      http: httpx.Client) -> None:
    s = JWKSServer(jwks(es_key))
    url = s.url
    s.stop()  # nobody listens on that port any more
    v = TokenVerifier([IssuerConfig(ISS, jwks_url=url)], True, clock=clock, http=http,
                      jwks_timeout_seconds=1)
    started = time.monotonic()
    assert "unknown kid" in refused(v, bearer(token(es_key, claims(NOW))))
    assert time.monotonic() - started < 5


def test_slow_jwks_server_times_out(es_key: SigningKey, clock: Clock,
                                    http: httpx.Client) -> None:
    with serving(jwks(es_key)) as s:
        s.delay = 3.0
        v = make_verifier(s, clock, http, jwks_timeout_seconds=0.5)
        started = time.monotonic()
        refused(v, bearer(token(es_key, claims(NOW))))
        assert time.monotonic() - started < 2.5
        # the failed first fetch also respects the refetch interval: no fetch storm
        refused(v, bearer(token(es_key, claims(NOW))))
        assert v.jwks_fetch_count(ISS) == 1


def test_jwks_error_status_keeps_the_previous_keys(es_key: SigningKey, server: JWKSServer,
                                                   clock: Clock, http: httpx.Client) -> None:
    v = make_verifier(server, clock, http, jwks_max_age_seconds=100,
                      jwks_min_refetch_seconds=10)
    v.verify(bearer(token(es_key, claims(NOW))), AUD)
    server.status = 503
    clock.now += 200  # cache stale: refetch fails, the keys we had still work
    assert v.verify(bearer(token(es_key, claims(clock.now))), AUD)["iss"] == ISS
    assert server.requests == 2


# -- configuration ----------------------------------------------------------------------------

def test_optional_auth(es_key: SigningKey, server: JWKSServer, clock: Clock,
                       http: httpx.Client) -> None:
    v = TokenVerifier([IssuerConfig(ISS, jwks_url=server.url)], False, clock=clock, http=http)
    assert v.verify(None, AUD) == {}
    assert v.verify(bearer(token(es_key, claims(NOW))), AUD)["iss"] == ISS
    refused(v, bearer(token(es_key, claims(NOW, aud="x"))))  # a bad token is still bad
    off = TokenVerifier([], False, clock=clock, http=http)
    assert off.verify(None, AUD) == {} and off.verify("Bearer junk", AUD) == {}


def test_bad_configuration_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no issuer"):
        TokenVerifier([], True)
    with pytest.raises(ValueError, match="https"):
        TokenVerifier([IssuerConfig(ISS, jwks_url="http://ehr.example.org/jwks")], True)
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier([IssuerConfig(ISS)], True)
    with pytest.raises(ValueError, match="twice"):
        TokenVerifier([IssuerConfig(ISS, jwks_url="https://a/j"),
                       IssuerConfig(ISS, jwks_url="https://b/j")], True)
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="cannot read"):
        TokenVerifier([IssuerConfig(ISS, jwks_file=missing)], True)
    (tmp_path / "bad.json").write_text('{"nokeys": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="JWK Set"):
        TokenVerifier([IssuerConfig(ISS, jwks_file=tmp_path / "bad.json")], True)

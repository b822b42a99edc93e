"""Bearer-JWT authentication of CDS clients (CDS Hooks 2.0 security; spec points C17-C19).

Every call (discovery, service, feedback) carries ``Authorization: Bearer <JWT>``. The
checks, in the order the spec gives them (the first failure wins):

1. the header is present and is ``Bearer`` followed by a three-part compact JWS;
2. JOSE header: ``typ`` is ``JWT``; ``alg`` is ES384 or RS384 (``none``, every HMAC
   algorithm and anything else are refused); ``kid`` is present; no ``crit``;
3. ``iss`` is an allowlisted issuer;
4. the signature verifies with the key ``kid`` from *that issuer's* JWK Set (cached; fetched
   again once when ``kid`` is unknown, never more often than ``jwks_min_refetch_seconds``);
5. ``aud`` equals the exact URL being called;
6. ``exp`` has not passed (``leeway_seconds`` of clock skew allowed), and is not further in
   the future than ``jti_ttl_seconds`` (CDS Hooks caps it at 5 minutes; a longer-lived token
   could outlive the replay cache); ``iat`` is present and not in the future beyond leeway;
   ``nbf``, when present, has been reached;
7. ``tenant`` is allowlisted, for issuers configured with (a non-empty list of) tenants;
8. ``jti`` has not been seen before from this issuer (replay cache; an entry lives until
   the token could no longer pass step 6). The cache is a SQLite file
   (``cds_service._replay``) shared by every worker process of the host and kept
   across restarts; when it cannot be written the token is refused.

The JOSE work is PyJWT's: it decodes the compact JWS, parses the JWK Set keys (each bound
to ES384 or RS384, so a key is never used with another algorithm), verifies the signature
and compares ``aud`` with the endpoint as an exact string (``strict_aud``: a list is
refused). The time claims are compared here, against the verifier's ``clock``, so that they
follow the spec order above and tests can set the time. Fetching the JWK Set (size and
time limits, no redirects, no refetch storm) is done here with httpx.

Any failure raises :class:`AuthError`; the service answers 401 with no detail. The reason
string is for tests and debug logs: it never contains the token (nor any part of it but
short, ``repr``-quoted ``iss``/``kid``/``alg`` values).

The ``jku`` header parameter is ignored. Keys are only ever taken from the JWK Set
configured for the issuer: fetching keys from a URL named *by the token* would let anyone
sign a token with their own key and point us at it (the signature check would then prove
nothing). A ``jku`` that disagrees with the configured URL is not an error either, for the
same reason it is not trusted: it is data from an unauthenticated source.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from cds_service._errors import AuthError, ReplayStoreError
from cds_service._replay import open_replay_cache

__all__ = ["ALLOWED_ALGORITHMS", "AuthError", "IssuerSettings", "TokenVerifier", "parse_jwks"]

log = logging.getLogger("movement_cds.service.auth")

ALLOWED_ALGORITHMS = frozenset({"ES384", "RS384"})
MAX_TOKEN_LENGTH = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
MAX_JTI_LENGTH = 256
MIN_RSA_BITS = 2048

_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_\-.]+)\Z")

# Signature (with the algorithm bound to the key) and an exact string ``aud``; the time
# claims are checked here against the verifier's clock (PyJWT reads the system clock).
_JWT: Final = jwt.PyJWT(options={
    "verify_signature": True, "verify_aud": True, "strict_aud": True, "require": ["aud"],
    "verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_iss": False,
    "verify_sub": False, "verify_jti": False, "enforce_minimum_key_length": True})
_UNVERIFIED: Final = jwt.PyJWS()


class IssuerSettings(Protocol):
    """What the verifier reads from an issuer's configuration
    (``cds_service._config.IssuerConfig`` fits). ``tenants`` empty or ``None``:
    the ``tenant`` claim is not checked for this issuer."""

    @property
    def iss(self) -> str: ...
    @property
    def jwks_url(self) -> str | None: ...
    @property
    def jwks_file(self) -> str | os.PathLike[str] | None: ...
    @property
    def tenants(self) -> Sequence[str] | None: ...


def _short(value: object) -> str:
    """A log-safe rendering of an untrusted claim/header value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate member")
        out[k] = v
    return out


def _number(value: object) -> float | None:
    """A JSON number (not a boolean, finite) as float; ``None`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


# --- JWK Sets -------------------------------------------------------------------------------

_ALG_OF: Final = {"EC": "ES384", "RSA": "RS384"}


def _parse_jwk(jwk: dict[str, Any]) -> tuple[str, jwt.PyJWK] | None:
    """``(alg, key)`` for a usable signing key (PyJWT parses it, bound to that algorithm);
    ``None`` for a key we never use: not for signatures, HMAC secrets (``oct``), other
    curves, or an ``alg`` other than ES384/RS384."""
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return None
    alg = _ALG_OF.get(str(jwk.get("kty")))
    if alg is None or (alg == "ES384" and jwk.get("crv") != "P-384"):
        return None
    if jwk.get("alg", alg) != alg:
        return None
    key = jwt.PyJWK(jwk, algorithm=alg)  # jwt.PyJWTError / ValueError when malformed
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key shorter than {MIN_RSA_BITS} bits")
    return alg, key


def parse_jwks(document: object) -> dict[str, list[tuple[str, jwt.PyJWK]]]:
    """``kid -> [(alg, key), ...]`` from a JWK Set; keys without ``kid``, of other types, or
    malformed are skipped (one bad key does not disable its neighbours)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set (no 'keys' array)")
    out: dict[str, list[tuple[str, jwt.PyJWK]]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        try:
            parsed = _parse_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as e:
            log.warning("JWK %s skipped (%s)", _short(jwk.get("kid")), type(e).__name__)
            continue
        if parsed is not None:
            out.setdefault(jwk["kid"], []).append(parsed)
    return out


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        if host == "localhost":
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
    raise ValueError(f"jwks_url must be https:// (http:// only for loopback): {url!r}")


@dataclass
class _KeySet:
    """One issuer's keys: loaded from a file or fetched, cached, refreshed under a lock."""

    issuer: IssuerSettings
    keys: dict[str, list[tuple[str, jwt.PyJWK]]] = field(default_factory=dict)
    loaded: bool = False
    loaded_at: float = -math.inf
    attempted_at: float = -math.inf
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class TokenVerifier:
    """Checks CDS client JWTs (C17-C19). Thread-safe; one instance per service.

    ``required=False`` makes the token optional: with no ``Authorization`` header
    :meth:`verify` returns ``{}``; a token that *is* sent is still fully checked (when no
    issuer is configured at all, nothing is checked and ``{}`` is returned). With
    ``required=True`` at least one issuer must be configured.

    ``http``: the client used to fetch JWK Sets (one is created, and closed by
    :meth:`close`, when not given). Every fetch has a ``jwks_timeout_seconds`` timeout,
    does not follow redirects and reads at most 1 MiB.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        required: bool,
        *,
        leeway_seconds: float = 10,
        jti_ttl_seconds: int = 600,
        jti_cache_size: int = 100_000,
        replay_cache: str | os.PathLike[str] = ":memory:",
        jwks_max_age_seconds: float = 3600,
        jwks_min_refetch_seconds: float = 60,
        jwks_timeout_seconds: float = 3,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
    ) -> None:
        if not 0 <= leeway_seconds <= 300:
            raise ValueError("leeway_seconds must be between 0 and 300")
        if jti_ttl_seconds <= 0 or jti_cache_size <= 0:
            raise ValueError("jti_ttl_seconds and jti_cache_size must be positive")
        if required and not issuers:
            raise ValueError("authentication is required but no issuer is configured")
        self.required = required
        self._leeway = float(leeway_seconds)
        self._jti_ttl = float(jti_ttl_seconds)
        self._max_age = float(jwks_max_age_seconds)
        self._min_refetch = float(jwks_min_refetch_seconds)
        self._timeout = float(jwks_timeout_seconds)
        self._clock = clock
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(
            timeout=self._timeout, follow_redirects=False, trust_env=False
        )
        self._issuers: dict[str, _KeySet] = {}
        for issuer in issuers:
            if not isinstance(issuer.iss, str) or not issuer.iss:
                raise ValueError("issuer 'iss' must be a non-empty string")
            if issuer.iss in self._issuers:
                raise ValueError(f"issuer {issuer.iss!r} configured twice")
            if (issuer.jwks_url is None) == (issuer.jwks_file is None):
                raise ValueError(
                    f"issuer {issuer.iss!r}: give exactly one of jwks_url and jwks_file"
                )
            if issuer.jwks_url is not None:
                _check_jwks_url(issuer.jwks_url)
            keyset = _KeySet(issuer)
            if issuer.jwks_file is not None:  # a broken file is a configuration error: now
                self._load_file(keyset, strict=True)
            self._issuers[issuer.iss] = keyset
        try:
            self._replay = open_replay_cache(replay_cache, max_entries=jti_cache_size)
        except ReplayStoreError as e:
            raise ValueError(str(e)) from None

    # -- public ---------------------------------------------------------------------------

    def verify(self, authorization_header: str | None, audience_url: str) -> dict[str, Any]:
        """The verified claims of the request's bearer JWT; :class:`AuthError` otherwise."""
        if not self._issuers and not self.required:
            return {}
        if authorization_header is None or authorization_header.strip() == "":
            if not self.required:
                return {}
            raise AuthError("no Authorization header")
        try:
            return self._verify(authorization_header, audience_url)
        except AuthError:
            raise
        except Exception as e:  # anything unforeseen in hostile input is still just a 401
            raise AuthError(f"malformed token ({type(e).__name__})") from None

    def jwks_fetch_count(self, iss: str) -> int:
        """How many times this issuer's JWK Set was fetched or read (for tests, metrics)."""
        return self._issuers[iss].fetches

    @property
    def _seen(self) -> frozenset[tuple[str, str]]:
        """Every ``(iss, jti)`` the replay cache holds now (tests)."""
        return self._replay.entries()

    def close(self) -> None:
        if self._own_http:
            self._http.close()
        self._replay.close()

    # -- the checks, in spec order ----------------------------------------------------------

    def _verify(self, authorization_header: str, audience_url: str) -> dict[str, Any]:
        token = _bearer_token(authorization_header)  # 1. Bearer <compact JWS>
        header, payload = _unverified(token)
        alg, kid = _check_header(header)  # 2. JOSE header
        # 3. iss allowlisted
        iss = payload.get("iss")
        keyset = self._issuers.get(iss) if isinstance(iss, str) else None
        if keyset is None:
            raise AuthError(f"issuer {_short(iss)} not allowlisted")
        # 4. signature with that issuer's key `kid`, and 5. aud is this endpoint, exactly
        self._check_signature(token, keyset, kid, alg, audience_url, payload)
        now, exp = self._check_times(payload)  # 6. exp, iat, nbf
        _check_tenant(keyset, payload)  # 7. tenant
        self._check_jti(keyset, payload, exp, now)  # 8. jti never seen
        return payload

    def _check_signature(self, token: str, keyset: _KeySet, kid: str, alg: str,
                         audience_url: str, payload: dict[str, Any]) -> None:
        """Steps 4 and 5: PyJWT verifies the signature with the issuer's key ``kid`` and
        that ``aud`` is this endpoint, exactly."""
        key = self._key_for(keyset, kid, alg)
        try:
            _JWT.decode(token, key=key, algorithms=[alg], audience=audience_url)
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError):
            raise AuthError(f"aud {_short(payload.get('aud'))} is not this endpoint "
                            f"{audience_url!r}") from None
        except jwt.InvalidSignatureError:
            raise AuthError(f"bad signature (iss {_short(payload.get('iss'))}, "
                            f"kid {_short(kid)})") from None
        except jwt.PyJWTError as e:
            raise AuthError(f"token refused ({type(e).__name__})") from None

    def _check_times(self, payload: dict[str, Any]) -> tuple[float, float]:
        """Step 6: exp (not past, not beyond the replay window), iat (not in the future),
        nbf (when present). Returns (now, exp)."""
        now = self._clock()
        exp = _number(payload.get("exp"))
        if exp is None:
            raise AuthError("exp missing or not a number")
        if now > exp + self._leeway:
            raise AuthError("token expired")
        if exp > now + self._jti_ttl:
            raise AuthError("exp too far in the future (longer than the replay window)")
        iat = _number(payload.get("iat"))
        if iat is None:
            raise AuthError("iat missing or not a number")
        if iat > now + self._leeway:
            raise AuthError("iat is in the future")
        if "nbf" in payload:
            nbf = _number(payload["nbf"])
            if nbf is None:
                raise AuthError("nbf not a number")
            if nbf > now + self._leeway:
                raise AuthError("token not yet valid (nbf)")
        return now, exp

    def _check_jti(self, keyset: _KeySet, payload: dict[str, Any], exp: float,
                   now: float) -> None:
        """Step 8: a jti never seen (remembered until the token expires); fails closed."""
        jti = payload.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise AuthError("jti missing, empty or too long")
        try:
            fresh = self._replay.remember(keyset.issuer.iss, jti, exp + self._leeway, now)
        except ReplayStoreError as e:  # fail closed: an unchecked jti is never accepted
            log.warning("token refused: %s", e)
            raise AuthError(str(e)) from None
        if not fresh:
            raise AuthError("jti already used (replay)")

    # -- keys ---------------------------------------------------------------------------------

    def _key_for(self, keyset: _KeySet, kid: str, alg: str) -> jwt.PyJWK:
        with keyset.lock:
            now = self._clock()
            stale = now - keyset.loaded_at >= self._max_age
            due = now - keyset.attempted_at >= self._min_refetch
            if (not keyset.loaded or stale) and due:  # a failed first fetch also waits
                self._refresh(keyset, now)
            if kid not in keyset.keys and now - keyset.attempted_at >= self._min_refetch:
                self._refresh(keyset, now)  # unknown kid: the issuer may have rotated keys
            candidates = keyset.keys.get(kid)
        if not candidates:
            raise AuthError(f"unknown kid {_short(kid)} for this issuer")
        for key_alg, key in candidates:
            if key_alg == alg:
                return key
        raise AuthError(f"key {_short(kid)} is not a {alg} key")

    def _refresh(self, keyset: _KeySet, now: float) -> None:
        """Load the key set again; on failure keep the keys we had (logged)."""
        keyset.attempted_at = now
        if keyset.issuer.jwks_file is not None:
            self._load_file(keyset, strict=False)
            return
        url = keyset.issuer.jwks_url
        assert url is not None
        keyset.fetches += 1
        try:
            with self._http.stream(
                "GET", url, timeout=self._timeout, follow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("JWK Set larger than 1 MiB")
            keys = parse_jwks(json.loads(bytes(body)))
        except (httpx.HTTPError, ValueError, UnicodeDecodeError) as e:
            log.warning("JWK Set of issuer %r not refreshed from %s: %s",
                        keyset.issuer.iss, url, e)
            return
        keyset.keys, keyset.loaded, keyset.loaded_at = keys, True, now

    def _load_file(self, keyset: _KeySet, *, strict: bool) -> None:
        path = keyset.issuer.jwks_file
        assert path is not None
        keyset.fetches += 1
        try:
            keys = parse_jwks(json.loads(Path(path).read_bytes()))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            if strict:
                raise ValueError(
                    f"issuer {keyset.issuer.iss!r}: cannot read JWK Set {path}: {e}"
                ) from None
            log.warning("JWK Set of issuer %r not reloaded from %s: %s",
                        keyset.issuer.iss, path, e)
            return
        keyset.keys, keyset.loaded, keyset.loaded_at = keys, True, self._clock()


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JOSE header and the payload, before any check (PyJWT decodes the compact JWS;
    a payload with a member twice is refused: which copy would count is not defined)."""
    try:
        decoded = _UNVERIFIED.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise AuthError(f"malformed token: {_header_problem(e)}") from None
    try:
        payload = json.loads(decoded["payload"].decode("utf-8"),
                             object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AuthError("malformed token: payload is not JSON") from None
    if not isinstance(payload, dict):
        raise AuthError("malformed token: payload is not a JSON object")
    return decoded["header"], payload


def _header_problem(e: jwt.PyJWTError) -> str:
    """What PyJWT found wrong, in words that never quote the token."""
    text = str(e)
    if "Key ID" in text:
        return "header kid is not a string"
    if "crit" in text:
        return "header 'crit' extensions are not supported"
    if "padding" in text or "segments" in text:
        return "not base64url compact JWS"
    return f"not a JWT ({type(e).__name__})"


def _bearer_token(authorization_header: str) -> str:
    """Step 1: the compact JWS of ``Bearer <token>`` (three non-empty parts)."""
    if len(authorization_header) > MAX_TOKEN_LENGTH + 16:
        raise AuthError("Authorization header too long")
    m = _BEARER.match(authorization_header.strip())
    if m is None:
        raise AuthError("Authorization is not 'Bearer <token>'")
    token = m.group(1)
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AuthError("token is not a three-part compact JWS")
    return token


def _check_header(header: dict[str, Any]) -> tuple[str, str]:
    """Step 2: typ JWT, an allowed alg, a kid, no crit; returns (alg, kid). The header's
    'jku' is deliberately ignored: see the module docstring."""
    if header.get("typ") != "JWT":
        raise AuthError(f"header typ is {_short(header.get('typ'))}, not 'JWT'")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise AuthError(f"alg {_short(alg)} refused (only ES384, RS384)")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthError("header has no kid")
    if "crit" in header:
        raise AuthError("header 'crit' extensions are not supported")
    return alg, kid


def _check_tenant(keyset: _KeySet, payload: dict[str, Any]) -> None:
    """Step 7: when the issuer lists tenants, the token's tenant is one of them."""
    tenants = keyset.issuer.tenants
    if tenants:
        tenant = payload.get("tenant")
        if not isinstance(tenant, str) or tenant not in tenants:
            raise AuthError(f"tenant {_short(tenant)} not allowlisted for this issuer")

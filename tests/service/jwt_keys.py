"""A test CDS client's side of CDS Hooks authentication: its own keys, JWTs it signs (any
header, any payload, any algorithm, including the ones a service must refuse), and its JWK
Set served over real HTTP on the loopback interface. No mocks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/movement-lbp"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def _int_b64(n: int, length: int | None = None) -> str:
    size = length if length is not None else (n.bit_length() + 7) // 8
    return b64url(n.to_bytes(size, "big"))


@dataclass
class SigningKey:
    """A private key with its ``kid``; ``alg`` is ES384 (P-384) or RS384 (RSA 2048)."""

    alg: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    private: Any = None

    def __post_init__(self) -> None:
        if self.private is None:
            if self.alg == "ES384":
                self.private = ec.generate_private_key(ec.SECP384R1())
            elif self.alg == "RS384":
                self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            else:
                raise ValueError(self.alg)

    def jwk(self) -> dict[str, Any]:
        pub = self.private.public_key()
        if self.alg == "ES384":
            nums = pub.public_numbers()
            return {"kty": "EC", "crv": "P-384", "kid": self.kid, "use": "sig",
                    "alg": "ES384", "x": _int_b64(nums.x, 48), "y": _int_b64(nums.y, 48)}
        nums = pub.public_numbers()
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS384",
                "n": _int_b64(nums.n), "e": _int_b64(nums.e)}

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def sign_raw(self, signing_input: bytes) -> bytes:
        if self.alg == "ES384":
            der = self.private.sign(signing_input, ec.ECDSA(hashes.SHA384()))
            r, s = decode_dss_signature(der)
            return r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return bytes(self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA384()))


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys]}


def claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid payload for ``AUD`` from ``ISS``; ``overrides`` with value ``None`` drop a
    claim."""
    t = int(time.time() if now is None else now)
    out: dict[str, Any] = {"iss": ISS, "aud": AUD, "iat": t, "exp": t + 300,
                           "jti": str(uuid.uuid4())}
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def token(key: SigningKey, payload: dict[str, Any], **header_overrides: Any) -> str:
    """A compact JWS signed by ``key``; header ``{"alg", "typ": "JWT", "kid"}`` plus
    overrides (``None`` drops a member). The signature always uses ``key.alg``, whatever
    the header then claims."""
    header: dict[str, Any] = {"alg": key.alg, "typ": "JWT", "kid": key.kid}
    for k, v in header_overrides.items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{b64url(key.sign_raw(signing_input.encode()))}"


def hmac_token(secret: bytes, payload: dict[str, Any], kid: str, alg: str = "HS256") -> str:
    """An HMAC-signed JWT, e.g. the key-confusion attack: HS256 keyed with an RSA public
    key's PEM, which a naive verifier would accept as "the issuer's key"."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{b64json(payload)}"
    sig = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(sig)}"


def unsigned_token(payload: dict[str, Any], kid: str, signature: str = "") -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64json(payload)}.{signature}"


class JWKSServer:
    """Serves a (mutable) JWK Set at ``/jwks.json`` on 127.0.0.1, counting requests.
    ``delay`` makes every answer late (to test client timeouts); ``status`` changes the
    HTTP status."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0
        self.delay = 0.0
        self.status = 200
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client connection cannot hold a server thread forever

            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests += 1
                if outer.delay:
                    time.sleep(outer.delay)
                body = json.dumps(outer.document).encode()
                try:
                    self.send_response(outer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/jwks.json"

    def start(self) -> JWKSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever on a never-started server
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


@contextmanager
def serving(document: dict[str, Any]) -> Iterator[JWKSServer]:
    server = JWKSServer(document).start()
    try:
        yield server
    finally:
        server.stop()

"""The gateway's internal token: who the caller is, signed by the authz service.

Envoy asks the authz service about every outside call; on allow, authz passes the upstream
service a short-lived JWT in `x-neural-principal`, signed EdDSA (Ed25519) with its private
key. A service checks it with the public key alone (NEURAL_AUTHZ_PUBLIC_KEY_FILE): no
database, no shared secret, and a forged, expired or otherwise-signed token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .auth import ROLES, Principal

HEADER = "x-neural-principal"
ISSUER = "neural-authz"
AUDIENCE = "neural-services"
TTL_SECONDS = 60
ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ["iss", "aud", "exp", "nbf", "iat", "sub", "role"]
MAX_VERIFIED = 10_000  # tokens a Verifier remembers as checked


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (the JWT header's `kid`): its digest's start."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode()


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_keys(path: Path | str) -> list[Ed25519PublicKey]:
    """Every PEM public key in the file: during a key rotation it holds the old and the new."""
    text = Path(path).read_bytes()
    marker = b"-----BEGIN PUBLIC KEY-----"
    keys = []
    for part in text.split(marker)[1:]:
        key = serialization.load_pem_public_key(marker + part)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no PEM public key in it")
    return keys


class Signer:
    """Signs internal tokens (the authz service's side)."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        ttl_seconds: int = TTL_SECONDS,
        audience: str = AUDIENCE,
    ) -> None:
        self.key = private_key
        self.kid = key_id(private_key.public_key())
        self.ttl_seconds = ttl_seconds
        self.audience = audience

    def sign(self, principal: Principal, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "aud": self.audience,
            "sub": principal.subject,
            "role": principal.role,
            "key_id": principal.key_id,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.ttl_seconds,
        }
        if principal.resources:
            claims["resources"] = list(principal.resources)
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})


class Verifier:
    """Checks internal tokens (every service's side) with the authz service's public key(s)."""

    def __init__(self, public_keys: list[Ed25519PublicKey], audience: str = AUDIENCE) -> None:
        self.keys = {key_id(k): k for k in public_keys}
        self.audience = audience
        # token -> (its expiry, the principal): the authz service hands one principal the
        # same token for half its life, and checking a signature costs ~0.15 ms a call.
        self._verified: dict[str, tuple[float, Principal]] = {}

    @classmethod
    def from_file(cls, path: Path | str) -> Verifier:
        return cls(load_public_keys(path))

    def verify(self, token: str) -> Principal | None:
        """The principal the token names, or None when it is not one authz signed and still
        valid (bad signature, another key, expired, wrong issuer or audience, malformed)."""
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit[0]:
                return hit[1]
            del self._verified[token]
        checked = self._verify(token)
        if checked is None:
            return None
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[token] = checked
        return checked[1]

    def _verify(self, token: str) -> tuple[float, Principal] | None:
        """The token's expiry and principal, when its signature and claims hold."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=ISSUER,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError:
            return None
        role = claims.get("role")
        resources = claims.get("resources", [])
        if (
            role not in ROLES
            or not isinstance(claims.get("sub"), str)
            or not isinstance(resources, list)
            or not all(isinstance(r, str) for r in resources)
        ):
            return None
        who = Principal(claims["sub"], role, str(claims.get("key_id", "")), tuple(resources))
        return float(claims["exp"]), who


__all__ = [
    "AUDIENCE",
    "HEADER",
    "ISSUER",
    "Signer",
    "Verifier",
    "key_id",
    "load_private_key",
    "load_public_keys",
]

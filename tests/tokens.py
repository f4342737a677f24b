"""Internal tokens for tests that call a service straight, signed as the authz service would.

Services trust nothing but the authz service's signed token (x-neural-principal). A test
run has one Ed25519 keypair of its own: servers started by tests get its public key
(NEURAL_AUTHZ_PUBLIC_KEY_FILE), an authz server started by tests its private key, and tests
sign tokens for whichever principal they need.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

from service_kit.auth import Principal
from service_kit.internal_token import HEADER, Signer, load_private_key

from gateway.authz.keys import generate

LIFETIME = 4 * 3600  # outlives any test module; services check expiry as for any token


@cache
def key_files() -> tuple[Path, Path]:
    """The test run's (private, public) key files."""
    folder = Path(tempfile.mkdtemp(prefix="neural-test-keys-"))
    atexit.register(shutil.rmtree, folder, True)
    return generate(folder)


def public_key_file() -> str:
    return str(key_files()[1])


def private_key_file() -> str:
    return str(key_files()[0])


@cache
def _signer() -> Signer:
    return Signer(load_private_key(key_files()[0]), ttl_seconds=LIFETIME)


def sign(subject: str, role: str, resources: tuple[str, ...] = (), key_id: str = "") -> str:
    """A token naming `subject` with `role` (limited to `resources` when given)."""
    return _signer().sign(Principal(subject, role, key_id, resources))


def meta(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`, as Envoy passes it upstream."""
    return ((HEADER, token),)


def as_(subject: str, role: str) -> tuple[tuple[str, str], ...]:
    """Call metadata for `subject` with `role`."""
    return meta(sign(subject, role))


__all__ = ["HEADER", "as_", "key_files", "meta", "private_key_file", "public_key_file", "sign"]

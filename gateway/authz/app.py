"""Wiring of the authz service: settings, keypair, database, migrations, Check, AuthService."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2_grpc
from neural.v1 import auth_pb2_grpc
from service_kit import db, errors
from service_kit.auth import Principal
from service_kit.internal_token import (
    Signer,
    Verifier,
    key_id,
    load_private_key,
    load_public_keys,
)
from service_kit.roles import load_all, public_methods, service_roles
from service_kit.server import ServiceSpec
from service_kit.settings import Settings, SettingsError
from service_kit.warmup import NOBODY, rehearsal
from sqlalchemy.ext.asyncio import AsyncEngine

from .audit import AuditLog
from .check import AuthorizationServicer, Authorizer
from .service import SERVICE, AuthService
from .store import KEY_PREFIX, KeyStore

CHECK = "envoy.service.auth.v3.Authorization"
API_AUDIENCE = "neural-api"  # the bearer tokens IssueToken hands out (not for services)
API_TOKEN_SECONDS = 3600


class Credentials:
    """The kit interceptor's check for calls straight to AuthService (workers asking for
    tokens, tests): an API key or an API token, held to the key's RPC scopes as Check holds
    calls through the gateway."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def verify(self, credential: str, method: str) -> Principal | None:
        grant = await self.authorizer.grant_of(credential)
        if grant is None:
            return None
        if not grant.permits(method):
            rpc = method.rsplit("/", 1)[-1]
            raise errors.PermissionDenied(f"this key's scopes do not include {rpc}")
        return grant.principal


@dataclass
class App:
    engine: AsyncEngine
    keys: KeyStore
    audit: AuditLog
    authorizer: Authorizer
    spec: ServiceSpec

    async def close(self) -> None:
        await self.audit.close()
        await self.engine.dispose()


async def warm(
    engine: AsyncEngine, keys: KeyStore, audit: AuditLog, authorizer: Authorizer
) -> None:
    """Compile the statements a first call runs (SQLAlchemy caches them): a key's lookup, as
    Check and the interceptor make it, the listings, and a key's insert (rolled back)."""
    await authorizer.grant_of(KEY_PREFIX + NOBODY.replace("-", "_") * 6)
    await keys.get(NOBODY)
    for owner in (NOBODY, None):  # a user's listings, and an admin's (no owner filter)
        await keys.list(owner, False)
        await audit.list(owner)
    async with rehearsal(engine) as sessions:
        rehearsed = KeyStore(engine)
        rehearsed.sessions = sessions
        await rehearsed.create(NOBODY, "user", NOBODY, NOBODY)


async def build(settings: Settings) -> App:
    if not settings.authz_private_key_file:
        raise SettingsError(
            "NEURAL_AUTHZ_PRIVATE_KEY_FILE must name the authz service's Ed25519 private key "
            "(make one with `python -m gateway.authz.keys generate DIR`)"
        )
    private = load_private_key(Path(settings.authz_private_key_file))
    # Its own public key, and during a key rotation the others the public key file lists:
    # tokens signed under the previous key stay valid until they expire.
    publics = [private.public_key()]
    if settings.authz_public_key_file:
        publics += load_public_keys(Path(settings.authz_public_key_file))
        publics = list({key_id(k): k for k in publics}.values())  # each key once
    engine = db.make_engine(settings.database_url)
    keys = KeyStore(engine)
    await keys.prepare(settings.migrate_at_start)
    audit = AuditLog(engine)
    internal = Signer(private)
    authorizer = Authorizer(keys, Verifier(publics, audience=API_AUDIENCE), internal, audit)
    service = AuthService(
        keys, audit, Signer(private, API_TOKEN_SECONDS, API_AUDIENCE), internal, publics
    )

    async def database_up() -> bool:
        return await db.ping(engine)

    spec = ServiceSpec(
        "authz",
        [
            (auth_pb2_grpc.add_AuthServiceServicer_to_server, service, SERVICE),
            (
                external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
                AuthorizationServicer(authorizer),
                CHECK,
            ),
        ],
        service_roles(SERVICE),
        # Envoy asks Check about requests that carry no credentials yet.
        public_methods(SERVICE) | {f"/{CHECK}/Check"},
        health_checks=[database_up],
        reflected=load_all(),
        tokens=Verifier(publics),
        credentials=Credentials(authorizer),
        warmup=lambda: warm(engine, keys, audit, authorizer),
    )
    return App(engine, keys, audit, authorizer, spec)

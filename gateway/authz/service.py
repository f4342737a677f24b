"""AuthService: API keys (create, list, revoke, rotate), API tokens, workers' delegated
tokens, WhoAmI, the audit log.

The kit's interceptor has checked the caller and the RPC's role (from the protos) before a
handler runs; handlers add what depends on the key itself: non-admins see and change only
their own keys. Every change is written to the audit log."""

from __future__ import annotations

import base64
import datetime as dt

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import timestamp_pb2
from neural.v1 import auth_pb2, auth_pb2_grpc
from service_kit import errors, owners
from service_kit.auth import Principal
from service_kit.interceptors import principal
from service_kit.internal_token import Signer, key_id

from .audit import AuditEvent, AuditLog
from .store import MAX_OVERLAP, KeyRecord, KeyStore

SERVICE = "neural.v1.AuthService"
ROLE_NAMES = {
    auth_pb2.ROLE_ADMIN: "admin",
    auth_pb2.ROLE_USER: "user",
    auth_pb2.ROLE_VIEWER: "viewer",
}
ROLE_ENUMS = {v: k for k, v in ROLE_NAMES.items()}
MAX_SUBJECT = 200


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def api_key_message(record: KeyRecord) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        id=record.id,
        name=record.name,
        prefix=record.prefix,
        role=ROLE_ENUMS[record.role],
        owner=record.owner,
        create_time=_ts(record.created_at),
        expire_time=_ts(record.expires_at),
        last_used_time=_ts(record.last_used_at),
        revoked=record.revoked_at is not None,
        scopes=list(record.scopes),
        resources=list(record.resources),
    )


def _event_message(event: AuditEvent) -> auth_pb2.AuditEvent:
    return auth_pb2.AuditEvent(
        id=event.id,
        time=_ts(event.at),
        subject=event.subject,
        action=event.action,
        target=event.target,
        allowed=event.allowed,
        reason=event.reason,
    )


def _expiry(request: auth_pb2.CreateApiKeyRequest) -> dt.datetime:
    try:
        return request.expire_time.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        why = "must be a timestamp between years 1 and 9999"
        raise errors.InvalidArgument(
            f"expire_time: {why}", [errors.FieldViolation("expire_time", why)]
        ) from None


def jwk(public_key: Ed25519PublicKey) -> auth_pb2.JsonWebKey:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return auth_pb2.JsonWebKey(
        kty="OKP",
        crv="Ed25519",
        x=base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        kid=key_id(public_key),
        use="sig",
        alg="EdDSA",
    )


def _principal_message(who: Principal) -> auth_pb2.Principal:
    return auth_pb2.Principal(
        subject=who.subject,
        role=ROLE_ENUMS[who.role],
        key_id=who.key_id,
        resources=list(who.resources),
    )


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        keys: KeyStore,
        audit: AuditLog,
        api_tokens: Signer,
        internal: Signer,
        public_keys: list[Ed25519PublicKey],
    ) -> None:
        self.keys = keys
        self.audit = audit
        self.api_tokens = api_tokens  # signs the bearer tokens IssueToken hands out
        self.internal = internal  # signs the tokens services trust (IssueDelegatedToken)
        self.jwks = auth_pb2.JsonWebKeySet(keys=[jwk(k) for k in public_keys])

    async def _own_key(self, key_id: str, action: str) -> KeyRecord:
        """The key `key_id`, when the caller may change it (admins: any; others: their own)."""
        who = principal()
        record = await self.keys.get(key_id) if key_id else None
        if record is None or not owners.visible(record.owner, owners.scope()):
            # Another's key reads as absent: its id says nothing to those who may not see it.
            self.audit.record(who.subject, action, False, "no such key", key_id[:64])
            raise errors.NotFound(f"id: no API key {key_id[:64]!r}")
        return record

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: object
    ) -> auth_pb2.CreateApiKeyResponse:
        who = principal()
        role = ROLE_NAMES.get(request.role, "user")
        expires = _expiry(request) if request.HasField("expire_time") else None
        record, key = await self.keys.create(
            request.name,
            role,
            request.name,
            who.subject,
            expires,
            tuple(request.scopes),
            tuple(request.resources),
        )
        self.audit.record(who.subject, "CreateApiKey", True, target=record.id)
        return auth_pb2.CreateApiKeyResponse(key=key, api_key=api_key_message(record))

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: object
    ) -> auth_pb2.ListApiKeysResponse:
        records, token = await self.keys.list(
            owners.scope(), request.include_revoked, request.page_token, request.page_size
        )
        return auth_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(r) for r in records], next_page_token=token
        )

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: object
    ) -> auth_pb2.ApiKey:
        await self._own_key(request.id, "RevokeApiKey")
        record = await self.keys.revoke(request.id)
        if record is None:
            raise errors.NotFound(f"id: no API key {request.id[:64]!r}")
        self.audit.record(principal().subject, "RevokeApiKey", True, target=record.id)
        return api_key_message(record)

    async def RotateApiKey(
        self, request: auth_pb2.RotateApiKeyRequest, context: object
    ) -> auth_pb2.CreateApiKeyResponse:
        if not 0 <= request.overlap_seconds <= MAX_OVERLAP.total_seconds():
            why = f"must be between 0 and {int(MAX_OVERLAP.total_seconds())}"
            raise errors.InvalidArgument(
                f"overlap_seconds: {why}", [errors.FieldViolation("overlap_seconds", why)]
            )
        await self._own_key(request.id, "RotateApiKey")
        rotated = await self.keys.rotate(
            request.id, dt.timedelta(seconds=request.overlap_seconds), principal().subject
        )
        if rotated is None:
            raise errors.NotFound(f"id: no API key {request.id[:64]!r}")
        record, key = rotated
        self.audit.record(principal().subject, "RotateApiKey", True, target=request.id)
        return auth_pb2.CreateApiKeyResponse(key=key, api_key=api_key_message(record))

    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: object
    ) -> auth_pb2.IssueTokenResponse:
        # Public in the protos: the key in the request is the credential.
        grant = await self.keys.authenticate(request.api_key)
        if grant is None:
            self.audit.record("", "IssueToken", False, "invalid, expired or revoked API key")
            raise errors.Unauthenticated("api_key: invalid, expired or revoked")
        if grant.scopes:
            # A token carries no scopes: a scoped key must not widen itself into one.
            raise errors.PermissionDenied("api_key: a key scoped to RPCs cannot issue tokens")
        self.audit.record(
            grant.principal.subject, "IssueToken", True, target=grant.principal.key_id
        )
        return auth_pb2.IssueTokenResponse(
            access_token=self.api_tokens.sign(grant.principal),
            token_type="Bearer",
            expires_in=self.api_tokens.ttl_seconds,
        )

    async def IssueDelegatedToken(
        self, request: auth_pb2.IssueDelegatedTokenRequest, context: object
    ) -> auth_pb2.IssueTokenResponse:
        who = principal()
        subject = request.subject.strip()
        if not subject or len(subject) > MAX_SUBJECT:
            why = f"must be 1 to {MAX_SUBJECT} characters"
            raise errors.InvalidArgument(f"subject: {why}", [errors.FieldViolation("subject", why)])
        role = ROLE_NAMES.get(request.role, "user")
        if not who.allows(role):
            self.audit.record(who.subject, "IssueDelegatedToken", False, "role above own", subject)
            raise errors.PermissionDenied(f"role: no more than your own ({who.role})")
        # The caller's own resource limits travel with the token: delegation never widens.
        token = self.internal.sign(Principal(subject, role, who.key_id, who.resources))
        self.audit.record(who.subject, "IssueDelegatedToken", True, target=subject)
        return auth_pb2.IssueTokenResponse(
            access_token=token, token_type="Internal", expires_in=self.internal.ttl_seconds
        )

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: object) -> auth_pb2.Principal:
        return _principal_message(principal())

    async def ListAuditEvents(
        self, request: auth_pb2.ListAuditEventsRequest, context: object
    ) -> auth_pb2.ListAuditEventsResponse:
        await self.audit.flush()  # what was decided before the call is in the answer
        events, token = await self.audit.list(
            request.subject or None, request.page_token, request.page_size
        )
        return auth_pb2.ListAuditEventsResponse(
            events=[_event_message(e) for e in events], next_page_token=token
        )

    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: object
    ) -> auth_pb2.JsonWebKeySet:
        # Public in the protos: public keys are for anyone who checks a token.
        return self.jwks

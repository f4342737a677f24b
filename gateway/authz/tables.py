"""The authz service's tables (prefix `authz_`): the API keys it owns and its audit log."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, MetaData, String, Table, Text

metadata = MetaData()

api_keys = Table(
    "authz_api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    # The key's first characters: shown in listings, and the index a lookup starts from.
    Column("prefix", String(16), nullable=False, index=True),
    # SHA-256 of the whole key: keys are 256 random bits, so a fast digest is safe to store.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    # Space-separated gRPC paths the key may call; empty: whatever its role allows.
    Column("scopes", Text, nullable=False, server_default=""),
    # Space-separated resources ("runs/<id>") the key may act on; empty: any its owner may.
    Column("resources", Text, nullable=False, server_default=""),
    # Set when the key was rotated: the key that replaced it (its own expiry is the overlap).
    Column("replaced_by", String(36)),
    # When the key last got a call in, to the minute: finds keys nobody uses any more.
    Column("last_used_at", DateTime(timezone=True)),
)

audit_events = Table(
    "authz_audit_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("action", String(300), nullable=False),
    Column("target", String(200), nullable=False),
    Column("allowed", Boolean, nullable=False),
    Column("reason", String(300), nullable=False),
    Index("authz_audit_events_at", "at"),
    Index("authz_audit_events_subject_at", "subject", "at"),
)

"""Who is calling: the principal a service acts for.

Services do not authenticate callers themselves: the authz service does, at the gateway, and
passes each service a short-lived token it signed (`internal_token`) naming the principal.
"""

from __future__ import annotations

from dataclasses import dataclass

from .roles import ROLES


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    key_id: str = ""
    # The resources ("runs/<id>") the credentials are limited to; empty: not limited.
    resources: tuple[str, ...] = ()

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def reaches(self, resource: str) -> bool:
        """Whether a call on `resource` is within the credentials' resources."""
        return not self.resources or resource in self.resources


__all__ = ["ROLES", "Principal"]

"""Who may call the replica: the authz service's internal token.

The gateway's authz service signs a token for each outside call (`x-neural-principal`); the
role each RPC needs is the protocol's table in `service_kit.roles`, the one authz holds too.
The Verifier remembers a token it verified until the token expires, so on the prediction path
a token costs one signature check a minute.
"""

from __future__ import annotations

from collections.abc import Sequence

from service_kit.auth import Principal
from service_kit.errors import PermissionDenied, Unauthenticated
from service_kit.internal_token import HEADER, Verifier
from service_kit.roles import INFERENCE_ROLES, INFERENCE_SERVICE


class Gate:
    """Checks a call's token against the role its RPC needs and the deployment it serves."""

    def __init__(self, verifier: Verifier | None, deployment: str) -> None:
        self.verifier = verifier  # None: authentication off (no public key configured)
        self.resource = f"deployments/{deployment}"

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None, rpc: str) -> None:
        """Raise Unauthenticated / PermissionDenied unless the call of `rpc` (its name, e.g.
        "ModelInfer") may go on."""
        role = INFERENCE_ROLES[f"/{INFERENCE_SERVICE}/{rpc}"]
        if self.verifier is None or not role:
            return
        token = next((v for k, v in metadata or () if k == HEADER), None)
        if not isinstance(token, str) or not token:
            raise Unauthenticated(
                "no internal token (x-neural-principal): call through the gateway, whose authz "
                "service checks your API key or token"
            )
        who: Principal | None = self.verifier.verify(token.strip())
        if who is None:
            raise Unauthenticated("invalid or expired internal token (x-neural-principal)")
        if not who.allows(role):
            raise PermissionDenied(f"{rpc} needs the {role} role; the caller is {who.role}")
        if not who.reaches(self.resource):
            raise PermissionDenied(
                f"these credentials are limited to {', '.join(who.resources)[:200]}; this model "
                f"server is {self.resource}"
            )


__all__ = ["Gate"]

"""Autoscaling: replicas follow the requests in flight, between a deployment's min_replicas
and max_replicas (max_replicas turns it on; min_replicas 0 scales to zero), `per_replica` in
flight each. Up at once; down only once the load has wanted fewer replicas for a whole
`cooldown`, so a lull between bursts does not drop replicas that the next burst needs."""

from __future__ import annotations

import json
import math
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from ..load import envoy_active


@dataclass
class Autoscaler:
    per_replica: int = 4
    cooldown: float = 30.0
    # deployment id -> when the load last wanted at least the replicas it has
    busy_at: dict[str, float] = field(default_factory=dict)
    # deployment id -> the replicas it was last left with here
    seen: dict[str, int] = field(default_factory=dict)

    def decide(
        self, deployment_id: str, current: int, low: int, high: int, inflight: int, now: float
    ) -> int:
        """The replicas a deployment should have now (`current` when unchanged)."""
        if self.seen.get(deployment_id) != current:
            # changed by someone else (ScaleDeployment, a prediction waking it from zero):
            # a whole cooldown before it may go down again
            self.busy_at[deployment_id] = now
        self.seen[deployment_id] = want = self._decide(
            deployment_id, current, low, high, inflight, now
        )
        return want

    def _decide(
        self, deployment_id: str, current: int, low: int, high: int, inflight: int, now: float
    ) -> int:
        # min_replicas 0 lets it reach 0 (scale to zero); any prediction in flight wants one
        want = min(max(math.ceil(inflight / self.per_replica), low), high)
        if want >= current:
            self.busy_at[deployment_id] = now
            return want
        if now - self.busy_at.setdefault(deployment_id, now) >= self.cooldown:
            self.busy_at[deployment_id] = now
            return want
        return current

    def forget(self, deployment_id: str) -> None:
        self.busy_at.pop(deployment_id, None)
        self.seen.pop(deployment_id, None)


def envoy_inflight(admin_url: str, timeout: float = 0.5) -> Counter[str]:
    """Requests the gateway has in flight per deployment name; empty when unreachable."""
    url = admin_url.rstrip("/") + "/stats?format=json&filter=upstream_rq_active"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return envoy_active(json.load(r))
    except (OSError, ValueError):
        return Counter()

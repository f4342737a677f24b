"""Dramatiq messages addressed by queue and actor name.

A server puts work on a queue without importing the module that declares the actor (and with
it the worker's settings, logging and heavy imports): it sends a `Task`, which names the actor
the way Dramatiq's own messages do. The worker process declares the actor under that name and
its options (retries, backoff, time limit) apply there, where Dramatiq reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import dramatiq


class Sendable(Protocol):
    """What can put one message on a queue: a `Task`, or a declared `dramatiq.Actor`."""

    def send(self, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Task:
    queue_name: str
    actor_name: str

    def message(self, *args: Any) -> dramatiq.Message:
        return dramatiq.Message(
            queue_name=self.queue_name,
            actor_name=self.actor_name,
            args=args,
            kwargs={},
            options={},
        )

    def send(self, *args: Any) -> dramatiq.Message:
        """Enqueue on the process's broker (set once by `broker.setup_broker`)."""
        return dramatiq.get_broker().enqueue(self.message(*args))

"""The compiler's Dramatiq messages by name: what the server sends and `actors.py` consumes."""

from __future__ import annotations

from service_kit.tasks import Task
from service_kit.webhooks import delivery_task

COMPILE = Task("compile", "compile_model")
COMPILE_GAVE_UP = Task("compile", "compile_gave_up")
WEBHOOKS = delivery_task("compiler")
QUEUES = [COMPILE.queue_name, WEBHOOKS.queue_name]

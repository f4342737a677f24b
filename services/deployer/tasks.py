"""The deployer's Dramatiq messages by name: the webhook deliveries of its rollout jobs, sent
by the server and the controller, consumed by `worker.py`'s actor (which the controller runs
in process, or `dramatiq services.deployer.worker` on its own)."""

from __future__ import annotations

from service_kit.webhooks import delivery_task

WEBHOOKS = delivery_task("deployer")
QUEUES = [WEBHOOKS.queue_name]

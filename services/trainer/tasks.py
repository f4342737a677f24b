"""The trainer's Dramatiq messages by name: what the server sends and `actors.py` consumes."""

from __future__ import annotations

from service_kit.tasks import Task
from service_kit.webhooks import delivery_task

TRAIN = Task("training", "train_model")
SEARCH = Task("training", "search_model")
GAVE_UP = Task("training", "training_gave_up")
WEBHOOKS = delivery_task("trainer")
QUEUES = [TRAIN.queue_name, WEBHOOKS.queue_name]

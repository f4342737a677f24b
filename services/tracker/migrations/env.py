from service_kit.db import run_env

from services.tracker.tables import metadata

run_env(metadata)

from service_kit.db import run_env

from services.trainer.tables import metadata

run_env(metadata)

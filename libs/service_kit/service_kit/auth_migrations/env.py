from service_kit.auth import metadata
from service_kit.db import run_env

run_env(metadata)

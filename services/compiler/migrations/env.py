from service_kit.db import run_env

from services.compiler.tables import metadata

run_env(metadata)

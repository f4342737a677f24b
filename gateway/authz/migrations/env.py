from service_kit.db import run_env

from gateway.authz.tables import metadata

run_env(metadata)

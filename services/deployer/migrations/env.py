from service_kit.db import run_env

from services.deployer.tables import metadata

run_env(metadata)

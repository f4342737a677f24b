"""`python -m gateway.ratelimit`: the rate-limit service's gRPC server (port 50056)."""

import sys

from service_kit.server import main

from .app import build
from .config import ConfigError

if __name__ == "__main__":
    try:
        main("ratelimit", build)
    except ConfigError as exc:
        # The file's path, the field and the problem; a traceback would only bury them.
        sys.exit(f"ratelimit: {exc}")

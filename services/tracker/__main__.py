"""`python -m services.tracker`: the tracker's gRPC server."""

from service_kit.server import main

from .app import build

if __name__ == "__main__":
    main("tracker", build)

"""`python -m services.tracker`: the tracker's gRPC server, as NEURAL_TRACKER_PROCESSES
processes on its port (default: one per available CPU; see service_kit.process_group)."""

from service_kit.server import main

from .app import build, migrate

if __name__ == "__main__":
    main("tracker", build, migrate, processes=True)

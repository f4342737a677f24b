"""`python -m services.trainer`: the trainer's gRPC server (its workers run with
`dramatiq services.trainer.worker`)."""

from service_kit.server import main

from .app import build

if __name__ == "__main__":
    main("trainer", build)

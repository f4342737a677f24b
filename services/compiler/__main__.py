"""`python -m services.compiler`: the compiler's gRPC server (its worker runs with
`dramatiq services.compiler.worker`)."""

from service_kit.server import main

from .app import build

if __name__ == "__main__":
    main("compiler", build)

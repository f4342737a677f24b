"""`python -m services.deployer`: the deployer's gRPC server (its replicas are run by
`python -m services.deployer.controller`)."""

from service_kit.server import main

from .app import build

if __name__ == "__main__":
    main("deployer", build)

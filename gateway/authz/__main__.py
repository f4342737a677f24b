"""`python -m gateway.authz`: the authz service (Envoy's ext_authz, AuthService)."""

from service_kit.server import main

from .app import build

if __name__ == "__main__":
    main("authz", build)

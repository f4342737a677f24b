"""`python -m services.compiler`: the compiler's gRPC server (its worker runs with
`dramatiq services.compiler.worker`)."""

from __future__ import annotations

import asyncio

from service_kit import logs
from service_kit.server import serve
from service_kit.settings import load

from .app import build


async def main() -> None:
    settings = load("compiler")
    logs.setup("compiler", settings.log_level)
    app = await build(settings)
    try:
        await serve(app.spec, settings, app.auth)
    finally:
        await app.engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())

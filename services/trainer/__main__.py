"""`python -m services.trainer`: the trainer's gRPC server (its workers run with
`dramatiq services.trainer.worker`)."""

from __future__ import annotations

import asyncio

from service_kit import logs
from service_kit.server import serve
from service_kit.settings import load

from .app import build


async def main() -> None:
    settings = load("trainer")
    logs.setup("trainer", settings.log_level)
    app = await build(settings)
    try:
        await serve(app.spec, settings, app.auth)
    finally:
        await app.engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())

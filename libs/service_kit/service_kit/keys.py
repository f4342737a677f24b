"""Manage API keys: `python -m service_kit.keys create --name NAME --role admin`.

The key is printed once and stored hashed; keep it safe. Uses NEURAL_DATABASE_URL (SQLite
under .run/ by default), the database the services check keys against."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from sqlalchemy import select

from . import db
from .auth import ROLES, AuthStore, api_keys
from .settings import load


async def _main(args: argparse.Namespace) -> int:
    settings = load("authz")
    engine = db.make_engine(settings.database_url)
    store = AuthStore(engine, settings.jwt_secret)
    try:
        await store.migrate()
        if args.command == "create":
            ttl = dt.timedelta(days=args.days) if args.days else None
            key_id, key = await store.create_key(args.name, args.role, args.owner or args.name, ttl)
            print(f"id:   {key_id}\nrole: {args.role}\nkey:  {key}")
            print("The key is shown only now; it is stored hashed.", file=sys.stderr)
        elif args.command == "list":
            async with store.sessions() as s:
                rows = (await s.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
            for r in rows:
                state = "revoked" if r.revoked else "active"
                print(f"{r.id}  {r.prefix}...  {r.role:6s}  {r.owner}  {r.name}  {state}")
        elif not await store.revoke(args.id):
            print(f"no key {args.id}", file=sys.stderr)
            return 1
        return 0
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service_kit.keys", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a key and print it once")
    c.add_argument("--name", required=True)
    c.add_argument("--role", choices=ROLES, default="user")
    c.add_argument("--owner", help="the identity the key acts as (default: its name)")
    c.add_argument("--days", type=int, help="expire after this many days")
    sub.add_parser("list", help="list keys (never their secrets)")
    r = sub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("id")
    return asyncio.run(_main(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

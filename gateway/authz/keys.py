"""The authz service's keys, offline: `python -m gateway.authz.keys generate DIR | create | list`.

`generate DIR` writes an Ed25519 keypair as PEM: DIR/authz_private.pem (mode 0600, for the
authz service, NEURAL_AUTHZ_PRIVATE_KEY_FILE) and DIR/authz_public.pem (for every service,
NEURAL_AUTHZ_PUBLIC_KEY_FILE). An existing pair is kept, so a restart does not invalidate
the tokens in flight; --force replaces it.

`create --name NAME --role admin` bootstraps an API key in the authz service's table (in
NEURAL_DATABASE_URL), with no server running, and prints it once (or writes it to a 0600
file with --key-file, e.g. a worker's key: `--role admin --scope
/neural.v1.AuthService/IssueDelegatedToken`); `list` shows the keys. Installed as
`neural-keys`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from service_kit import db, pagination
from service_kit.auth import ROLES
from service_kit.settings import load

from .store import KeyRecord, KeyStore

PRIVATE = "authz_private.pem"
PUBLIC = "authz_public.pem"


def generate(directory: Path, force: bool = False) -> tuple[Path, Path]:
    """The (private, public) key files in `directory`, created when absent (or forced)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE, directory / PUBLIC
    if private_path.exists() and public_path.exists() and not force:
        return private_path, public_path
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_secret(private_path, private_pem.decode())
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _write_secret(path: Path, text: str) -> None:
    # Created 0600 from the start: the secret is never readable by others, not even briefly.
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


async def _keys(args: argparse.Namespace) -> int:
    engine = db.make_engine(load("authz").database_url)
    store = KeyStore(engine)
    try:
        await store.migrate()
        if args.command == "create":
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=args.days) if args.days else None
            if args.replace:
                # The key this one takes over from (a worker's, at each start) stops now.
                for old in await _named(store, args.name):
                    await store.revoke(old.id)
            record, key = await store.create(
                args.name,
                args.role,
                args.owner or args.name,
                "neural-keys",
                expires,
                tuple(args.scope),
                tuple(args.resource),
            )
            if args.key_file:
                _write_secret(args.key_file, key + "\n")
                print(f"id:   {record.id}\nrole: {record.role}\nkey:  in {args.key_file}")
            else:
                print(f"id:   {record.id}\nrole: {record.role}\nkey:  {key}")
                print("The key is shown only now; it is stored hashed.", file=sys.stderr)
        else:
            token = ""
            while True:
                records, token = await store.list(None, True, token, pagination.MAX_PAGE)
                for r in records:
                    state = "revoked" if r.revoked_at else "active"
                    print(f"{r.id}  {r.prefix}...  {r.role:6s}  {r.owner}  {r.name}  {state}")
                if not token:
                    break
        return 0
    finally:
        await engine.dispose()


async def _named(store: KeyStore, name: str) -> list[KeyRecord]:
    """The active keys called `name`."""
    found, token = [], ""
    while True:
        records, token = await store.list(None, False, token, pagination.MAX_PAGE)
        found += [r for r in records if r.name == name]
        if not token:
            return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.authz.keys", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write an Ed25519 keypair (kept when it exists)")
    g.add_argument("directory", type=Path)
    g.add_argument("--force", action="store_true", help="replace an existing pair")
    c = sub.add_parser("create", help="create an API key and print it once")
    c.add_argument("--name", required=True)
    c.add_argument("--role", choices=ROLES, default="user")
    c.add_argument("--owner", help="the identity the key acts as (default: its name)")
    c.add_argument("--days", type=int, help="expire after this many days")
    c.add_argument(
        "--scope", action="append", default=[], help="limit to this RPC (/neural.v1.X/Method)"
    )
    c.add_argument(
        "--resource", action="append", default=[], help="limit to this resource (runs/<id>)"
    )
    c.add_argument("--key-file", type=Path, help="write the key to this file (mode 0600)")
    c.add_argument("--replace", action="store_true", help="revoke active keys of this name")
    sub.add_parser("list", help="list API keys (never their secrets)")
    args = ap.parse_args(argv)
    if args.command != "generate":
        return asyncio.run(_keys(args))
    private_path, public_path = generate(args.directory, args.force)
    print(f"private: {private_path}\npublic:  {public_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

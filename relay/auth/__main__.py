"""Mint a signed token: ``python -m relay.auth mint --channel 'orders.*' --can publish,history --ttl 3600``.

For operators and tests; a deployment's own backend mints its users' tokens
the same way with PyJWT (docs/api.md, *Signed tokens*). Signs HS256 with
``JWT_SECRET`` from the settings, or RS256/ES256 with ``--private-key FILE``
(PEM; the services then need the matching ``JWT_PUBLIC_KEY``). Prints the
token alone on standard output.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay.auth.grants import CAPABILITIES, CHANNEL_PATTERN_OR_PREFIX
from relay.settings import load_settings


def claims(
    channels: dict[str, list[str]], ttl: float, subject: str, audience: str = "", issuer: str = ""
) -> dict[str, Any]:
    """The claims of a token for ``subject`` allowing ``channels`` (pattern -> capabilities) for ``ttl`` seconds."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + int(ttl), "channels": channels}
    if audience:
        body["aud"] = audience
    if issuer:
        body["iss"] = issuer
    return body


def _channels(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    channels: dict[str, list[str]] = {}
    for pattern, can in pairs:
        capabilities = [c.strip() for c in can.split(",") if c.strip()]
        if not CHANNEL_PATTERN_OR_PREFIX.fullmatch(pattern):
            raise SystemExit(f"error: {pattern!r} is not a channel, a prefix ending in '*', or '*'")
        if not capabilities or not set(capabilities) <= set(CAPABILITIES):
            raise SystemExit(f"error: --can takes a comma-separated list among {', '.join(CAPABILITIES)}")
        channels.setdefault(pattern, [])
        channels[pattern] += [c for c in capabilities if c not in channels[pattern]]
    return channels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.auth", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser("mint", help="print a signed token")
    mint.add_argument("--channel", action="append", required=True, help="a channel, a prefix ending in '*', or '*'")
    mint.add_argument(
        "--can",
        action="append",
        required=True,
        help="capabilities for the --channel before it: publish,subscribe,history",
    )
    mint.add_argument("--ttl", type=float, default=3600, help="seconds until it expires (default 3600)")
    mint.add_argument("--sub", default=None, help="the subject, e.g. a user id (default: a random one)")
    mint.add_argument("--private-key", default=None, help="PEM private key: sign RS256 (RSA) or ES256 (EC)")
    args = parser.parse_args(argv)
    if len(args.channel) != len(args.can):
        parser.error("give one --can for each --channel")
    settings = load_settings()
    body = claims(
        _channels(list(zip(args.channel, args.can, strict=True))),
        args.ttl,
        args.sub or f"minted-{uuid.uuid4().hex[:8]}",
        settings.jwt_audience,
        settings.jwt_issuer,
    )
    if args.private_key:
        with open(args.private_key, "rb") as file:
            key = load_pem_private_key(file.read(), password=None)
        algorithm = (
            "RS256"
            if isinstance(key, rsa.RSAPrivateKey)
            else "ES256"
            if isinstance(key, ec.EllipticCurvePrivateKey)
            else None
        )
        if algorithm is None:
            parser.error("--private-key must be an RSA or EC private key")
        print(jwt.encode(body, key, algorithm=algorithm))
    elif settings.jwt_secret:
        print(jwt.encode(body, settings.jwt_secret, algorithm="HS256"))
    else:
        parser.error("set JWT_SECRET, or give --private-key")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Signed tokens and grants (relay/auth): real keys, real signatures, every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay.auth import OPEN, Authenticator, Forbidden, Grant, Unauthorized, pattern_matches
from relay.auth.__main__ import claims
from tests.helpers import ROOT, python_env

SECRET = "a-test-secret-of-at-least-32-bytes!!"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def token(key: object = SECRET, algorithm: str = "HS256", ttl: float = 60, **extra: object) -> str:
    body = {"sub": "user-1", "exp": int(time.time() + ttl), "channels": {"orders.*": ["publish", "history"]}}
    return jwt.encode({**body, **extra}, key, algorithm=algorithm)


def unsigned(**body: object) -> str:
    """A token with ``alg: none`` and no signature, as an attacker would hand-craft it."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


@pytest.mark.parametrize(
    ("pattern", "channel", "covered"),
    [
        ("*", "anything", True),
        ("*", None, True),
        ("orders.*", "orders.42", True),
        ("orders.*", "orders.", True),
        ("orders.*", "orders", False),
        ("orders.*", None, False),
        ("orders.42", "orders.42", True),
        ("orders.42", "orders.420", False),
        ("a_b*", "a_bc", True),
        ("a_b*", "axbc", False),
    ],
)
def test_a_pattern_covers_its_channel_or_prefix_and_only_star_covers_all(
    pattern: str, channel: str | None, covered: bool
) -> None:
    assert pattern_matches(pattern, channel) is covered


def test_open_when_nothing_is_configured() -> None:
    authenticator = Authenticator()
    assert not authenticator.required
    assert authenticator.authenticate(None) is OPEN and OPEN.can("publish", None)


@pytest.mark.parametrize(
    ("signing_key", "algorithm", "settings"),
    [
        (SECRET, "HS256", {"jwt_secret": SECRET}),
        (RSA_KEY, "RS256", {"jwt_public_key": public_pem(RSA_KEY)}),
        (EC_KEY, "ES256", {"jwt_public_key": public_pem(EC_KEY)}),
    ],
)
def test_a_signed_token_grants_its_channels_capabilities_and_nothing_else(
    signing_key: object, algorithm: str, settings: dict[str, str]
) -> None:
    grant = Authenticator(**settings).authenticate(token(signing_key, algorithm))
    assert (grant.subject, grant.client) == ("user-1", "sub:user-1")
    assert grant.can("publish", "orders.7") and grant.can("history", "orders.7")
    assert not grant.can("subscribe", "orders.7")
    assert not grant.can("publish", "invoices")
    assert not grant.can("history", None), "all channels at once need the pattern '*'"
    with pytest.raises(Forbidden) as refused:
        grant.require("subscribe", "orders.7")
    assert refused.value.status == 403 and "subscribe" in refused.value.message and "orders.7" in refused.value.message


def test_a_pem_with_escaped_newlines_as_env_files_carry_it_works() -> None:
    escaped = public_pem(RSA_KEY).replace("\n", "\\n")
    assert Authenticator(jwt_public_key=escaped).authenticate(token(RSA_KEY, "RS256")).subject == "user-1"


def refusal(authenticator: Authenticator, presented: str | None) -> Unauthorized:
    with pytest.raises(Unauthorized) as refused:
        authenticator.authenticate(presented)
    assert refused.value.status == 401
    return refused.value


def test_missing_malformed_badly_signed_and_unsigned_tokens_are_refused() -> None:
    authenticator = Authenticator(jwt_secret=SECRET)
    assert refusal(authenticator, None).code == "unauthorized"
    assert refusal(authenticator, "not-a-token").code == "unauthorized"
    assert refusal(authenticator, "a.b.c").code == "unauthorized"
    assert refusal(authenticator, token("another-secret-of-at-least-32-bytes!")).code == "unauthorized"
    forged = unsigned(sub="user-1", exp=int(time.time() + 60), channels={"*": ["publish"]})
    assert refusal(authenticator, forged).code == "unauthorized"


def test_an_expired_token_is_token_expired_and_a_future_one_not_yet_valid() -> None:
    authenticator = Authenticator(jwt_secret=SECRET)
    assert refusal(authenticator, token(ttl=-5)).code == "token_expired"
    refused = refusal(authenticator, token(nbf=int(time.time() + 60)))
    assert refused.code == "unauthorized" and "not yet valid" in refused.message


def test_exp_and_sub_are_required() -> None:
    authenticator = Authenticator(jwt_secret=SECRET)
    no_exp = jwt.encode({"sub": "u", "channels": {}}, SECRET, algorithm="HS256")
    no_sub = jwt.encode({"exp": int(time.time() + 60), "channels": {}}, SECRET, algorithm="HS256")
    assert "exp" in refusal(authenticator, no_exp).message
    assert "sub" in refusal(authenticator, no_sub).message


def test_algorithm_confusion_is_refused() -> None:
    """With a public key configured, an HS256 token signed with that public key as its secret is refused."""
    pem = public_pem(RSA_KEY)
    authenticator = Authenticator(jwt_public_key=pem)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(orjson.dumps({"sub": "x", "exp": int(time.time() + 60)})).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(pem.encode(), header + b"." + body, hashlib.sha256).digest())
    confused = (header + b"." + body + b"." + signature.rstrip(b"=")).decode()
    assert "HS256" in refusal(authenticator, confused).message
    # And an RS256 token meets no key where only a secret is configured.
    assert "RS256" in refusal(Authenticator(jwt_secret=SECRET), token(RSA_KEY, "RS256")).message


def test_audience_and_issuer_are_checked_when_set() -> None:
    authenticator = Authenticator(jwt_secret=SECRET, jwt_audience="relay", jwt_issuer="https://auth.example")
    good = token(aud="relay", iss="https://auth.example")
    assert authenticator.authenticate(good).subject == "user-1"
    assert refusal(authenticator, token(aud="other", iss="https://auth.example")).code == "unauthorized"
    assert refusal(authenticator, token(aud="relay", iss="https://evil.example")).code == "unauthorized"
    assert refusal(authenticator, token()).code == "unauthorized", "aud and iss are required once set"
    assert Authenticator(jwt_secret=SECRET).authenticate(token(aud="anything")).subject == "user-1"


@pytest.mark.parametrize(
    "channels",
    [["orders"], {"orders": "publish"}, {"orders": ["publish", "delete"]}, {"bad channel": ["publish"]}, {"a*b": []}],
)
def test_a_malformed_channels_claim_is_refused(channels: object) -> None:
    refused = refusal(Authenticator(jwt_secret=SECRET), token(channels=channels))
    assert refused.code == "unauthorized" and "channel" in refused.message


def test_static_tokens_stay_full_access_beside_signed_ones() -> None:
    authenticator = Authenticator(api_tokens=("service-key",), jwt_secret=SECRET)
    service = authenticator.authenticate("service-key")
    assert service.can("publish", None) and service.can("subscribe", "x") and service.subject is None
    assert service.client and service.client.startswith("token:") and "service-key" not in service.client
    assert authenticator.authenticate(token()).subject == "user-1"
    assert refusal(authenticator, "wrong-key").code == "unauthorized"


def test_grant_patterns_for_a_capability() -> None:
    grant = Grant((("a.*", frozenset({"history"})), ("b", frozenset({"publish"}))))
    assert grant.patterns_for("history") == ["a.*"] and grant.patterns_for("subscribe") == []


def test_mint_makes_a_token_the_services_accept(tmp_path) -> None:
    env = python_env({"JWT_SECRET": SECRET})
    argv = [sys.executable, "-m", "relay.auth", "mint", "--channel", "orders.*", "--can", "publish,history"]
    minted = subprocess.run(
        [*argv, "--channel", "news", "--can", "subscribe", "--ttl", "120", "--sub", "op"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    grant = Authenticator(jwt_secret=SECRET).authenticate(minted)
    assert grant.subject == "op" and grant.can("publish", "orders.1") and grant.can("subscribe", "news")
    assert 100 < grant.expires_at - time.time() <= 120
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    signed = subprocess.run(
        [*argv, "--private-key", str(pem)], cwd=ROOT, env=python_env({}), capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Authenticator(jwt_public_key=public_pem(RSA_KEY)).authenticate(signed).can("history", "orders.x")


def test_mint_refuses_what_the_services_would() -> None:
    argv = [sys.executable, "-m", "relay.auth", "mint", "--channel", "orders.*"]
    bad_capability = subprocess.run(
        [*argv, "--can", "delete"], cwd=ROOT, env=python_env({"JWT_SECRET": SECRET}), capture_output=True, text=True
    )
    assert bad_capability.returncode != 0 and "publish" in bad_capability.stderr
    no_key = subprocess.run([*argv, "--can", "publish"], cwd=ROOT, env=python_env({}), capture_output=True, text=True)
    assert no_key.returncode != 0 and "JWT_SECRET" in no_key.stderr


def test_claims_carry_audience_and_issuer_when_configured() -> None:
    body = claims({"x": ["publish"]}, 60, "s", audience="relay", issuer="me")
    assert body["aud"] == "relay" and body["iss"] == "me" and body["exp"] - body["iat"] == 60

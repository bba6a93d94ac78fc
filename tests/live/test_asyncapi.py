"""The websocket protocol's AsyncAPI document: valid AsyncAPI 3.0.0, true to the server, and served.

``schemas/asyncapi-3.0.0.json`` is ``schemas/3.0.0-without-$id.json`` of the
npm package ``@asyncapi/specs`` 6.11.1 (Apache-2.0, ``schemas/LICENSE-asyncapi-specs``),
fetched once with ``npm pack @asyncapi/specs``: the official JSON Schema, bindings included.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import requests

from relay.live import asyncapi, protocol
from relay.settings import load_settings

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "asyncapi-3.0.0.json").read_text(encoding="utf-8"))


def problems(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    assert problems(asyncapi.document(load_settings())) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["operations"]["receiveLive"].update(action="listen"),
        lambda d: d["channels"]["live"]["bindings"]["ws"].update(method="PUT"),
        lambda d: d["servers"]["live"].pop("host"),
        lambda d: d["channels"]["live"]["messages"]["reset"].update(contentType=7),
    ],
    ids=["bad action", "bad ws binding method", "server without host", "bad content type"],
)
def test_asyncapi_validation_catches_a_broken_document(break_it) -> None:
    """The schema really checks: a broken document is refused (so the test above can fail)."""
    document = copy.deepcopy(asyncapi.document(load_settings()))
    break_it(document)
    assert problems(document)


def test_asyncapi_document_says_what_the_server_speaks() -> None:
    settings = load_settings(ws_url="wss://live.example.com/", live_window=500)
    document = asyncapi.document(settings)
    assert document["servers"]["live"] == {
        "host": "live.example.com",
        "protocol": "wss",
        "pathname": "/",
        "description": document["servers"]["live"]["description"],
    }
    channel = document["channels"]["live"]
    reset = channel["messages"]["reset"]["payload"]["properties"]
    assert reset["reason"]["enum"] == ["unknown_or_expired_id", "server_fell_behind"]
    assert set(channel["bindings"]["ws"]["query"]["properties"]) == {"channel", "after", "token"}
    assert {"1013", "4401"} <= set(channel["x-close-codes"])
    assert [kind["type"] for kind in reset["oldest"]["oneOf"]] == ["integer", "null"]
    after = channel["bindings"]["ws"]["query"]["properties"]["after"]
    assert (after["type"], after["minimum"]) == ("integer", 0)
    assert "about 500 messages" in after["description"]
    message = channel["messages"]["message"]["payload"]
    assert {"offset", "position"} <= set(message["required"])
    assert message["properties"]["position"]["type"] == message["properties"]["offset"]["type"] == "integer"
    example = channel["messages"]["message"]["examples"][0]["payload"]
    assert jsonschema.Draft7Validator(message).is_valid(example)
    assert not jsonschema.Draft7Validator(message).is_valid({**example, "position": "4242"})
    assert channel["x-max-client-frame-bytes"] == settings.ws_max_client_frame_bytes
    assert protocol.TOKEN_EXPIRED == 4401


@pytest.mark.e2e
def test_asyncapi_document_is_served_on_the_websocket_port(start_ws) -> None:
    server = start_ws()
    response = requests.get(f"http://127.0.0.1:{server.port}/asyncapi.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.json()["asyncapi"] == "3.0.0"
    assert problems(response.json()) == []

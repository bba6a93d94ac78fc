"""OpenAPI 3.1 documents for the two HTTP APIs, served at ``/openapi.json``.

Placeholder: the documents are being written (see the Deploy and operate
issue); ``init_openapi`` already serves whatever ``spec`` returns.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response

from web import json_response


def spec(service: str) -> dict[str, Any]:
    """Return the OpenAPI document of ``service`` ("ingestion_api" or "list_api")."""
    return {"openapi": "3.1.0", "info": {"title": service, "version": "1"}, "paths": {}}


def init_openapi(app: Flask, service: str) -> None:
    """Serve ``GET /openapi.json`` on ``app``."""
    document = spec(service)

    def openapi_json() -> Response:
        return json_response(document)

    app.add_url_rule("/openapi.json", endpoint="openapi_json", view_func=openapi_json, methods=["GET"])

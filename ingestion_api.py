"""Entry point of the ingestion API: ``gunicorn "ingestion_api:create_app()"`` (code in ``relay/ingestion``)."""

from relay.ingestion.app import create_app

__all__ = ["create_app"]
